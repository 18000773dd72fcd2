//! Channel history and resuming a subscription where the client left off, at the protocol
//! level (raw frames), on one node and across nodes on Redis. The pusher-js and laravel-echo
//! plugin tests are in `clients/js`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::proxy::Proxy;
use common::redis::{Redis, RedisCluster};
use common::*;
use serde_json::{json, Value};

fn apps() -> String {
    let mut apps = String::from("[[apps]]\nid = \"app1\"\nkey = \"key1\"\nsecret = \"secret1\"\n");
    for (prefix, size) in [
        ("orders.big.", 1000),
        ("orders.", 5),
        ("private-orders.", 5),
        ("presence-orders.", 5),
    ] {
        apps.push_str(&format!(
            "\n[[apps.history]]\nprefix = \"{prefix}\"\nsize = {size}\nttl = 300\n"
        ));
    }
    apps
}

fn redis_bus(url: &str) -> String {
    format!(
        "[bus]\ndriver = \"redis\"\nurl = \"{url}\"\nlease_seconds = 2\n{}",
        apps()
    )
}

/// Subscribes as the recovery plugin does (asking for positions first, and with a resume
/// position if given); returns the `subscription_succeeded` frame.
async fn subscribe_at(c: &mut Client, channel: &str, position: Option<Value>) -> Value {
    c.send(json!({"event":"herald:positions","data":{}})).await;
    let mut data = json!({ "channel": channel });
    if let Some(p) = position {
        data["position"] = p;
    }
    c.send(json!({"event":"pusher:subscribe","data":data}))
        .await;
    c.recv_event("pusher_internal:subscription_succeeded").await
}

/// The next frames until `n` events named `e` arrived; their data and positions.
async fn events(c: &mut Client, n: usize) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    while out.len() < n {
        let v = c.recv().await;
        if v["event"] == "e" {
            out.push((
                v["data"].as_str().unwrap().to_owned(),
                v["position"]["offset"].as_u64().unwrap(),
            ));
        }
    }
    out
}

