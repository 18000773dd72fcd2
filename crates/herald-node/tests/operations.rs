//! End-to-end operations: metrics, readiness, drain, slow clients, admission control, TLS.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use fastwebsockets::FragmentCollector;
use http_body_util::Empty;
use serde_json::json;

/// Every metric docs/operations.md lists, present after real traffic.
#[tokio::test]
async fn documented_metrics_appear_after_traffic() {
    // app1 keeps history on "kept." channels.
    let apps = default_apps().replacen(
        "\n[[apps]]\nid = \"app2\"",
        "\n[[apps.history]]\nprefix = \"kept.\"\nsize = 10\nttl = 60\n\n[[apps]]\nid = \"app2\"",
        1,
    );
    let h = Herald::start_with("", &apps).await;
    let mut kept = h.client().await;
    kept.subscribe("kept.1").await;
    h.api().trigger(&["kept.1"], "e", "x", None).await;
    kept.recv_event("e").await;
    let mut a = h.client().await;
    let mut b = h.client().await;
    a.subscribe_private("private-m").await;
    b.subscribe_presence("presence-m", "u").await;
    b.subscribe_private("private-m").await;
    a.send(json!({"event":"client-x","channel":"private-m","data":{}}))
        .await;
    b.recv_event("client-x").await;
    h.api().trigger(&["private-m"], "e", "x", None).await;
    a.recv_event("e").await;
    drop(b);
    let mut refused = h.ws("nope").await;
    refused.expect_close().await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    h.api().trigger(&["private-m"], "e", "x", None).await;
    a.recv_event("e").await;
    let (_, text) = h.admin_get("/metrics").await;
    let documented = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/operations.md"
    ))
    .unwrap();
    let names: Vec<&str> = documented
        .lines()
        .filter_map(|l| l.strip_prefix("| `herald_"))
        .filter_map(|l| l.split('`').next())
        .collect();
    assert!(
        names.len() >= 25,
        "docs/operations.md lists the metrics ({} found)",
        names.len()
    );
    for name in names {
        let name = format!("herald_{name}");
        assert!(
            text.lines().any(|l| l.starts_with(&name)),
            "{name} is documented but not exported"
        );
    }
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        assert!(
            !line.contains("socket_id") && !line.contains("channel=\""),
            "unbounded label: {line}"
        );
    }
}

