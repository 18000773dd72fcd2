//! Hostile input against the real binary: frames that used to abort the process, slow and
//! silent connections, unsigned API floods, handshake races and malformed handshakes. Each
//! case failed (or crashed the node) before it was fixed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::raw::{close_code, masked, raw_ws};
use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn deep(n: usize) -> String {
    format!("{}{}", "[".repeat(n), "]".repeat(n))
}

/// Reads until EOF or an error; how long it took, or `None` if the connection stayed open for
/// `wait`.
async fn closed_within(stream: &mut TcpStream, wait: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((started + wait).into(), stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

/// The node still serves: a fresh client subscribes and receives an API event.
async fn still_serving(h: &Herald) {
    let mut c = h.client().await;
    assert_eq!(
        c.subscribe("alive").await["event"],
        "pusher_internal:subscription_succeeded"
    );
    let (status, _) = h.api().trigger(&["alive"], "ping", "{}", None).await;
    assert_eq!(status, 200);
    assert_eq!(c.recv_event("ping").await["channel"], "alive");
}

#[tokio::test]
async fn deeply_nested_json_is_refused_and_the_node_lives() {
    let h = Herald::start().await;
    let mut bystander = h.client().await;
    bystander.subscribe("bystander").await;

    let mut attacker = h.client().await;
    let string_data = serde_json::to_string(&format!(r#"{{"channel":{}}}"#, deep(5000))).unwrap();
    attacker.subscribe_private("private-a").await;
    for frame in [
        format!(r#"{{"event":"pusher:ping","data":{}}}"#, deep(5000)),
        format!(
            r#"{{"event":"pusher:ping","x":{},"data":{{}}}}"#,
            deep(5000)
        ),
        format!(r#"{{"event":"pusher:subscribe","data":{string_data}}}"#),
        format!(
            r#"{{"event":"client-x","channel":"private-a","data":{}}}"#,
            deep(5000)
        ),
    ] {
        attacker.send_text(&frame).await;
        let err = attacker.recv_event("pusher:error").await;
        assert!(
            err["data"]["message"]
                .as_str()
                .unwrap()
                .contains("nested more than"),
            "{err}"
        );
    }
    // The attacker's connection itself stays usable, as for any invalid message.
    attacker
        .send(json!({"event":"pusher:ping","data":{}}))
        .await;
    assert_eq!(
        attacker.recv_event("pusher:pong").await["event"],
        "pusher:pong"
    );

    // A signed trigger 100,000 levels deep: 400, not a dead node.
    let body = format!(r#"{{"name":"e","channel":"a","data":{}}}"#, deep(100_000));
    let (status, reply) = h.api().call("POST", "/events", &[], &body).await;
    assert_eq!(status, 400, "{reply}");

    // Presence channel_data and sign-in user_data, nested.
    let cd = format!(r#"{{"user_id":"1","user_info":{}}}"#, deep(5000));
    let auth = auth(&attacker.socket_id, "presence-deep", Some(&cd));
    attacker
        .send(json!({"event":"pusher:subscribe","data":{"channel":"presence-deep","auth":auth,"channel_data":cd}}))
        .await;
    let err = attacker.recv_event("pusher:subscription_error").await;
    assert_eq!(data(&err)["status"], 400, "{err}");

    let (status, _) = h.api().trigger(&["bystander"], "still", "{}", None).await;
    assert_eq!(status, 200);
    assert_eq!(bystander.recv_event("still").await["channel"], "bystander");
    still_serving(&h).await;
}

#[tokio::test]
async fn slow_and_silent_connections_are_cut() {
    let h = Herald::start_with("header_timeout = 1\nbody_timeout = 1", &default_apps()).await;
    // A silent TCP connection.
    let mut silent = TcpStream::connect(("127.0.0.1", h.port)).await.unwrap();
    // An upgrade request dribbled a byte every 300 ms.
    let mut dribble = TcpStream::connect(("127.0.0.1", h.port)).await.unwrap();
    let dribbler = tokio::spawn(async move {
        for b in b"GET /app/key1?protocol=7 HTTP/1.1\r\nHost: x\r\n".iter() {
            if dribble.write_all(&[*b]).await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        false
    });
    let took = closed_within(&mut silent, Duration::from_secs(5))
        .await
        .expect("a silent connection is closed");
    assert!(took < Duration::from_millis(2500), "{took:?}");
    assert!(
        tokio::time::timeout(Duration::from_secs(5), dribbler)
            .await
            .expect("the dribbled request is cut")
            .unwrap(),
        "the dribbling client saw its connection closed"
    );

    // A POST that declares a body and never sends it: 408, not silence.
    let mut post = TcpStream::connect(("127.0.0.1", h.port)).await.unwrap();
    post.write_all(
        b"POST /apps/app1/events?auth_key=key1 HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{",
    )
    .await
    .unwrap();
    let mut reply = Vec::new();
    let started = Instant::now();
    let _ = tokio::time::timeout(Duration::from_secs(5), post.read_to_end(&mut reply)).await;
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(started.elapsed() < Duration::from_secs(3));
    still_serving(&h).await;
}

#[tokio::test]
async fn connections_that_are_not_websockets_are_bounded() {
    let h = Herald::start_with("max_http_connections = 20", &default_apps()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut held = Vec::new();
    for _ in 0..30 {
        held.push(TcpStream::connect(("127.0.0.1", h.port)).await.unwrap());
    }
    let mut closed = 0;
    for s in &mut held {
        if closed_within(s, Duration::from_millis(200)).await.is_some() {
            closed += 1;
        }
    }
    assert_eq!(closed, 10, "20 held open, the other 10 closed at once");
    assert!(
        h.metric("herald_connections_refused_total{reason=\"http_limit\"}")
            .await
            >= 1.0
    );
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    still_serving(&h).await;
}

#[tokio::test]
async fn out_of_file_descriptors_the_node_sheds_and_recovers() {
    // The node may raise its soft limit only up to this hard limit.
    let h = Herald::start_wrapped("ulimit -n 200;", "header_timeout = 2", &default_apps()).await;
    let mut c = h.client().await;
    c.subscribe("survivor").await;
    let mut flood = Vec::new();
    for _ in 0..300 {
        if let Ok(s) = TcpStream::connect(("127.0.0.1", h.port)).await {
            flood.push(s);
        }
    }
    // Established connections keep working while the node is out of descriptors.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        h.metric("herald_connections_refused_total{reason=\"fd_limit\"}")
            .await
            >= 1.0
    );
    // The flood is cut by the header timeout; the node takes new connections again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    drop(flood);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _) = h.api().trigger(&["survivor"], "after", "{}", None).await;
    assert_eq!(status, 200);
    assert_eq!(c.recv_event("after").await["channel"], "survivor");
}

#[tokio::test]
async fn unsigned_requests_do_not_spend_the_api_rate_limit() {
    let apps = r#"
[[apps]]
id = "app1"
key = "key1"
secret = "secret1"
api_requests_per_second = 20
"#;
    let h = Herald::start_with("", apps).await;
    let mut statuses = std::collections::BTreeMap::new();
    for i in 0..400 {
        let path = format!("/apps/app1/events?auth_key=key1&auth_timestamp={}&auth_version=1.0&auth_signature=00{i}", now());
        let (status, _) = http(h.port, "POST", &path, Bytes::from_static(b"{}")).await;
        *statuses.entry(status).or_insert(0) += 1;
    }
    // The first failures are answered 401, the flood beyond its budget 429.
    assert!(
        statuses.get(&401).copied().unwrap_or(0) >= 50,
        "{statuses:?}"
    );
    assert!(statuses.get(&429).copied().unwrap_or(0) > 0, "{statuses:?}");
    // Signed calls right after the flood are not rate-limited.
    for _ in 0..10 {
        let (status, body) = h.api().trigger(&["a"], "e", "{}", None).await;
        assert_eq!(status, 200, "{body}");
    }
}

#[tokio::test]
async fn malformed_handshakes_get_400() {
    let h = Herald::start().await;
    let requests = [
        // Empty key.
        "GET /app/key1?protocol=7 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: \r\nSec-WebSocket-Version: 13\r\n\r\n",
        // Not base64 of 16 bytes.
        "GET /app/key1?protocol=7 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: not*base64!\r\nSec-WebSocket-Version: 13\r\n\r\n",
        "GET /app/key1?protocol=7 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        // HTTP/1.0.
        "GET /app/key1?protocol=7 HTTP/1.0\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    ];
    for req in requests {
        let mut s = TcpStream::connect(("127.0.0.1", h.port)).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 512];
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let head = String::from_utf8_lossy(&buf[..n]);
        assert!(head.contains(" 400 "), "{req:?} -> {head}");
    }
}

#[tokio::test]
async fn close_frames_with_invalid_codes_are_answered_1002() {
    let h = Herald::start().await;
    for payload in [
        5000u16.to_be_bytes().to_vec(),
        0u16.to_be_bytes().to_vec(),
        999u16.to_be_bytes().to_vec(),
        1005u16.to_be_bytes().to_vec(),
        vec![3u8],
    ] {
        let mut s = raw_ws(h.port).await;
        s.write_all(&masked(8, &payload)).await.unwrap();
        assert_eq!(close_code(&mut s).await, 1002, "{payload:?}");
    }
    let mut s = raw_ws(h.port).await;
    let mut bye = 1000u16.to_be_bytes().to_vec();
    bye.extend_from_slice(b"bye");
    s.write_all(&masked(8, &bye)).await.unwrap();
    assert_eq!(close_code(&mut s).await, 1000);
}

#[tokio::test]
async fn per_ip_connection_limit() {
    let h = Herald::start_with("max_connections_per_ip = 5", &default_apps()).await;
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(h.client().await);
    }
    let mut sixth = TcpStream::connect(("127.0.0.1", h.port)).await.unwrap();
    assert!(closed_within(&mut sixth, Duration::from_secs(2))
        .await
        .is_some());
    drop(clients);
    tokio::time::sleep(Duration::from_millis(300)).await;
    still_serving(&h).await;
}

/// One tenant's cache channels cannot take the node's memory: beyond the app's
/// `max_cache_bytes` a trigger to a new cache channel answers 507 and names the limit; the
/// events already cached stay; another app is unaffected.
#[tokio::test]
async fn cache_channels_are_bounded_per_app() {
    let apps = r#"
[[apps]]
id = "app1"
key = "key1"
secret = "secret1"
max_cache_bytes = 100000

[[apps]]
id = "app2"
key = "key2"
secret = "secret2"
"#;
    let h = Herald::start_with("", apps).await;
    let data = "x".repeat(9000);
    let mut stored = 0;
    let mut refusal = None;
    for i in 0..50 {
        let (status, body) = h
            .api()
            .trigger(&[&format!("cache-{i}")], "e", &data, None)
            .await;
        match status {
            200 => stored += 1,
            507 => {
                refusal = Some(body);
                break;
            }
            other => panic!("{other} {body}"),
        }
    }
    // A trigger to several channels that stops at the limit says which ones got the event.
    let (status, body) = h
        .api()
        .trigger(&["plain-a", "cache-late", "plain-b"], "e", &data, None)
        .await;
    assert_eq!(status, 504, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("Published to plain-a; not to cache-late"),
        "{body}"
    );
    let refusal = refusal.expect("the cache filled up");
    let message = refusal["error"].as_str().unwrap();
    assert!(message.contains("max_cache_bytes"), "{message}");
    // Each frame is the 9,000 bytes of data plus its JSON envelope (~45 bytes).
    assert_eq!(stored, 11, "eleven events of 9 KB fit in 100 KB");
    assert!(h.metric("herald_cache_refused_total{app=\"app1\"}").await >= 1.0);
    // What was cached is still served.
    let mut c = h.client().await;
    c.subscribe("cache-0").await;
    assert_eq!(c.recv().await["event"], "e");
    // Another app has its own budget.
    let other = Api {
        port: h.port,
        app: "app2".into(),
        key: "key2".into(),
        secret: "secret2".into(),
    };
    assert_eq!(other.trigger(&["cache-x"], "e", &data, None).await.0, 200);
}