/// Publishes, retrying while the node answers 503 (nothing published: recovering after Redis
/// trouble). A 504 (not every node confirmed it, e.g. a dead node still counted) was kept in
/// the stream: not retried.
async fn publish_when_ready(h: &Herald, channel: &str, data: &str) {
    for _ in 0..100 {
        if matches!(
            h.api().trigger(&[channel], "e", data, None).await.0,
            200 | 504
        ) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the node did not publish again");
}

async fn publish(h: &Herald, channel: &str, data: &str) {
    let (status, body) = h.api().trigger(&[channel], "e", data, None).await;
    assert_eq!(status, 200, "{body}");
}

/// Everything a resuming client can meet, on `nodes` (clients on the first, the API and
/// resuming clients on the last).
async fn resume_cases(nodes: &[Herald]) {
    let (first, last) = (&nodes[0], &nodes[nodes.len() - 1]);
    let mut c1 = first.client().await;
    let ok = subscribe_at(&mut c1, "orders.1", None).await;
    let epoch = ok["position"]["epoch"].as_str().unwrap().to_owned();
    assert_eq!(ok["position"]["offset"], 0, "{ok}");
    for i in 1..=3 {
        publish(last, "orders.1", &format!("e{i}")).await;
    }
    assert_eq!(
        events(&mut c1, 3).await,
        vec![("e1".into(), 1), ("e2".into(), 2), ("e3".into(), 3)]
    );

    // Resuming after offset 1: the two missed events, in order, then live.
    let mut c2 = last.client().await;
    let ok = subscribe_at(
        &mut c2,
        "orders.1",
        Some(json!({"epoch": epoch, "offset": 1})),
    )
    .await;
    assert_eq!(ok["position"]["offset"], 3);
    let verdict = c2.recv_event("herald:recovery").await;
    assert_eq!(data(&verdict), json!({"recovered": true, "replayed": 2}));
    assert_eq!(
        events(&mut c2, 2).await,
        vec![("e2".into(), 2), ("e3".into(), 3)]
    );
    publish(last, "orders.1", "e4").await;
    assert_eq!(events(&mut c2, 1).await, vec![("e4".into(), 4)]);
    assert_eq!(events(&mut c1, 1).await, vec![("e4".into(), 4)]);
    c2.expect_silence(Duration::from_millis(200)).await;

    // Nothing missed.
    let mut c3 = last.client().await;
    subscribe_at(
        &mut c3,
        "orders.1",
        Some(json!({"epoch": epoch, "offset": 4})),
    )
    .await;
    assert_eq!(
        data(&c3.recv_event("herald:recovery").await),
        json!({"recovered": true, "replayed": 0})
    );

    // Refusals: another epoch, a position the stream never had, a malformed one, too many
    // missed (the rule keeps 5). Each subscribes all the same and gets live events.
    publish(last, "orders.1", "e5").await;
    publish(last, "orders.1", "e6").await;
    for (top, (position, reason)) in (6..).zip([
        (json!({"epoch": "Other1", "offset": 1}), "epoch_changed"),
        (json!({"epoch": epoch, "offset": 99}), "unknown_position"),
        (
            json!({"epoch": "bad epoch!", "offset": 1}),
            "invalid_position",
        ),
        (json!({"epoch": epoch, "offset": 0}), "too_many_missed"),
    ]) {
        let mut c = last.client().await;
        let ok = subscribe_at(&mut c, "orders.1", Some(position.clone())).await;
        assert_eq!(ok["position"]["offset"], top, "{position}");
        let verdict = data(&c.recv_event("herald:recovery").await);
        assert_eq!(verdict["recovered"], false, "{position}");
        assert_eq!(verdict["reason"], reason, "{position}");
        publish(last, "orders.1", "live").await;
        let v = c.recv_event("e").await;
        assert_eq!(v["data"], "live", "only live events after a refusal");
    }

    // The HTTP API: oldest first, within the rule's size; `after` and `limit`.
    let (status, h) = last
        .api()
        .call("GET", "/channels/orders.1/history", &[], "")
        .await;
    assert_eq!(status, 200, "{h}");
    assert_eq!(h["epoch"], epoch.as_str());
    assert_eq!(h["offset"], 10);
    let offsets: Vec<u64> = h["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, vec![6, 7, 8, 9, 10]);
    assert_eq!(
        h["events"][0],
        json!({"offset": 6, "event": "e", "data": "e6"})
    );
    let (_, page) = first
        .api()
        .call(
            "GET",
            "/channels/orders.1/history",
            &[("after", "7"), ("limit", "2")],
            "",
        )
        .await;
    assert_eq!(page["events"][0]["offset"], 8);
    assert_eq!(page["events"].as_array().unwrap().len(), 2);
    let (status, _) = last
        .api()
        .call("GET", "/channels/plain/history", &[], "")
        .await;
    assert_eq!(status, 404);
    let (status, _) = last
        .api()
        .call("GET", "/channels/orders.1/history", &[("limit", "x")], "")
        .await;
    assert_eq!(status, 400);

    // Client events and presence notices never enter history.
    let mut a = first.client().await;
    a.subscribe_private("private-orders.9").await;
    let mut b = last.client().await;
    b.subscribe_private("private-orders.9").await;
    a.send(json!({"event":"client-x","channel":"private-orders.9","data":{}}))
        .await;
    let ce = b.recv_event("client-x").await;
    assert!(ce.get("position").is_none(), "{ce}");
    let mut p = first.client().await;
    p.subscribe_presence("presence-orders.9", "u1").await;
    let (_, h) = last
        .api()
        .call("GET", "/channels/private-orders.9/history", &[], "")
        .await;
    assert_eq!(h["events"], json!([]));
    let (_, h) = last
        .api()
        .call("GET", "/channels/presence-orders.9/history", &[], "")
        .await;
    assert_eq!(h["events"], json!([]));

    // A client that did not ask for positions gets the frames as they were published.
    let mut stock = first.client().await;
    let ok = stock.subscribe("orders.1").await;
    assert!(ok.get("position").is_none(), "{ok}");
    publish(last, "orders.1", "plain").await;
    let v = stock.recv_event("e").await;
    assert_eq!(
        v,
        json!({"event": "e", "channel": "orders.1", "data": "plain"})
    );
    let v = c1.recv_event("e").await;
    assert!(v["position"]["offset"].as_u64().is_some(), "{v}");

    // Positions are per channel: a position of orders.1 on orders.2 is not recovered.
    let mut other = last.client().await;
    subscribe_at(
        &mut other,
        "orders.2",
        Some(json!({"epoch": epoch, "offset": 1})),
    )
    .await;
    assert_eq!(
        data(&other.recv_event("herald:recovery").await)["recovered"],
        false
    );
}

#[tokio::test]
async fn resume_on_one_node() {
    let h = Herald::start_with("", &apps()).await;
    resume_cases(std::slice::from_ref(&h)).await;
}

#[tokio::test]
async fn resume_across_nodes_on_redis() {
    let redis = Redis::start().await;
    let cfg = redis_bus(&redis.url());
    let a = Herald::start_node("hist-a", "", &cfg).await;
    let b = Herald::start_node("hist-b", "", &cfg).await;
    resume_cases(&[a, b]).await;
}

#[tokio::test]
async fn resume_across_nodes_on_redis_cluster() {
    let cluster = RedisCluster::start().await;
    let seeds: Vec<String> = cluster.urls().iter().map(|u| format!("\"{u}\"")).collect();
    let cfg = format!(
        "[bus]\ndriver = \"redis\"\ncluster_urls = [{}]\nlease_seconds = 2\n{}",
        seeds.join(", "),
        apps()
    );
    let a = Herald::start_node("histc-a", "", &cfg).await;
    let b = Herald::start_node("histc-b", "", &cfg).await;
    resume_cases(&[a, b]).await;
}

/// Redis restarted empty: the stream and its epoch are gone, a returning client is told it
/// was not recovered, and live events flow again.
#[tokio::test]
async fn redis_restarted_empty_is_not_recovered() {
    let mut redis = Redis::start().await;
    let cfg = redis_bus(&redis.url());
    let a = Herald::start_node("empty-a", "", &cfg).await;
    let mut c = a.client().await;
    let ok = subscribe_at(&mut c, "orders.1", None).await;
    let epoch = ok["position"]["epoch"].as_str().unwrap().to_owned();
    publish(&a, "orders.1", "e1").await;
    events(&mut c, 1).await;
    redis.restart().await;
    // Published after the restart: a new stream, with a new epoch.
    publish_when_ready(&a, "orders.1", "e-new").await;
    let mut ready = false;
    for _ in 0..100 {
        if a.admin_get("/readyz").await.0 == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready);
    // The node may notice the restart a moment after: wait until it publishes again.
    let mut back = a.client().await;
    subscribe_at(
        &mut back,
        "orders.1",
        Some(json!({"epoch": epoch, "offset": 1})),
    )
    .await;
    let verdict = data(&back.recv_event("herald:recovery").await);
    assert_eq!(verdict["recovered"], false);
    assert_eq!(verdict["reason"], "epoch_changed");
    publish_when_ready(&a, "orders.1", "after").await;
    assert_eq!(back.recv_event("e").await["data"], "after");
}

/// A node's own connections to Redis cut while another publishes every 30 ms on a history
/// channel: the publishes the cut node missed (answered 504) reach its client all the same,
/// from the stream, with every other event, once each and in order.
#[tokio::test]
async fn a_node_catches_up_what_it_missed() {
    let redis = Redis::start().await;
    let proxy = Proxy::start(redis.port).await;
    let a = Herald::start_node("gap-a", "", &redis_bus(&redis.url())).await;
    let b = Herald::start_node(
        "gap-b",
        "",
        &redis_bus(&format!("redis://127.0.0.1:{}", proxy.port)),
    )
    .await;
    let mut on_b = b.client().await;
    subscribe_at(&mut on_b, "orders.big.gap", None).await;
    let api = a.api();
    let publishing = tokio::spawn(async move {
        let mut sent = Vec::new();
        for i in 1..=100 {
            let (status, _) = api
                .trigger(&["orders.big.gap"], "e", &i.to_string(), None)
                .await;
            sent.push((i, status));
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        sent
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    proxy.cut();
    let sent = publishing.await.unwrap();
    let kept: Vec<String> = sent
        .iter()
        .filter(|(_, s)| matches!(s, 200 | 504))
        .map(|(i, _)| i.to_string())
        .collect();
    let missed = sent.iter().filter(|(_, s)| *s == 504).count();
    let got: Vec<String> = events(&mut on_b, kept.len())
        .await
        .into_iter()
        .map(|(d, _)| d)
        .collect();
    assert_eq!(got, kept, "every kept event, once, in order");
    on_b.expect_silence(Duration::from_millis(300)).await;
    eprintln!(
        "{} published, {missed} answered 504 while the node was cut off, all delivered",
        kept.len()
    );
    assert!(b.metric("herald_history_caught_up_events_total").await >= 0.0);
}

/// The same cut, on a channel that keeps only 5 events while 30 or so are missed: the node
/// cannot fill the gap, so instead of a silent gap its clients of the channel are asked to
/// reconnect (4200), after which a resuming client is told it was not recovered.
#[tokio::test]
async fn a_gap_the_stream_cannot_fill_makes_clients_reconnect() {
    let redis = Redis::start().await;
    let proxy = Proxy::start(redis.port).await;
    let a = Herald::start_node("gap2-a", "", &redis_bus(&redis.url())).await;
    let b = Herald::start_node(
        "gap2-b",
        "",
        &redis_bus(&format!("redis://127.0.0.1:{}", proxy.port)),
    )
    .await;
    let mut on_b = b.client().await;
    subscribe_at(&mut on_b, "orders.small", None).await;
    publish(&a, "orders.small", "before").await;
    assert_eq!(events(&mut on_b, 1).await[0].0, "before");
    proxy.cut();
    for i in 0..40 {
        a.api()
            .trigger(&["orders.small"], "e", &i.to_string(), None)
            .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (code, _) = on_b.expect_close().await;
    assert_eq!(code, 4200);
}

/// The node a client was on is killed (SIGKILL); events are published while the client is
/// away; it comes back through another node and resumes: every missed event, in order.
#[tokio::test]
async fn resume_on_another_node_after_a_node_is_killed() {
    let redis = Redis::start().await;
    let cfg = redis_bus(&redis.url());
    let mut a = Herald::start_node("k9h-a", "", &cfg).await;
    let b = Herald::start_node("k9h-b", "", &cfg).await;
    let mut c = a.client().await;
    let ok = subscribe_at(&mut c, "orders.k9", None).await;
    let epoch = ok["position"]["epoch"].as_str().unwrap().to_owned();
    publish(&b, "orders.k9", "seen").await;
    let (_, offset) = events(&mut c, 1).await.remove(0);
    a.kill9();
    for i in 0..4 {
        publish_when_ready(&b, "orders.k9", &format!("missed-{i}")).await;
    }
    let mut back = b.client().await;
    subscribe_at(
        &mut back,
        "orders.k9",
        Some(json!({"epoch": epoch, "offset": offset})),
    )
    .await;
    assert_eq!(
        data(&back.recv_event("herald:recovery").await),
        json!({"recovered": true, "replayed": 4})
    );
    let got: Vec<String> = events(&mut back, 4)
        .await
        .into_iter()
        .map(|(d, _)| d)
        .collect();
    assert_eq!(got, ["missed-0", "missed-1", "missed-2", "missed-3"]);
}

/// Hundreds of clients subscribing to one history channel at the same moment, as after a
/// deploy: every one is answered and gets the next event. (Two subscribes racing took the
/// channel's stream and subscriber locks in opposite orders and hung the node for good.)
#[tokio::test]
async fn simultaneous_subscribes_to_a_history_channel() {
    let h = Herald::start_with("", &apps()).await;
    let mut clients = Vec::new();
    for _ in 0..300 {
        clients.push(h.client().await);
    }
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(clients.len()));
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                c.send(json!({"event":"pusher:subscribe","data":{"channel":"orders.rush"}}))
                    .await;
                loop {
                    match c.next_within(Duration::from_secs(10)).await {
                        Event::Text(v)
                            if v["event"] == "pusher_internal:subscription_succeeded" =>
                        {
                            return Some(c)
                        }
                        Event::Text(_) => {}
                        _ => return None,
                    }
                }
            })
        })
        .collect();
    let mut subscribed = Vec::new();
    for t in tasks {
        subscribed.extend(t.await.unwrap());
    }
    assert_eq!(subscribed.len(), 300, "subscribes answered (the node hung)");
    publish(&h, "orders.rush", "after").await;
    for c in &mut subscribed {
        assert_eq!(data(&c.recv_event("e").await), json!("after"));
    }
}
