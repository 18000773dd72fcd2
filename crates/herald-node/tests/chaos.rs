//! Faults and floods on a real cluster: real `herald` processes on a real `redis-server`,
//! driven by real WebSocket clients and the signed HTTP API.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::redis::Redis;
use common::*;

fn bus(url: &str, apps: &str) -> String {
    format!("[bus]\ndriver = \"redis\"\nurl = \"{url}\"\nlease_seconds = 2\n{apps}")
}

/// 600 handshakes at once against a node limit of 200, for an app whose own (cluster-wide)
/// limit makes every admission wait on Redis: exactly 200 get in. (Before the node reserved
/// its slot ahead of that wait, 478 did.)
#[tokio::test]
async fn node_connection_limit_holds_while_admission_waits_on_redis() {
    let redis = Redis::start().await;
    let apps = r#"
[[apps]]
id = "app1"
key = "key1"
secret = "secret1"
max_connections = 100000
"#;
    let h = Herald::start_node(
        "limit-node",
        "max_connections = 200\nhandshakes_per_second = 100000",
        &bus(&redis.url(), apps),
    )
    .await;
    let mut tasks = Vec::new();
    for _ in 0..600 {
        let port = h.port;
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(port, "/app/key1?protocol=7", None).await;
            let first = c.next().await;
            (first, c)
        }));
    }
    let mut admitted = 0;
    let mut refused = 0;
    let mut keep = Vec::new();
    for t in tasks {
        let (first, c) = t.await.unwrap();
        match first {
            Event::Text(v) if v["event"] == "pusher:connection_established" => admitted += 1,
            Event::Text(v) if v["event"] == "pusher:error" => {
                assert_eq!(v["data"]["code"], 4100, "{v}");
                refused += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
        keep.push(c);
    }
    assert_eq!((admitted, refused), (200, 400));
    assert_eq!(h.metric("herald_connections{").await, 200.0);
}
