//! The pod index against a fake API server on 127.0.0.1.
//!
//! The server is a minimal HTTP/1.1 responder on std threads that replays
//! real-shaped fixtures: the node's PodList, then a watch stream whose events
//! are released one at a time by the test (so each intermediate state can be
//! observed), ending in `410 Gone`, which makes the watcher re-list: the index
//! must then be rebuilt from the second PodList. It binds a random port, serves
//! only this test, and stops when told (or at its own deadline).

use std::{
    io::{BufRead, BufReader, Write},
    net::{TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use goalloc::identity::kube::{KubeError, PodIndex, start};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/identity/kube");

const WEB_UID: &str = "69f8485c-fa2c-48c7-b8e8-414d59a7993d";
const WEB_APP: &str = "c483beb8191063ce61a17312d477e65db1d791dcf03332b883cf3b2bfb5c51f9";
const WEB_ENVOY: &str = "280634b206e354678c7531cf236e1bcd51b3c76b336fe1cf5001bbac90778b43";
const WEB_MIGRATE: &str = "869970395c3a5d8448f2a35fab7b005d4de205fcc1a24d6c30f519c983d4c76b";
const APISERVER_STATIC_UID: &str = "fa01decb8c27bc510efbbf4358bce69c";
const APISERVER: &str = "7593d8703bfe0d15740366eeb8c0c63493458ec252649eb73b79673ebc14fbf6";
const EXPORTER_UID: &str = "1b1b15c6-4a79-4af2-8e6b-57a6c860aa4e";
const EXPORTER: &str = "cee8aac78421a228f55e56d03f365c23a5b18176527d0442a4c7d3615ce75210";
const PI_UID: &str = "9911e6b2-f172-4205-a8ab-5637a5bf3d10";
const PI: &str = "bc6fb1bb949392f4de6d4ac14d0d425b890faf6c13a520aa01f4d3b7126bf762";
const WEB2_UID: &str = "377777c9-2a05-4eaf-9f55-c2bab53484c3";
const WEB2_APP: &str = "d1314ef47b816fda26353ad996942c0ec7f4bbf4cf54cef326c3f5878e90d3e8";

/// The server gives up on its own after this, whatever the test does.
const SERVER_DEADLINE: Duration = Duration::from_secs(60);

fn fixture(name: &str) -> String {
    let path = format!("{FIXTURES}/{name}");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("fixture {path}: {e}"))
}

struct FakeApiServer {
    port: u16,
    /// Request targets (path and query), in arrival order.
    requests: Arc<Mutex<Vec<String>>>,
    /// One message releases one watch event.
    release: mpsc::Sender<()>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

#[derive(Clone)]
struct Replay {
    lists: Arc<Vec<String>>,
    events: Arc<Vec<String>>,
    lists_served: Arc<Mutex<usize>>,
    /// Taken by the first watch; later watches just stay open.
    release: Arc<Mutex<Option<mpsc::Receiver<()>>>>,
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl FakeApiServer {
    fn start() -> FakeApiServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let port = listener.local_addr().expect("local addr").port();
        // Non-blocking accept so the loop can notice `stop` and its deadline.
        listener.set_nonblocking(true).expect("nonblocking");
        let (release, release_rx) = mpsc::channel();
        let events = fixture("watch_events.ndjson")
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect();
        let replay = Replay {
            lists: Arc::new(vec![fixture("pods_list.json"), fixture("pods_relist.json")]),
            events: Arc::new(events),
            lists_served: Arc::default(),
            release: Arc::new(Mutex::new(Some(release_rx))),
            requests: Arc::default(),
            stop: Arc::default(),
        };
        let requests = Arc::clone(&replay.requests);
        let stop = Arc::clone(&replay.stop);
        let thread = thread::spawn(move || {
            let deadline = Instant::now() + SERVER_DEADLINE;
            let mut connections = Vec::new();
            while !replay.stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let replay = replay.clone();
                        connections.push(thread::spawn(move || serve(stream, &replay, deadline)));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => panic!("accept: {e}"),
                }
            }
            replay.stop.store(true, Ordering::SeqCst);
            for c in connections {
                let _ = c.join();
            }
        });
        FakeApiServer {
            port,
            requests,
            release,
            stop,
            thread: Some(thread),
        }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().expect("requests lock").clone()
    }

    fn release_next_event(&self) {
        self.release.send(()).expect("watch stream is gone");
    }

    fn shutdown(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().expect("server thread panicked");
        }
    }
}

