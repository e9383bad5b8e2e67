//! `goalloc agent`: follow every Go process on the node and serve Prometheus
//! metrics (`/metrics`), liveness (`/healthz`), readiness (`/readyz`) and,
//! with `--profiling`, allocation profiles (`/debug/pprof/allocs`).

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use agent_common::EVENT_EXEC;
use anyhow::{Context, Result};
use axum::{
    Router,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use tokio::signal::unix::{SignalKind, signal};

use gobinary::plan::PlanOptions;

use crate::{
    classify::Classifier,
    ebpf::Engine,
    events::ProcessEvents,
    exporter::{Aggregate, Format, Metrics},
    identity, procfs,
    profile::{self, endpoint::Profiling},
    registry::{Registry, Scope},
    select::ExactSelection,
};

#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub listen: SocketAddr,
    pub aggregate: Aggregate,
    /// Period of the /proc safety-net sweep.
    pub sweep_interval: Duration,
    /// How long a binary stays attached after its last process exits.
    pub detach_grace: Duration,
    pub plan: PlanOptions,
    /// Processes that get the per-allocation probes (none by default).
    pub exact: ExactSelection,
    /// Serve `/debug/pprof/allocs` (`--profiling`).
    pub profiling: bool,
}

#[derive(Clone)]
struct Http {
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
}

/// `/metrics`: OpenMetrics when the scraper's `Accept` asks for it, the
/// classic text format otherwise (see [`Format::negotiate`]).
async fn metrics(State(http): State<Http>, headers: HeaderMap) -> impl IntoResponse {
    let accept = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",");
    let format = Format::negotiate((!accept.is_empty()).then_some(accept.as_str()));
    // Encoding reads the kernel maps; keep it off the async workers.
    let m = http.metrics.clone();
    match tokio::task::spawn_blocking(move || m.render_as(format)).await {
        Ok(Ok(body)) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, format.content_type()),
                // The answer depends on Accept: caches must not mix them up.
                (header::VARY, "Accept"),
            ],
            body,
        )
            .into_response(),
        Ok(Err(e)) => {
            log::error!("/metrics: {e}");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("encoding metrics failed: {e}\n"),
            )
                .into_response()
        }
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "encoding metrics failed\n",
        )
            .into_response(),
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(http): State<Http>) -> impl IntoResponse {
    if http.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "initial /proc sweep not finished\n",
        )
    }
}

pub async fn run(opts: AgentOptions) -> Result<()> {
    let mut engine = Engine::load()?;
    let mut events = ProcessEvents::start(&mut engine)?;
    let registry = Arc::new(Mutex::new(
        Registry::new(
            engine,
            opts.plan,
            Scope::AllGo,
            opts.exact.clone(),
            opts.detach_grace,
        )
        .defer_attach(),
    ));
    // Metrics without pod names beat no metrics: the API server is asked in
    // the background, and again until it answers.
    tokio::spawn(pod_metadata(registry.clone()));
    let http = Http {
        metrics: Arc::new(Metrics::new(registry.clone(), opts.aggregate)),
        ready: Arc::new(AtomicBool::new(false)),
    };
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("cannot listen on {}", opts.listen))?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(http.clone())
        .merge(
            Router::new()
                .route("/debug/pprof/allocs", get(profile::endpoint::allocs))
                .with_state(Profiling::new(registry.clone(), opts.profiling)),
        );
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    eprintln!("goalloc: agent listening on http://{}/metrics", opts.listen);

    // Events first, then the sweep: a process that starts during the sweep is
    // caught by one or the other.
    let classifier = lock(&registry).classifier();
    sweep(&registry, &classifier).await?;
    http.ready.store(true, Ordering::Relaxed);
    {
        let r = lock(&registry);
        eprintln!(
            "goalloc: tracking {} Go processes, {} with per-allocation probes in {} binaries (sweep took {:?})",
            r.len(),
            r.probed(),
            r.engine().attached_binaries(),
            r.stats.last_sweep
        );
    }

    let mut sweeper = tokio::time::interval_at(
        tokio::time::Instant::now() + opts.sweep_interval,
        opts.sweep_interval,
    );
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    loop {
        tokio::select! {
            batch = events.next_batch() => {
                let batch = batch.context("reading process events")?;
                let registry = registry.clone();
                let classifier = classifier.clone();
                blocking(move || {
                    for ev in batch.iter().filter(|ev| ev.kind == EVENT_EXEC) {
                        classifier.warm(ev.tgid);
                    }
                    lock(&registry).on_event_batch(&batch)?;
                    attach_pending(&registry)
                })
                .await?;
            }
            _ = sweeper.tick() => sweep(&registry, &classifier).await?,
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
        if server.is_finished() {
            anyhow::bail!("the metrics server stopped");
        }
    }
    eprintln!("goalloc: stopping, detaching probes");
    Ok(())
}

fn lock(registry: &Mutex<Registry>) -> std::sync::MutexGuard<'_, Registry> {
    registry.lock().unwrap_or_else(|p| p.into_inner())
}

async fn pod_metadata(registry: Arc<Mutex<Registry>>) {
    loop {
        match identity::kube::start_in_cluster().await {
            Ok(Some(pods)) => {
                log::info!("watching {} pods on this node for pod labels", pods.len());
                lock(&registry).set_pods(pods);
                return;
            }
            // Not in a cluster: pod labels stay empty, nothing to ask.
            Ok(None) => return,
            Err(e) => {
                log::warn!("Kubernetes pod metadata unavailable (retrying in 30 s): {e}");
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
        }
    }
}

/// The /proc sweep, off the async workers. New executables are read and
/// planned before the registry is locked, so scrapes do not wait for them.
async fn sweep(registry: &Arc<Mutex<Registry>>, classifier: &Classifier) -> Result<()> {
    let registry = registry.clone();
    let classifier = classifier.clone();
    blocking(move || {
        for pid in procfs::all_pids().unwrap_or_default() {
            classifier.warm(pid);
        }
        lock(&registry).sweep()?;
        attach_pending(&registry)
    })
    .await
}

/// Attaches the chosen processes' probes one process per lock: a scrape
/// waits for one attachment at most, not for a burst of new processes.
fn attach_pending(registry: &Mutex<Registry>) -> Result<(), crate::ebpf::EngineError> {
    while lock(registry).attach_pending_one()? {
        // Let a waiting scrape in (the lock is not fair).
        std::thread::yield_now();
    }
    Ok(())
}

/// Runs registry work (/proc reads, ELF parsing, uprobe attach) on the
/// blocking pool.
async fn blocking<E>(work: impl FnOnce() -> Result<(), E> + Send + 'static) -> Result<()>
where
    E: std::error::Error + Send + Sync + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .context("registry task panicked")??;
    Ok(())
}
