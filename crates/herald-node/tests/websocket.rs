//! End-to-end: the real `herald` binary driven by a Rust WebSocket client.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use fastwebsockets::{Frame, OpCode, Payload};
use serde_json::json;

#[tokio::test]
async fn handshake_sends_socket_id_and_activity_timeout() {
    let h = Herald::start().await;
    let mut c = h.ws(KEY).await;
    let hello = c.recv().await;
    assert_eq!(hello["event"], "pusher:connection_established");
    let d = data(&hello);
    assert_eq!(d["activity_timeout"], 120);
    let sid = d["socket_id"].as_str().unwrap();
    let (a, b) = sid.split_once('.').unwrap();
    assert!(
        a.bytes().all(|c| c.is_ascii_digit()) && b.bytes().all(|c| c.is_ascii_digit()),
        "{sid}"
    );
    c.send(json!({"event":"pusher:ping","data":{}})).await;
    assert_eq!(c.recv().await["event"], "pusher:pong");
}

#[tokio::test]
async fn refused_connections_get_the_official_codes() {
    let h = Herald::start().await;
    // Unknown key → 4001.
    let mut c = h.ws("nope").await;
    let (code, before) = c.expect_close().await;
    assert_eq!(code, 4001);
    assert_eq!(before[0]["event"], "pusher:error");
    assert_eq!(before[0]["data"]["code"], 4001);
    // Protocol versions.
    for (q, want) in [("protocol=3", 4007), ("protocol=abc", 4006)] {
        let mut c = Client::connect(h.port, &format!("/app/{KEY}?{q}"), None).await;
        assert_eq!(c.expect_close().await.0, want, "{q}");
    }
    // Origin allowlist of app2 → 4009; an allowed origin connects.
    let mut c = Client::connect(h.port, "/app/key2?protocol=7", Some("https://evil.example")).await;
    assert_eq!(c.expect_close().await.0, 4009);
    let mut ok1 = Client::connect(
        h.port,
        "/app/key2?protocol=7",
        Some("https://allowed.example"),
    )
    .await;
    assert_eq!(ok1.recv().await["event"], "pusher:connection_established");
    // app2 allows 2 connections → the third gets 4004.
    let mut ok2 = Client::connect(
        h.port,
        "/app/key2?protocol=7",
        Some("https://allowed.example"),
    )
    .await;
    assert_eq!(ok2.recv().await["event"], "pusher:connection_established");
    let mut over = Client::connect(
        h.port,
        "/app/key2?protocol=7",
        Some("https://allowed.example"),
    )
    .await;
    let (code, before) = over.expect_close().await;
    assert_eq!(code, 4004);
    assert_eq!(before[0]["data"]["code"], 4004);
    // Closing one frees a place.
    ok1.send_frame(Frame::close(1000, b"")).await;
    let _ = ok1.expect_close().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut again = Client::connect(
        h.port,
        "/app/key2?protocol=7",
        Some("https://allowed.example"),
    )
    .await;
    assert_eq!(again.recv().await["event"], "pusher:connection_established");
}

#[tokio::test]
async fn node_connection_limit_gives_4100() {
    let h = Herald::start_with("max_connections = 1", &default_apps()).await;
    let _first = h.client().await;
    let mut second = h.ws(KEY).await;
    assert_eq!(second.expect_close().await.0, 4100);
}