/// One connection: one request, one response, then close (no keep-alive, so
/// every request shows up as its own connection here).
fn serve(stream: TcpStream, replay: &Replay, deadline: Instant) {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    let mut reader = BufReader::new(stream.try_clone().expect("clone stream"));
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    // Drain the headers; a GET has no body.
    loop {
        let mut header = String::new();
        match reader.read_line(&mut header) {
            Ok(0) | Err(_) => return,
            Ok(_) if header == "\r\n" => break,
            Ok(_) => {}
        }
    }
    let target = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    replay
        .requests
        .lock()
        .expect("requests lock")
        .push(target.clone());
    let mut out = stream;
    if !target.starts_with("/api/v1/pods") {
        let body = r#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}"#;
        let _ = write!(
            out,
            "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        return;
    }
    if !target.contains("watch=true") {
        let body = {
            let mut served = replay.lists_served.lock().expect("lists lock");
            let i = (*served).min(replay.lists.len() - 1);
            *served += 1;
            replay.lists[i].clone()
        };
        let _ = write!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        return;
    }
    // A watch: chunked, one event per chunk, like the API server.
    if out
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return;
    }
    let _ = out.flush();
    let release = replay.release.lock().expect("release lock").take();
    if let Some(release) = release {
        for event in replay.events.iter() {
            // Wait for the test to ask for the next event.
            loop {
                if replay.stop.load(Ordering::SeqCst) || Instant::now() > deadline {
                    return;
                }
                match release.recv_timeout(Duration::from_millis(20)) {
                    Ok(()) => break,
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
            }
            let line = format!("{event}\n");
            if write!(out, "{:x}\r\n{line}\r\n", line.len()).is_err() {
                return;
            }
            let _ = out.flush();
        }
        // The stream ends after the 410 error, as the API server's does.
        let _ = out.write_all(b"0\r\n\r\n");
        return;
    }
    // Later watches: nothing happens on this node until the test ends.
    while !replay.stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
}

type Found = Option<(String, String, Option<String>)>;

fn found(ns: &str, pod: &str, container: Option<&str>) -> Found {
    Some((ns.into(), pod.into(), container.map(str::to_owned)))
}

/// Polls until the index answers `want` (the watcher applies events
/// asynchronously), failing with the last answer after a few seconds.
async fn eventually(pods: &PodIndex, uid: &str, container: Option<&str>, want: Found) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = pods.lookup(uid, container);
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "lookup({uid}, {container:?}): got {got:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn pod_index_follows_list_watch_and_relist() {
    let server = FakeApiServer::start();
    let port = server.port;
    let uri = format!("http://127.0.0.1:{port}")
        .parse()
        .expect("server uri");
    let client = kube::Client::try_from(kube::Config::new(uri)).expect("kube client");

    let scenario = async {
        // Initial list: `start` returns once it is in the index.
        let pods = start("node-a".into(), client).await.expect("start");
        let requests = server.requests();
        let list = requests.first().expect("a list request");
        assert!(
            list.contains("fieldSelector=spec.nodeName%3Dnode-a")
                || list.contains("fieldSelector=spec.nodeName=node-a"),
            "{list}"
        );
        assert!(!list.contains("watch=true"), "{list}");
        // Served from the API server's cache, not etcd.
        assert!(list.contains("resourceVersion=0"), "{list}");
        assert_eq!(pods.len(), 3);

        assert_eq!(
            pods.lookup(WEB_UID, Some(WEB_APP)),
            found("shop", "web-7d9f8c6b5-x2x9q", Some("app"))
        );
        // The systemd cgroup form of the UID, a sidecar and an init container.
        assert_eq!(
            pods.lookup(&WEB_UID.replace('-', "_"), Some(WEB_ENVOY)),
            found("shop", "web-7d9f8c6b5-x2x9q", Some("envoy"))
        );
        assert_eq!(
            pods.lookup(WEB_UID, Some(WEB_MIGRATE)),
            found("shop", "web-7d9f8c6b5-x2x9q", Some("migrate"))
        );
        // A static pod: its cgroup carries the config hash, not the mirror's UID.
        assert_eq!(
            pods.lookup(APISERVER_STATIC_UID, Some(APISERVER)),
            found(
                "kube-system",
                "kube-apiserver-node-a",
                Some("kube-apiserver")
            )
        );
        assert_eq!(
            pods.lookup(EXPORTER_UID, Some(EXPORTER)),
            found("monitoring", "node-exporter-8xk2p", Some("node-exporter"))
        );
        assert_eq!(pods.lookup(PI_UID, None), None);

        // ADDED: a job pod whose container is still being created.
        server.release_next_event();
        eventually(
            &pods,
            PI_UID,
            Some(PI),
            found("batch", "pi-28419400-tq7vd", None),
        )
        .await;
        // The watch was started from the list's resourceVersion, same selector.
        let requests = server.requests();
        let watch = requests.get(1).expect("a watch request");
        assert!(watch.contains("watch=true"), "{watch}");
        assert!(
            watch.contains("fieldSelector=spec.nodeName%3Dnode-a")
                || watch.contains("fieldSelector=spec.nodeName=node-a"),
            "{watch}"
        );
        assert!(watch.contains("resourceVersion=48213"), "{watch}");

        // MODIFIED: the container is running and has an id.
        server.release_next_event();
        let pi = found("batch", "pi-28419400-tq7vd", Some("pi"));
        eventually(&pods, PI_UID, Some(PI), pi.clone()).await;

        // DELETED: the DaemonSet pod goes.
        server.release_next_event();
        eventually(&pods, EXPORTER_UID, Some(EXPORTER), None).await;
        assert_eq!(pods.len(), 3);

        // 410 Gone: the watcher re-lists, and the index is rebuilt from the new
        // list: web-…-x2x9q was replaced while the watch was broken.
        server.release_next_event();
        eventually(
            &pods,
            WEB2_UID,
            Some(WEB2_APP),
            found("shop", "web-7d9f8c6b5-k4m2p", Some("app")),
        )
        .await;
        assert_eq!(pods.lookup(WEB_UID, Some(WEB_APP)), None);
        assert_eq!(pods.lookup(PI_UID, Some(PI)), pi);
        assert_eq!(
            pods.lookup(APISERVER_STATIC_UID, Some(APISERVER)),
            found(
                "kube-system",
                "kube-apiserver-node-a",
                Some("kube-apiserver")
            )
        );
        assert_eq!(pods.len(), 3);
        let requests = server.requests();
        assert!(
            requests
                .iter()
                .skip(2)
                .any(|r| !r.contains("watch=true") && r.contains("spec.nodeName")),
            "no re-list in {requests:?}"
        );
        // Dropping the last handle stops the watcher.
        drop(pods);
    };
    let outcome = tokio::time::timeout(Duration::from_secs(45), scenario).await;
    server.shutdown();
    outcome.expect("scenario timed out");
}

