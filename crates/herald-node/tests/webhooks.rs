//! End-to-end webhooks: a real receiver on 127.0.0.1, the real `herald` binary (one node, and
//! two nodes on a real Redis).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::hooks::Receiver;
use common::redis::Redis;
use common::*;
use serde_json::{json, Value};

fn apps_with_hooks(url: &str) -> String {
    format!(
        "{}\n[[apps]]\nid = \"hooked\"\nkey = \"hkey\"\nsecret = \"hsecret\"\n\n[[apps.webhooks]]\nurl = \"{url}\"\n",
        default_apps()
    )
}

fn is(name: &'static str, channel: &'static str) -> impl Fn(&Value) -> bool {
    move |e: &Value| e["name"] == name && e["channel"] == channel
}

const WAIT: Duration = Duration::from_secs(6);

#[tokio::test]
async fn webhooks_are_signed_and_cover_every_event() {
    let hooks = Receiver::start(0).await;
    let h = Herald::start_with("", &apps_with_hooks(&hooks.url())).await;
    let mut a = h.client_of("hkey").await;
    let mut b = h.client_of("hkey").await;

    a.subscribe("lobby").await;
    hooks
        .wait_for("channel_occupied", WAIT, is("channel_occupied", "lobby"))
        .await;

    // Presence: member_added, then member_removed 3 s after the last socket left.
    let data = r#"{"user_id":"7"}"#;
    let sign = |sid: &str, ch: &str, d: Option<&str>| {
        let input = match d {
            Some(d) => format!("{sid}:{ch}:{d}"),
            None => format!("{sid}:{ch}"),
        };
        format!(
            "hkey:{}",
            herald_protocol::signature::sign("hsecret", input.as_bytes())
        )
    };
    let sid = a.socket_id.clone();
    a.send(json!({"event":"pusher:subscribe","data":{"channel":"presence-room","auth":sign(&sid,"presence-room",Some(data)),"channel_data":data}})).await;
    a.recv_event("pusher_internal:subscription_succeeded").await;
    let added = hooks
        .wait_for("member_added", WAIT, is("member_added", "presence-room"))
        .await;
    assert_eq!(added["user_id"], "7");

    // Client event on a private channel, with socket_id.
    for c in [&mut a, &mut b] {
        let sid = c.socket_id.clone();
        c.send(json!({"event":"pusher:subscribe","data":{"channel":"private-chat","auth":sign(&sid,"private-chat",None)}})).await;
        c.recv_event("pusher_internal:subscription_succeeded").await;
    }
    a.send(json!({"event":"client-typing","channel":"private-chat","data":{"x":1}}))
        .await;
    let ce = hooks
        .wait_for("client_event", WAIT, is("client_event", "private-chat"))
        .await;
    assert_eq!(
        ce,
        json!({"name":"client_event","channel":"private-chat","event":"client-typing","data":"{\"x\":1}","socket_id":a.socket_id})
    );

    // cache_miss, once for two subscribers.
    a.subscribe("cache-empty").await;
    b.subscribe("cache-empty").await;
    hooks
        .wait_for("cache_miss", WAIT, is("cache_miss", "cache-empty"))
        .await;

    // Leaving and coming back within 3 s: neither vacated nor a second occupied.
    a.send(json!({"event":"pusher:unsubscribe","data":{"channel":"lobby"}}))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.subscribe("lobby").await;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(hooks.count(is("channel_vacated", "lobby")), 0);
    assert_eq!(hooks.count(is("channel_occupied", "lobby")), 1);
    assert_eq!(hooks.count(is("cache_miss", "cache-empty")), 1);

    // Leaving for good: vacated and member_removed about 3 s later.
    drop(a);
    let left = std::time::Instant::now();
    hooks
        .wait_for("channel_vacated", WAIT, is("channel_vacated", "lobby"))
        .await;
    let removed = hooks
        .wait_for(
            "member_removed",
            WAIT,
            is("member_removed", "presence-room"),
        )
        .await;
    assert_eq!(removed["user_id"], "7");
    assert!(
        left.elapsed() >= Duration::from_millis(2500),
        "{:?}",
        left.elapsed()
    );

    // Every request: exact content type, the app key, a valid signature, a time_ms.
    let got = hooks.got.lock().clone();
    assert!(!got.is_empty());
    for r in got {
        assert_eq!(r.content_type, "application/json");
        assert_eq!(r.key, "hkey");
        assert_eq!(
            r.signature,
            herald_protocol::signature::sign("hsecret", r.body.as_bytes())
        );
        assert!(r.json["time_ms"].as_u64().unwrap() > 1_600_000_000_000);
    }
    // Apps without webhooks send none: app1 traffic produced nothing.
    let mut other = h.client().await;
    other.subscribe("not-hooked").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(hooks.count(|e| e["channel"] == "not-hooked"), 0);
}

#[tokio::test]
async fn failed_deliveries_are_retried() {
    let hooks = Receiver::start(2).await;
    let h = Herald::start_with("", &apps_with_hooks(&hooks.url())).await;
    let mut a = h.client_of("hkey").await;
    a.subscribe("retry-me").await;
    hooks
        .wait_for(
            "channel_occupied after retries",
            Duration::from_secs(10),
            is("channel_occupied", "retry-me"),
        )
        .await;
    assert_eq!(hooks.refused.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[tokio::test]
async fn cluster_webhooks_are_sent_once() {
    let hooks = Receiver::start(0).await;
    let redis = Redis::start().await;
    let bus = format!(
        "[bus]\ndriver = \"redis\"\nurl = \"{}\"\nlease_seconds = 2\n{}",
        redis.url(),
        apps_with_hooks(&hooks.url())
    );
    let a = Herald::start_node("hook-a", "", &bus).await;
    let mut b = Herald::start_node("hook-b", "", &bus).await;
    let mut on_a = a.client_of("hkey").await;
    let mut on_b = b.client_of("hkey").await;
    on_a.subscribe("shared").await;
    on_b.subscribe("shared").await;
    hooks
        .wait_for("channel_occupied", WAIT, is("channel_occupied", "shared"))
        .await;
    // A presence member on B; B dies: the survivor reports member_removed.
    let data = r#"{"user_id":"ghost"}"#;
    let sig = herald_protocol::signature::sign(
        "hsecret",
        format!("{}:presence-c:{data}", on_b.socket_id).as_bytes(),
    );
    on_b.send(json!({"event":"pusher:subscribe","data":{"channel":"presence-c","auth":format!("hkey:{sig}"),"channel_data":data}})).await;
    on_b.recv_event("pusher_internal:subscription_succeeded")
        .await;
    hooks
        .wait_for("member_added", WAIT, is("member_added", "presence-c"))
        .await;
    b.kill9();
    let removed = hooks
        .wait_for(
            "member_removed",
            Duration::from_secs(10),
            is("member_removed", "presence-c"),
        )
        .await;
    assert_eq!(removed["user_id"], "ghost");
    drop(on_a);
    hooks
        .wait_for(
            "channel_vacated",
            Duration::from_secs(10),
            is("channel_vacated", "shared"),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(hooks.count(is("channel_occupied", "shared")), 1);
    assert_eq!(hooks.count(is("channel_vacated", "shared")), 1);
    assert_eq!(hooks.count(is("member_added", "presence-c")), 1);
    assert_eq!(hooks.count(is("member_removed", "presence-c")), 1);
}