#[tokio::test]
async fn public_subscribe_publish_and_exclusion() {
    let h = Herald::start().await;
    let mut a = h.client().await;
    let mut b = h.client().await;
    for c in [&mut a, &mut b] {
        let ok = c.subscribe("news").await;
        assert_eq!(
            ok,
            json!({"event":"pusher_internal:subscription_succeeded","channel":"news","data":"{}"})
        );
    }
    let (status, body) = h
        .api()
        .trigger(&["news"], "update", r#"{"n":1}"#, None)
        .await;
    assert_eq!((status, body), (200, json!({})));
    for c in [&mut a, &mut b] {
        assert_eq!(
            c.recv().await,
            json!({"event":"update","channel":"news","data":"{\"n\":1}"})
        );
    }
    // socket_id exclusion: a does not get it, b does.
    let (status, _) = h
        .api()
        .trigger(&["news"], "update", "2", Some(&a.socket_id.clone()))
        .await;
    assert_eq!(status, 200);
    assert_eq!(b.recv().await["data"], "2");
    a.expect_silence(Duration::from_millis(300)).await;
    // Unsubscribe: nothing more arrives, and the server sends nothing back.
    b.send(json!({"event":"pusher:unsubscribe","data":{"channel":"news"}}))
        .await;
    b.expect_silence(Duration::from_millis(200)).await;
    h.api().trigger(&["news"], "update", "3", None).await;
    assert_eq!(a.recv().await["data"], "3");
    b.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn private_channels_check_signatures() {
    let h = Herald::start().await;
    let mut a = h.client().await;
    assert_eq!(
        a.subscribe_private("private-x").await["event"],
        "pusher_internal:subscription_succeeded"
    );
    // No auth, another socket's signature, another app's secret, another key.
    let mut b = h.client().await;
    let forged = [
        json!({"channel":"private-x","auth":""}),
        json!({"channel":"private-x","auth": auth(&a.socket_id, "private-x", None)}),
        json!({"channel":"private-x","auth": format!("{KEY}:{}", herald_protocol::signature::sign("secret2", format!("{}:private-x", b.socket_id).as_bytes()))}),
        json!({"channel":"private-x","auth": format!("key2:{}", herald_protocol::signature::sign(SECRET, format!("{}:private-x", b.socket_id).as_bytes()))}),
    ];
    for data in forged {
        b.send(json!({"event":"pusher:subscribe","data":data}))
            .await;
        let err = b.recv().await;
        assert_eq!(err["event"], "pusher:error", "{err}");
        assert!(err["data"]["code"].is_null());
        let sub_err = b.recv().await;
        assert_eq!(sub_err["event"], "pusher:subscription_error");
        assert_eq!(sub_err["channel"], "private-x");
        assert_eq!(sub_err["data"]["type"], "AuthError");
    }
    // b is not subscribed: a trigger reaches a only. And b still works.
    h.api().trigger(&["private-x"], "e", "x", None).await;
    assert_eq!(a.recv().await["event"], "e");
    b.expect_silence(Duration::from_millis(200)).await;
    assert_eq!(
        b.subscribe_private("private-x").await["event"],
        "pusher_internal:subscription_succeeded"
    );
}

#[tokio::test]
async fn presence_two_users_two_sockets_each() {
    let h = Herald::start().await;
    let ch = "presence-room";
    let mut u1a = h.client().await;
    let mut u1b = h.client().await;
    let mut u2a = h.client().await;
    let mut u2b = h.client().await;

    let ok = u1a.subscribe_presence(ch, "1").await;
    let p = data(&ok)["presence"].clone();
    assert_eq!(p["count"], 1);
    assert_eq!(p["ids"], json!(["1"]));
    assert_eq!(p["hash"]["1"]["name"], "user 1");

    // Same user, second socket: no member_added for anyone.
    let ok = u1b.subscribe_presence(ch, "1").await;
    assert_eq!(data(&ok)["presence"]["count"], 1);
    u1a.expect_silence(Duration::from_millis(200)).await;

    // User 2 joins: member_added once to each existing socket.
    let ok = u2a.subscribe_presence(ch, "2").await;
    assert_eq!(data(&ok)["presence"]["count"], 2);
    for c in [&mut u1a, &mut u1b] {
        let added = c.recv().await;
        assert_eq!(added["event"], "pusher_internal:member_added");
        assert_eq!(
            data(&added),
            json!({"user_id":"2","user_info":{"name":"user 2"}})
        );
    }
    u2b.subscribe_presence(ch, "2").await;
    for c in [&mut u1a, &mut u1b, &mut u2a] {
        c.expect_silence(Duration::from_millis(200)).await;
    }

    // API view.
    let (status, users) = h
        .api()
        .call("GET", &format!("/channels/{ch}/users"), &[], "")
        .await;
    assert_eq!(status, 200);
    let mut ids: Vec<String> = users["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    assert_eq!(ids, vec!["1", "2"]);
    let (_, info) = h
        .api()
        .call(
            "GET",
            &format!("/channels/{ch}"),
            &[("info", "user_count,subscription_count")],
            "",
        )
        .await;
    assert_eq!(
        info,
        json!({"occupied":true,"user_count":2,"subscription_count":4})
    );

    // User 1 leaves one socket: nothing; then the last: member_removed once.
    u1a.send(json!({"event":"pusher:unsubscribe","data":{"channel":ch}}))
        .await;
    for c in [&mut u2a, &mut u2b, &mut u1b] {
        c.expect_silence(Duration::from_millis(200)).await;
    }
    drop(u1b); // disconnect without unsubscribing
    for c in [&mut u2a, &mut u2b] {
        let removed = c.recv().await;
        assert_eq!(removed["event"], "pusher_internal:member_removed");
        assert_eq!(data(&removed), json!({"user_id":"1"}));
    }
    u1a.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn presence_limits() {
    let apps = format!("{}\n[[apps]]\nid = \"app5\"\nkey = \"key5\"\nsecret = \"secret5\"\nmax_presence_members = 1\n", default_apps());
    let h = Herald::start_with("", &apps).await;
    let mut c = h.client().await;
    // user_info over 1 KB.
    let big = json!({"user_id":"1","user_info":{"x":"y".repeat(1100)}}).to_string();
    c.send(json!({"event":"pusher:subscribe","data":{"channel":"presence-a","auth":auth(&c.socket_id,"presence-a",Some(&big)),"channel_data":big}})).await;
    assert_eq!(c.recv().await["event"], "pusher:error");
    assert_eq!(c.recv().await["data"]["type"], "LimitReached");
    // Bad channel_data.
    let bad = r#"{"user_info":{}}"#;
    c.send(json!({"event":"pusher:subscribe","data":{"channel":"presence-a","auth":auth(&c.socket_id,"presence-a",Some(bad)),"channel_data":bad}})).await;
    assert_eq!(c.recv().await["event"], "pusher:error");
    assert_eq!(c.recv().await["event"], "pusher:subscription_error");
    drop(c);

    // app5 caps presence channels at one user.
    let mut a = Client::connect(h.port, "/app/key5?protocol=7", None).await;
    let sa = data(&a.recv().await)["socket_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut b = Client::connect(h.port, "/app/key5?protocol=7", None).await;
    let sb = data(&b.recv().await)["socket_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let sign = |sid: &str, d: &str| {
        format!(
            "key5:{}",
            herald_protocol::signature::sign("secret5", format!("{sid}:presence-a:{d}").as_bytes())
        )
    };
    let d1 = r#"{"user_id":"1"}"#;
    a.send(json!({"event":"pusher:subscribe","data":{"channel":"presence-a","auth":sign(&sa,d1),"channel_data":d1}})).await;
    assert_eq!(
        a.recv().await["event"],
        "pusher_internal:subscription_succeeded"
    );
    let d2 = r#"{"user_id":"2"}"#;
    b.send(json!({"event":"pusher:subscribe","data":{"channel":"presence-a","auth":sign(&sb,d2),"channel_data":d2}})).await;
    let err = b.recv().await;
    assert!(
        err["data"]["message"].as_str().unwrap().contains("is full"),
        "{err}"
    );
    assert_eq!(b.recv().await["data"]["type"], "LimitReached");
}

#[tokio::test]
async fn client_events_rules() {
    let h = Herald::start().await;
    let mut a = h.client().await;
    let mut b = h.client().await;
    a.subscribe_private("private-chat").await;
    b.subscribe_private("private-chat").await;
    a.send(json!({"event":"client-typing","channel":"private-chat","data":{"who":"a"}}))
        .await;
    assert_eq!(
        b.recv().await,
        json!({"event":"client-typing","channel":"private-chat","data":"{\"who\":\"a\"}"})
    );
    a.expect_silence(Duration::from_millis(200)).await; // never echoed

    // Presence: user_id added.
    a.subscribe_presence("presence-chat", "alice").await;
    b.subscribe_presence("presence-chat", "bob").await;
    a.recv_event("pusher_internal:member_added").await;
    b.send(json!({"event":"client-hi","channel":"presence-chat","data":"raw"}))
        .await;
    let got = a.recv().await;
    assert_eq!(
        got,
        json!({"event":"client-hi","channel":"presence-chat","data":"raw","user_id":"bob"})
    );

    // Public channel, not subscribed, encrypted, bad name: rejected with a clear error.
    a.subscribe("public").await;
    for (ev, ch, want) in [
        (
            "client-x",
            "public",
            "only supported on private and presence",
        ),
        ("client-x", "private-other", "not subscribed"),
        ("client-x", "private-encrypted-x", "encrypted"),
        ("typing", "private-chat", "must start with client-"),
    ] {
        a.send(json!({"event":ev,"channel":ch,"data":{}})).await;
        let err = a.recv().await;
        assert_eq!(err["event"], "pusher:error");
        assert!(
            err["data"]["message"].as_str().unwrap().contains(want),
            "{err}"
        );
    }
    // Data over 10 KB.
    a.send(json!({"event":"client-big","channel":"private-chat","data":"x".repeat(10_241)}))
        .await;
    assert!(a.recv().await["data"]["message"]
        .as_str()
        .unwrap()
        .contains("over the limit"));
    b.expect_silence(Duration::from_millis(200)).await;

    // Rate limit: 10 per second, then 4301 without closing.
    for i in 0..12 {
        a.send(json!({"event":"client-n","channel":"private-chat","data":{"i":i}}))
            .await;
    }
    let mut limited = 0;
    for _ in 0..2 {
        let err = a.recv().await;
        assert_eq!(err["data"]["code"], 4301, "{err}");
        limited += 1;
    }
    assert_eq!(limited, 2);
    for _ in 0..10 {
        assert_eq!(b.recv().await["event"], "client-n");
    }
    a.send(json!({"event":"pusher:ping","data":{}})).await;
    assert_eq!(a.recv().await["event"], "pusher:pong");
}

#[tokio::test]
async fn client_events_disabled_per_app() {
    let h = Herald::start().await;
    let mut c = Client::connect(
        h.port,
        "/app/key2?protocol=7",
        Some("https://allowed.example"),
    )
    .await;
    let sid = data(&c.recv().await)["socket_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let a = format!(
        "key2:{}",
        herald_protocol::signature::sign("secret2", format!("{sid}:private-a").as_bytes())
    );
    c.send(json!({"event":"pusher:subscribe","data":{"channel":"private-a","auth":a}}))
        .await;
    assert_eq!(
        c.recv().await["event"],
        "pusher_internal:subscription_succeeded"
    );
    c.send(json!({"event":"client-x","channel":"private-a","data":{}}))
        .await;
    let err = c.recv().await;
    assert!(
        err["data"]["message"]
            .as_str()
            .unwrap()
            .contains("not enabled"),
        "{err}"
    );
}

#[tokio::test]
async fn bad_input_gets_errors_and_others_keep_working() {
    let h = Herald::start().await;
    let mut bystander = h.client().await;
    bystander.subscribe("steady").await;
    let mut c = h.client().await;
    c.subscribe("dup").await;
    let long_channel = "x".repeat(201);
    let long_event = format!("client-{}", "e".repeat(200));
    let cases: Vec<(String, &str)> = vec![
        ("{not json".into(), "Invalid JSON"),
        (
            r#"{"event":"pusher:bogus","data":{}}"#.into(),
            "Unsupported event",
        ),
        (
            r#"{"event":"pusher:subscribe","data":{"channel":42}}"#.into(),
            "must be a string",
        ),
        (
            r#"{"event":"pusher:subscribe","data":"[]"}"#.into(),
            "must be an object",
        ),
        (r#"{"event":["x"]}"#.into(), "Invalid message format"),
        (
            json!({"event":"pusher:subscribe","data":{"channel":long_channel}}).to_string(),
            "over the limit of 200",
        ),
        (
            json!({"event":long_event,"channel":"private-a","data":{}}).to_string(),
            "over the limit of 200",
        ),
        (
            r#"{"event":"pusher:subscribe","data":{"channel":"dup"}}"#.into(),
            "Existing subscription to channel dup",
        ),
        (
            r##"{"event":"pusher:subscribe","data":{"channel":"#server-to-user-1"}}"##.into(),
            "not signed in",
        ),
    ];
    for (input, want) in cases {
        c.send_text(&input).await;
        let err = c.recv().await;
        assert_eq!(err["event"], "pusher:error", "{input}: {err}");
        assert!(
            err["data"]["message"].as_str().unwrap().contains(want),
            "{input}: {err}"
        );
        // A channel-scoped error may follow for subscription failures.
        if let common::Event::Text(v) = c.next_within(Duration::from_millis(100)).await {
            assert_eq!(v["event"], "pusher:subscription_error", "{v}");
        }
    }
    // Binary frames: an error, the connection stays.
    c.send_frame(Frame::binary(Payload::Borrowed(b"{}"))).await;
    assert!(c.recv().await["data"]["message"]
        .as_str()
        .unwrap()
        .contains("Binary frames"));
    c.send(json!({"event":"pusher:ping","data":{}})).await;
    assert_eq!(c.recv().await["event"], "pusher:pong");

    // Invalid UTF-8 → close 1007.
    let mut u = h.client().await;
    u.send_frame(Frame::new(
        true,
        OpCode::Text,
        None,
        Payload::Borrowed(&[0x7b, 0xff, 0xfe, 0x7d]),
    ))
    .await;
    assert_eq!(u.expect_close().await.0, 1007);
    // A message over the limit (32 KiB) → close 1009.
    let mut big = h.client().await;
    big.send_text(&format!(
        r#"{{"event":"client-x","channel":"private-a","data":"{}"}}"#,
        "x".repeat(40_000)
    ))
    .await;
    assert_eq!(big.expect_close().await.0, 1009);

    // The bystander still gets its messages.
    h.api().trigger(&["steady"], "still", "ok", None).await;
    assert_eq!(bystander.recv().await["event"], "still");
}

#[tokio::test]
async fn silent_client_is_pinged_then_closed_with_4201() {
    let h = Herald::start_with("activity_timeout = 1\npong_timeout = 1", &default_apps()).await;
    // A client that answers protocol pings stays; one that does not is closed with 4201 after
    // activity + pong timeout.
    let mut alive = h.client().await;
    let mut silent =
        Client::connect_with(h.port, &format!("/app/{KEY}?protocol=7"), None, false).await;
    assert_eq!(
        silent.recv().await["event"],
        "pusher:connection_established"
    );
    let started = std::time::Instant::now();
    let (closed, alive_saw) = tokio::join!(
        silent.expect_close(),
        alive.next_within(Duration::from_millis(3500))
    );
    let (code, before) = closed;
    assert_eq!(code, 4201);
    assert_eq!(before.last().unwrap()["data"]["code"], 4201);
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    assert!(
        matches!(alive_saw, common::Event::Timeout),
        "the responsive client should stay open: {alive_saw:?}"
    );
}

#[tokio::test]
async fn sigterm_drains_with_4200() {
    let h = Herald::start_with("drain_window = 1\ndrain_deadline = 3", &default_apps()).await;
    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(h.client().await);
    }
    let started = std::time::Instant::now();
    h.sigterm();
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let (code, before) = c.expect_close().await;
                (code, before, started.elapsed())
            })
        })
        .collect();
    let mut times = Vec::new();
    for t in tasks {
        let (code, before, at) = t.await.unwrap();
        assert_eq!(code, 4200);
        assert_eq!(before.last().unwrap()["data"]["code"], 4200);
        times.push(at);
    }
    times.sort();
    // Spread over the window, not all at once.
    assert!(
        times[times.len() - 1] - times[0] >= Duration::from_millis(400),
        "{times:?}"
    );
    let mut h = h;
    let status = tokio::task::spawn_blocking(move || {
        let s = h.child.wait();
        (s, h)
    })
    .await
    .unwrap();
    assert!(status.0.unwrap().success());
}