#[tokio::test]
async fn forbidden_first_list_is_an_error() {
    // The usual deployment mistake: the service account may not list pods.
    // `start` must report it rather than wait for its own timeout.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let server = thread::spawn(move || {
        // Exactly one request is expected: the first error is not retried.
        listener.set_nonblocking(true).expect("nonblocking");
        let deadline = Instant::now() + Duration::from_secs(20);
        let stream = loop {
            match listener.accept() {
                Ok((stream, _)) => break stream,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(Instant::now() < deadline, "no request came");
                    thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("accept: {e}"),
            }
        };
        stream.set_nonblocking(false).expect("blocking");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("read timeout");
        let mut reader = BufReader::new(stream.try_clone().expect("clone"));
        let mut line = String::new();
        while reader.read_line(&mut line).is_ok_and(|n| n > 0) && !line.ends_with("\r\n\r\n") {}
        let body = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"pods is forbidden: User \"system:serviceaccount:goalloc:goalloc\" cannot list resource \"pods\" in API group \"\" at the cluster scope","reason":"Forbidden","details":{"kind":"pods"},"code":403}"#;
        let mut out = stream;
        let _ = write!(
            out,
            "HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    });
    let uri = format!("http://127.0.0.1:{port}").parse().expect("uri");
    let client = kube::Client::try_from(kube::Config::new(uri)).expect("kube client");
    let result = tokio::time::timeout(Duration::from_secs(20), start("node-a".into(), client))
        .await
        .expect("start did not give up");
    server.join().expect("server thread");
    let error = result.expect_err("forbidden, yet start succeeded");
    assert!(matches!(error, KubeError::Watch { .. }), "{error}");
    assert!(error.to_string().contains("forbidden"), "{error}");
}
