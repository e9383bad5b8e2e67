//! The agent's `GET /debug/pprof/allocs?pid=PID&seconds=N` (with
//! `--profiling`): the allocation probes on one process for N seconds,
//! then its gzipped pprof profile, like `net/http/pprof`'s endpoints.
//!
//! It costs the target a trap per allocation for N seconds, so: off unless
//! asked for, N at most 120, one profile at a time per process (429
//! otherwise), every other mistake a 400 saying what is wrong.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{
    extract::{RawQuery, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};

use super::{
    collect::DEFAULT_RATE,
    session::{Session, SessionError},
};
use crate::registry::Registry;

/// Longest profile the endpoint takes.
pub const MAX_SECONDS: u64 = 120;
/// When `seconds` is not given (as net/http/pprof).
pub const DEFAULT_SECONDS: u64 = 30;
/// Samples are taken out of the kernel table this often.
const DRAIN_EVERY: Duration = Duration::from_secs(1);
/// Whether the process still runs is checked this often (the exit time goes
/// into the profile).
const ALIVE_EVERY: Duration = Duration::from_millis(100);

/// What the endpoint shares with the agent.
#[derive(Clone)]
pub struct Profiling {
    registry: Arc<Mutex<Registry>>,
    /// Processes being profiled now, and when their profile ends.
    busy: Arc<Mutex<HashMap<u32, std::time::Instant>>>,
    /// `--profiling` was given.
    enabled: bool,
}

impl Profiling {
    pub fn new(registry: Arc<Mutex<Registry>>, enabled: bool) -> Profiling {
        Profiling {
            registry,
            busy: Arc::default(),
            enabled,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A request the endpoint does not serve, and why (plain text, one line).
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    message: String,
    retry_after: Option<u64>,
}

fn refuse(status: StatusCode, message: String) -> Refusal {
    Refusal {
        status,
        message,
        retry_after: None,
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut r = (
            self.status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            self.message + "\n",
        )
            .into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut().insert(header::RETRY_AFTER, s.into());
        }
        r
    }
}

/// The checked query.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub pid: u32,
    pub seconds: u64,
    pub rate: u64,
}

/// Checks the query: `pid` required, `seconds` 1..=120 (default 30),
/// `rate` bytes (default 512 KiB). Unknown parameters are refused too, so a
/// typo does not silently profile with defaults.
pub fn parse_query(q: &HashMap<String, String>) -> Result<Request, String> {
    for k in q.keys() {
        if !matches!(k.as_str(), "pid" | "seconds" | "rate") {
            return Err(format!(
                "unknown parameter {k:?}: use pid=PID, seconds=N (1-{MAX_SECONDS}), rate=BYTES"
            ));
        }
    }
    let pid = q
        .get("pid")
        .ok_or("missing pid: /debug/pprof/allocs?pid=PID&seconds=N")?;
    let pid: u32 = pid
        .parse()
        .ok()
        .filter(|&p| p > 0)
        .ok_or_else(|| format!("pid {pid:?} is not a process id"))?;
    let seconds = match q.get("seconds") {
        None => DEFAULT_SECONDS,
        Some(s) => s
            .parse()
            .ok()
            .filter(|n| (1..=MAX_SECONDS).contains(n))
            .ok_or_else(|| {
                format!("seconds={s:?}: give a whole number of seconds from 1 to {MAX_SECONDS}")
            })?,
    };
    let rate = match q.get("rate") {
        None => DEFAULT_RATE,
        Some(r) => super::command::parse_rate(r)?,
    };
    Ok(Request { pid, seconds, rate })
}

/// Ends the profile whatever happens to the request (a client that hangs
/// up drops the handler): sampling stops, probes put on for it come off.
struct Guard {
    profiling: Profiling,
    pid: u32,
    /// Set before the registry is locked to end: a start still under way
    /// on the blocking pool sees it (under the lock) and undoes itself.
    ended: Arc<AtomicBool>,
    session: Arc<Mutex<Option<Session>>>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.ended.store(true, Ordering::SeqCst);
        let mut r = lock(&self.profiling.registry);
        if let Some(mut s) = lock(&self.session).take()
            && let Err(e) = s.end(&mut r)
        {
            log::warn!("pid {}: ending the profile: {e}", self.pid);
        }
        drop(r);
        lock(&self.profiling.busy).remove(&self.pid);
    }
}

