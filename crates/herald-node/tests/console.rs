//! The debug console's server side, end to end: the real `herald` binary (one node, and two
//! nodes on a real Redis), its admin port read as the console's page reads it (the token as a
//! bearer header, the feed as server-sent events), real WebSocket clients and API calls making
//! the activity. (The page itself is tested in a headless Chromium: `tests/console/`.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::admin::admin as call;
use common::hooks::Receiver;
use common::redis::Redis;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

const TOKEN: &str = "console-token-for-tests";

fn admin(token: &str) -> String {
    format!("[admin]\ntoken = \"{token}\"\n")
}

async fn get(node: &Herald, path: &str) -> (u16, Value) {
    call(node.admin_port, "GET", path, Some(TOKEN), "").await
}

/// An open feed: its records as they arrive.
struct Feed {
    rx: mpsc::UnboundedReceiver<Value>,
}

impl Feed {
    async fn open(node: &Herald, app: &str, payloads: bool) -> Feed {
        let stream = TcpStream::connect(("127.0.0.1", node.admin_port))
            .await
            .unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let p = if payloads { "&payloads=1" } else { "" };
        let req = Request::builder()
            .uri(format!("/console/api/feed?app={app}{p}"))
            .header("Host", "127.0.0.1")
            .header("Authorization", format!("Bearer {TOKEN}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let res = sender.send_request(req).await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["content-type"], "text/event-stream");
        let (tx, rx) = mpsc::unbounded_channel();
        let mut body = res.into_body();
        tokio::spawn(async move {
            let mut buf = String::new();
            while let Some(Ok(frame)) = body.frame().await {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                buf.push_str(&String::from_utf8_lossy(&data));
                while let Some(end) = buf.find("\n\n") {
                    let event: String = buf.drain(..end + 2).collect();
                    if let Some(json) = event.strip_prefix("data: ") {
                        let _ = tx.send(serde_json::from_str(json.trim()).unwrap());
                    }
                }
            }
        });
        // The watch is registered when the response starts; across nodes it reaches the others
        // within their next refresh (2 s).
        Feed { rx }
    }

    /// The first record for which `pred` holds, within 8 s.
    async fn expect(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(r)) if pred(&r) => return r,
                Ok(Some(_)) => {}
                Ok(None) => panic!("feed ended before {what}"),
                Err(_) => panic!("no {what} within 8 s"),
            }
        }
    }
}