#[tokio::test]
async fn sigterm_with_1000_clients_spreads_4200_over_the_window() {
    let h = Herald::start_with(
        "drain_window = 3\ndrain_deadline = 6\nhandshakes_per_second = 100000",
        &default_apps(),
    )
    .await;
    let mut clients = Vec::new();
    for _ in 0..1000 {
        clients.push(h.client().await);
    }
    assert_eq!(h.admin_get("/readyz").await.0, 200);
    let started = Instant::now();
    h.sigterm();
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                loop {
                    match c.next_within(Duration::from_secs(8)).await {
                        Event::Close(code, _) => return (code, started.elapsed()),
                        Event::Text(_) => continue,
                        Event::Timeout => return (0, started.elapsed()),
                    }
                }
            })
        })
        .collect();
    // Not ready at once.
    let mut not_ready = false;
    for _ in 0..20 {
        if h.admin_get("/readyz").await.0 == 503 {
            not_ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(not_ready, "/readyz must turn 503 when draining");
    let mut times = Vec::new();
    for t in tasks {
        let (code, at) = t.await.unwrap();
        assert_eq!(code, 4200);
        times.push(at.as_secs_f64());
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    // Spread: each third of the window holds roughly a third of the closes.
    let in_window = |lo: f64, hi: f64| times.iter().filter(|t| **t >= lo && **t < hi).count();
    eprintln!(
        "drain of {} clients over 3 s: first close {:.3} s, last {:.3} s, per third {:?}",
        times.len(),
        times[0],
        times[times.len() - 1],
        [
            in_window(0.0, 1.0),
            in_window(1.0, 2.0),
            in_window(2.0, 3.2)
        ]
    );
    for (lo, hi) in [(0.0, 1.0), (1.0, 2.0), (2.0, 3.2)] {
        let n = in_window(lo, hi);
        assert!(
            (200..=466).contains(&n),
            "{n} closes between {lo}s and {hi}s: {:?}",
            &times[..5]
        );
    }
    let mut h = h;
    let exited = tokio::task::spawn_blocking(move || {
        let status = h.child.wait().unwrap();
        (status, h)
    })
    .await
    .unwrap();
    assert!(exited.0.success());
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "exit before the deadline: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_client_that_never_reads_is_closed_at_its_bound() {
    let h = Herald::start_with("outbound_queue_bytes = 262144", &default_apps()).await;
    let mut slow = h.client().await;
    slow.subscribe("burst").await;
    let mut fast = Vec::new();
    for _ in 0..3 {
        let mut c = h.client().await;
        c.subscribe("burst").await;
        fast.push(c);
    }
    let readers: Vec<_> = fast
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let mut n = 0;
                while n < 1000 {
                    match c.next_within(Duration::from_secs(10)).await {
                        Event::Text(v) if v["event"] == "b" => n += 1,
                        Event::Text(_) => {}
                        other => panic!("fast client lost its stream after {n}: {other:?}"),
                    }
                }
                n
            })
        })
        .collect();
    let data = "x".repeat(10_000);
    let api = h.api();
    for _ in 0..100 {
        let batch: Vec<_> = (0..10)
            .map(|_| json!({"name":"b","channel":"burst","data":data}))
            .collect();
        let (s, _) = api
            .call(
                "POST",
                "/batch_events",
                &[],
                &json!({ "batch": batch }).to_string(),
            )
            .await;
        assert_eq!(s, 200);
    }
    for r in readers {
        assert_eq!(
            r.await.unwrap(),
            1000,
            "every fast client got the whole burst"
        );
    }
    // Now the slow one reads: some events, then 4100.
    let (code, before) = slow.expect_close().await;
    assert_eq!(code, 4100);
    assert!(
        before.len() < 1000,
        "the slow client was cut off, not buffered without bound"
    );
    assert_eq!(before.last().unwrap()["data"]["code"], 4100);
    assert!(
        h.metric("herald_slow_client_disconnects_total{app=\"app1\"}")
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn handshake_burst_over_the_rate_is_refused_then_accepted() {
    let h = Herald::start_with("handshakes_per_second = 5", &default_apps()).await;
    let mut accepted = 0;
    let mut refused = 0;
    for _ in 0..20 {
        let mut c = h.ws(KEY).await;
        match c.next().await {
            Event::Text(v) if v["event"] == "pusher:connection_established" => accepted += 1,
            Event::Text(v) => {
                assert_eq!(v["data"]["code"], 4100, "{v}");
                assert_eq!(c.expect_close().await.0, 4100);
                refused += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(
        accepted >= 5 && refused >= 10,
        "accepted {accepted}, refused {refused}"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut later = h.ws(KEY).await;
    assert_eq!(later.recv().await["event"], "pusher:connection_established");
    assert!(
        h.metric("herald_connections_refused_total{reason=\"handshake_rate\"}")
            .await
            >= 10.0
    );
}

#[tokio::test]
async fn api_rate_limit_gives_429() {
    let apps = format!("{}\n[[apps]]\nid = \"app9\"\nkey = \"key9\"\nsecret = \"secret9\"\napi_requests_per_second = 3\n", default_apps());
    let h = Herald::start_with("", &apps).await;
    let api = Api {
        port: h.port,
        app: "app9".into(),
        key: "key9".into(),
        secret: "secret9".into(),
    };
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let (s, body) = api.call("GET", "/channels", &[], "").await;
        if s == 429 {
            assert!(
                body["error"]
                    .as_str()
                    .unwrap()
                    .contains("Too many requests"),
                "{body}"
            );
        }
        statuses.push(s);
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        3,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        5,
        "{statuses:?}"
    );
    // Other apps are not limited.
    for _ in 0..8 {
        assert_eq!(h.api().call("GET", "/channels", &[], "").await.0, 200);
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(api.call("GET", "/channels", &[], "").await.0, 200);
}

#[tokio::test]
async fn tls_on_the_public_port() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let dir = tempdir::Dir::new();
    let (cert_path, key_path) = (dir.0.join("tls.crt"), dir.0.join("tls.key"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let rest = format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\n{}",
        cert_path.display(),
        key_path.display(),
        default_apps()
    );
    let h = Herald::start_with("", &rest).await;

    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", h.port))
        .await
        .unwrap();
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector
        .connect(name, tcp)
        .await
        .expect("TLS handshake with herald");
    let req = hyper::Request::builder()
        .method("GET")
        .uri(format!("https://localhost:{}/app/{KEY}?protocol=7", h.port))
        .header("Host", format!("localhost:{}", h.port))
        .header("Upgrade", "websocket")
        .header("Connection", "upgrade")
        .header(
            "Sec-WebSocket-Key",
            fastwebsockets::handshake::generate_key(),
        )
        .header("Sec-WebSocket-Version", "13")
        .body(Empty::<Bytes>::new())
        .unwrap();
    struct Exec;
    impl<F: std::future::Future + Send + 'static> hyper::rt::Executor<F> for Exec
    where
        F::Output: Send + 'static,
    {
        fn execute(&self, f: F) {
            tokio::spawn(f);
        }
    }
    let (ws, _) = fastwebsockets::handshake::client(&Exec, req, tls)
        .await
        .expect("wss upgrade");
    let mut ws = FragmentCollector::new(ws);
    let frame = ws.read_frame().await.unwrap();
    let hello: serde_json::Value = serde_json::from_slice(&frame.payload).unwrap();
    assert_eq!(hello["event"], "pusher:connection_established");
}