pub async fn allocs(State(p): State<Profiling>, RawQuery(raw): RawQuery) -> Response {
    let q: HashMap<String, String> = form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
        .into_owned()
        .collect();
    if !p.enabled {
        return refuse(
            StatusCode::NOT_FOUND,
            "profiling is off: start the agent with --profiling to serve /debug/pprof/allocs \
             (each profile costs the target a trap per allocation while it runs)"
                .into(),
        )
        .into_response();
    }
    let req = match parse_query(&q) {
        Ok(r) => r,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, e).into_response(),
    };
    match profile(p, &req).await {
        Ok(bytes) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "application/octet-stream".to_string()),
                (
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"allocs-{}.pb.gz\"", req.pid),
                ),
            ],
            bytes,
        )
            .into_response(),
        Err(r) => r.into_response(),
    }
}

async fn profile(p: Profiling, req: &Request) -> Result<Vec<u8>, Refusal> {
    let pid = req.pid;
    {
        let mut busy = lock(&p.busy);
        let now = std::time::Instant::now();
        if let Some(ends) = busy.get(&pid) {
            let left = ends.saturating_duration_since(now).as_secs() + 1;
            return Err(Refusal {
                status: StatusCode::TOO_MANY_REQUESTS,
                message: format!(
                    "pid {pid} is being profiled already (for {left} s more): one profile at a \
                     time per process"
                ),
                retry_after: Some(left),
            });
        }
        busy.insert(pid, now + Duration::from_secs(req.seconds));
    }
    // From here the guard ends the profile, even if the client hangs up.
    let guard = Guard {
        profiling: p.clone(),
        pid,
        ended: Arc::default(),
        session: Arc::default(),
    };
    let begun = {
        let p = p.clone();
        let ended = guard.ended.clone();
        let slot = guard.session.clone();
        let rate = req.rate;
        tokio::task::spawn_blocking(move || -> Result<(), SessionError> {
            let mut r = lock(&p.registry);
            let mut session = Session::begin(&mut r, &[pid], rate)?;
            if ended.load(Ordering::SeqCst) {
                session.end(&mut r)?;
            } else {
                *lock(&slot) = Some(session);
            }
            Ok(())
        })
        .await
    };
    match begun {
        Ok(Ok(())) => {}
        Ok(Err(e)) if e.is_bad_request() => {
            return Err(refuse(StatusCode::BAD_REQUEST, e.to_string()));
        }
        Ok(Err(e)) => return Err(refuse(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
        Err(e) => return Err(refuse(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
    let internal =
        |e: crate::ebpf::EngineError| refuse(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(req.seconds);
    let mut last_drain = tokio::time::Instant::now();
    loop {
        let next = (tokio::time::Instant::now() + ALIVE_EVERY).min(deadline);
        tokio::time::sleep_until(next).await;
        let mut r = lock(&p.registry);
        let mut slot = lock(&guard.session);
        let Some(session) = slot.as_mut() else {
            break;
        };
        let gone = session.note_exits(&r);
        if next >= deadline || gone || next.duration_since(last_drain) >= DRAIN_EVERY {
            session.drain(&mut r).map_err(internal)?;
            last_drain = next;
        }
        if gone || next >= deadline {
            break;
        }
    }
    let session = {
        let mut r = lock(&p.registry);
        let session = lock(&guard.session).take();
        match session {
            Some(mut s) => {
                let counters = s.end(&mut r).map_err(internal)?;
                Some((s, counters))
            }
            None => None,
        }
    };
    drop(guard);
    let Some((session, counters)) = session else {
        return Err(refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the profile ended unexpectedly".into(),
        ));
    };
    tokio::task::spawn_blocking(move || {
        super::collect::gzip(&session.profile(counters))
            .map_err(|e| refuse(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
    })
    .await
    .map_err(|e| refuse(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn queries() {
        assert_eq!(
            parse_query(&q(&[("pid", "42")])),
            Ok(Request {
                pid: 42,
                seconds: DEFAULT_SECONDS,
                rate: DEFAULT_RATE
            })
        );
        assert_eq!(
            parse_query(&q(&[("pid", "42"), ("seconds", "120"), ("rate", "4096")])),
            Ok(Request {
                pid: 42,
                seconds: 120,
                rate: 4096
            })
        );
        for bad in [
            q(&[]),
            q(&[("pid", "x")]),
            q(&[("pid", "0")]),
            q(&[("pid", "1"), ("seconds", "121")]),
            q(&[("pid", "1"), ("seconds", "0")]),
            q(&[("pid", "1"), ("seconds", "1.5")]),
            q(&[("pid", "1"), ("rate", "fast")]),
            q(&[("pid", "1"), ("second", "5")]),
        ] {
            let e = parse_query(&bad).unwrap_err();
            assert!(!e.is_empty() && !e.contains('\n'), "{e}");
        }
    }
}