#[tokio::test]
async fn the_console_is_off_without_a_token_and_shut_without_the_right_one() {
    let off = Herald::start().await;
    let (status, _) = call(off.admin_port, "GET", "/console", None, "").await;
    assert_eq!(status, 404);
    let (status, _) = call(off.admin_port, "GET", "/console/api/apps", Some(TOKEN), "").await;
    assert_eq!(status, 404, "no token configured: no console at all");

    let on = Herald::start_with("", &format!("{}{}", admin(TOKEN), default_apps())).await;
    let (status, page) = call(on.admin_port, "GET", "/console", None, "").await;
    assert_eq!(status, 200);
    assert!(
        page.as_str().unwrap().contains("<html"),
        "the page itself is public"
    );
    for token in [None, Some("wrong-token-of-some-length"), Some("")] {
        let (status, body) = call(on.admin_port, "GET", "/console/api/apps", token, "").await;
        assert_eq!(status, 401, "{token:?}");
        assert!(body["error"].as_str().unwrap().contains("token"), "{body}");
        let (status, _) = call(
            on.admin_port,
            "POST",
            "/console/api/publish",
            token,
            r#"{"app":"app1","channel":"c","event":"e","data":"{}"}"#,
        )
        .await;
        assert_eq!(status, 401, "publish without the token");
    }
    let (status, apps) = get(&on, "/console/api/apps").await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = apps["apps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["app1", "app2", "app3", "app4"]);
    assert!(
        apps["apps"][0].get("secret").is_none(),
        "secrets never leave: {apps}"
    );
    let (status, _) = get(&on, "/console/api/feed?app=nope").await;
    assert_eq!(status, 404);
}

/// One node: every kind of record, payloads only when asked for, publishing from the console
/// reaching a subscriber, and webhook outcomes.
#[tokio::test]
async fn the_feed_shows_what_happens_on_a_node() {
    let hooks = Receiver::start(0).await;
    let apps = format!(
        "{}{}\n[[apps]]\nid = \"hooked\"\nkey = \"hkey\"\nsecret = \"hsecret\"\n\n[[apps.webhooks]]\nurl = \"{}\"\nevent_types = [\"channel_occupied\"]\n",
        admin(TOKEN),
        default_apps(),
        hooks.url()
    );
    let h = Herald::start_with("", &apps).await;
    let mut plain = Feed::open(&h, "app1", false).await;
    let mut full = Feed::open(&h, "app1", true).await;

    let mut c = h.client().await;
    let sid = c.socket_id.clone();
    let opened = plain
        .expect("connection_opened", |r| r["type"] == "connection_opened")
        .await;
    assert_eq!(opened["socket_id"], sid.as_str());
    assert_eq!(opened["node"], "test-node");
    assert_eq!(opened["app"], "app1");

    c.subscribe_private("private-room").await;
    let sub = plain
        .expect("subscribed", |r| r["type"] == "subscribed")
        .await;
    assert_eq!(sub["channel"], "private-room");
    c.send(
        json!({"event":"pusher:subscribe","data":{"channel":"private-forged","auth":"key1:0000"}}),
    )
    .await;
    let refused = plain
        .expect("refusal", |r| r["type"] == "subscription_refused")
        .await;
    assert_eq!(refused["channel"], "private-forged");
    assert_eq!(refused["status"], 401, "{refused}");

    let (status, _) = h
        .api()
        .trigger(
            &["private-room"],
            "greeting",
            r#"{"secret":"payload"}"#,
            None,
        )
        .await;
    assert_eq!(status, 200);
    let event = plain
        .expect("api_event", |r| r["type"] == "api_event")
        .await;
    assert_eq!(
        (event["channel"].as_str(), event["event"].as_str()),
        (Some("private-room"), Some("greeting"))
    );
    assert_eq!(event["sockets"], 1);
    assert_eq!(event["size"], r#"{"secret":"payload"}"#.len());
    assert!(
        event.get("data").is_none(),
        "no payload unless asked: {event}"
    );
    let event = full.expect("api_event", |r| r["type"] == "api_event").await;
    assert_eq!(event["data"], r#"{"secret":"payload"}"#);

    c.send(json!({"event":"client-typing","channel":"private-room","data":{"x":1}}))
        .await;
    let ce = full
        .expect("client_event", |r| r["type"] == "client_event")
        .await;
    assert_eq!(ce["socket_id"], sid.as_str());
    assert_eq!(ce["event"], "client-typing");

    // Publishing from the console goes the API's way, to the subscriber.
    let (status, body) = call(
        h.admin_port,
        "POST",
        "/console/api/publish",
        Some(TOKEN),
        r#"{"app":"app1","channel":"private-room","event":"from-console","data":"{\"n\":1}"}"#,
    )
    .await;
    assert_eq!((status, body), (200, json!({})));
    let got = c.recv_event("from-console").await;
    assert_eq!(data(&got), json!({"n": 1}));
    let (status, body) = call(
        h.admin_port,
        "POST",
        "/console/api/publish",
        Some(TOKEN),
        r#"{"app":"app1","channel":"bad channel","event":"e","data":"{}"}"#,
    )
    .await;
    assert_eq!(status, 400, "{body}");

    let (_, stats) = get(&h, "/console/api/stats?app=app1").await;
    assert_eq!(stats["connections"], 1, "{stats}");
    assert_eq!(
        stats["channels"],
        json!([{"name": "private-room", "subscription_count": 1}])
    );
    assert_eq!(stats["nodes"][0]["id"], "test-node");

    drop(c);
    let closed = plain
        .expect("connection_closed", |r| r["type"] == "connection_closed")
        .await;
    assert_eq!(closed["socket_id"], sid.as_str());

    // Webhooks: the delivery and its status.
    let mut hooked = Feed::open(&h, "hooked", false).await;
    let mut c2 = h.client_of("hkey").await;
    c2.subscribe("hooked-channel").await;
    let hook = hooked
        .expect("webhook", |r| {
            r["type"] == "webhook" && r["channel"] == "hooked-channel"
        })
        .await;
    assert_eq!(
        (hook["event"].as_str(), hook["outcome"].as_str()),
        (Some("channel_occupied"), Some("delivered"))
    );
    assert_eq!(hook["status"], 200);
}

/// Two nodes on Redis: a console on one node sees connections, subscriptions and events of
/// the other; stats count both nodes; members come from Redis; the console publishes to a
/// subscriber on the other node.
#[tokio::test]
async fn a_console_on_one_node_sees_the_whole_cluster() {
    let redis = Redis::start().await;
    let cfg = format!(
        "[bus]\ndriver = \"redis\"\nurl = \"{}\"\nlease_seconds = 2\n{}{}",
        redis.url(),
        admin(TOKEN),
        default_apps()
    );
    let a = Herald::start_node("console-a", "", &cfg).await;
    let b = Herald::start_node("console-b", "", &cfg).await;
    let mut feed = Feed::open(&a, "app1", true).await;
    // A tells the other nodes at once that app1 is now watched (not at their 2 s refresh).
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut on_b = b.client().await;
    let opened = feed
        .expect("B's connection", |r| r["type"] == "connection_opened")
        .await;
    assert_eq!(opened["node"], "console-b");
    assert_eq!(opened["socket_id"], on_b.socket_id.as_str());
    on_b.subscribe_presence("presence-room", "ada").await;
    let sub = feed
        .expect("B's subscription", |r| r["type"] == "subscribed")
        .await;
    assert_eq!(
        (sub["node"].as_str(), sub["channel"].as_str()),
        (Some("console-b"), Some("presence-room"))
    );

    let (status, _) = b
        .api()
        .trigger(&["presence-room"], "news", r#"{"n":2}"#, None)
        .await;
    assert_eq!(status, 200);
    let event = feed
        .expect("B's API event", |r| {
            r["type"] == "api_event" && r["event"] == "news"
        })
        .await;
    assert_eq!(event["node"], "console-b");
    assert_eq!(event["data"], r#"{"n":2}"#);

    // Other nodes' connections as of their last report (every 2 s).
    let started = Instant::now();
    let stats = loop {
        let (_, stats) = get(&a, "/console/api/stats?app=app1").await;
        if stats["connections"] == 1 {
            break stats;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "B's connection not counted on A: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut nodes: Vec<&str> = stats["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap())
        .collect();
    nodes.sort_unstable();
    assert_eq!(nodes, ["console-a", "console-b"], "{stats}");
    assert_eq!(
        stats["channels"],
        json!([{"name": "presence-room", "subscription_count": 1, "user_count": 1}])
    );
    let (_, members) = get(&a, "/console/api/members?app=app1&channel=presence-room").await;
    assert_eq!(
        members,
        json!({"members": [{"id": "ada", "info": {"name": "user ada"}}]})
    );

    let (status, _) = call(
        a.admin_port,
        "POST",
        "/console/api/publish",
        Some(TOKEN),
        r#"{"app":"app1","channel":"presence-room","event":"from-a","data":"{}"}"#,
    )
    .await;
    assert_eq!(status, 200);
    on_b.recv_event("from-a").await;

    // A's own records come back on the console topic: shown once all the same.
    let on_a = a.client().await;
    let sid = on_a.socket_id.clone();
    feed.expect("A's connection", |r| {
        r["type"] == "connection_opened" && r["socket_id"] == sid.as_str()
    })
    .await;
    let again = tokio::time::timeout(
        Duration::from_secs(1),
        feed.expect("a duplicate", |r| r["socket_id"] == sid.as_str()),
    )
    .await;
    assert!(again.is_err(), "A's record shown twice: {again:?}");
}

/// A console that stops reading is dropped; the node's clients get every event meanwhile.
#[tokio::test]
async fn a_console_that_does_not_read_is_dropped_and_nobody_else_waits() {
    let h = Herald::start_with("", &format!("{}{}", admin(TOKEN), default_apps())).await;
    // Open the feed and never read it.
    let mut stream = TcpStream::connect(("127.0.0.1", h.admin_port))
        .await
        .unwrap();
    stream
        .write_all(
            format!(
                "GET /console/api/feed?app=app1&payloads=1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(h.metric("herald_console_feeds").await, 1.0);

    // A subscriber that reads everything, counting until the last event.
    let mut c = h.client().await;
    c.subscribe("busy").await;
    let reader = tokio::spawn(async move {
        let mut got = 0u32;
        loop {
            let frame = c.recv().await;
            match frame["event"].as_str() {
                Some("e") => got += 1,
                Some("last") => return got,
                _ => {}
            }
        }
    });
    let payload = format!("\"{}\"", "x".repeat(8000));
    let started = Instant::now();
    let mut sent = 0u32;
    while h.metric("herald_console_feeds").await > 0.0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the console was not dropped"
        );
        for _ in 0..50 {
            let (status, _) = h.api().trigger(&["busy"], "e", &payload, None).await;
            assert_eq!(status, 200);
            sent += 1;
        }
    }
    let (status, _) = h.api().trigger(&["busy"], "last", "{}", None).await;
    assert_eq!(status, 200);
    let got = tokio::time::timeout(Duration::from_secs(20), reader)
        .await
        .expect("the subscriber got the last event")
        .unwrap();
    assert_eq!(got, sent, "every event reached the subscriber");
    drop(stream);
}
