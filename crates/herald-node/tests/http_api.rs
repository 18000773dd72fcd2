//! End-to-end: the HTTP API of the real `herald` binary, signed as the official SDKs sign.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use serde_json::json;

#[tokio::test]
async fn trigger_with_info_and_batch() {
    let h = Herald::start().await;
    let mut a = h.client().await;
    a.subscribe("a").await;
    a.subscribe_presence("presence-p", "u1").await;
    let api = h.api();
    let body = json!({"name":"e","channels":["a","presence-p","empty"],"data":"d","info":"subscription_count,user_count"});
    let (status, res) = api.call("POST", "/events", &[], &body.to_string()).await;
    assert_eq!(status, 200);
    assert_eq!(
        res,
        json!({"channels":{"a":{"subscription_count":1},"presence-p":{"subscription_count":1,"user_count":1},"empty":{"subscription_count":0}}})
    );
    assert_eq!(a.recv().await["channel"], "a");
    assert_eq!(a.recv().await["channel"], "presence-p");

    let batch = json!({"batch":[
        {"name":"b1","channel":"a","data":"1"},
        {"name":"b2","channel":"presence-p","data":"2","info":"user_count"}
    ]});
    let (status, res) = api
        .call("POST", "/batch_events", &[], &batch.to_string())
        .await;
    assert_eq!((status, res), (200, json!({"batch":[{},{"user_count":1}]})));
    assert_eq!(a.recv().await["event"], "b1");
    assert_eq!(a.recv().await["event"], "b2");
    let (status, res) = api
        .call(
            "POST",
            "/batch_events",
            &[],
            &json!({"batch":[{"name":"b3","channel":"a","data":"3"}]}).to_string(),
        )
        .await;
    assert_eq!((status, res), (200, json!({})));
}

#[tokio::test]
async fn trigger_validation_statuses() {
    let h = Herald::start().await;
    let api = h.api();
    let big = json!({"name":"e","channel":"a","data":"x".repeat(10_241)}).to_string();
    assert_eq!(api.call("POST", "/events", &[], &big).await.0, 413);
    let ok_size = json!({"name":"e","channel":"a","data":"x".repeat(10_240)}).to_string();
    assert_eq!(api.call("POST", "/events", &[], &ok_size).await.0, 200);
    let channels: Vec<String> = (0..101).map(|i| format!("c{i}")).collect();
    let (status, body) = api
        .call(
            "POST",
            "/events",
            &[],
            &json!({"name":"e","channels":channels,"data":"x"}).to_string(),
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("Too many channels"),
        "{body}"
    );
    let batch: Vec<_> = (0..11)
        .map(|_| json!({"name":"e","channel":"a","data":"x"}))
        .collect();
    assert_eq!(
        api.call(
            "POST",
            "/batch_events",
            &[],
            &json!({"batch":batch}).to_string()
        )
        .await
        .0,
        400
    );
    for bad in [
        "not json".to_owned(),
        json!({"name":"e","channels":["private-encrypted-a","b"],"data":"x"}).to_string(),
        json!({"name":"e","channel":"bad name","data":"x"}).to_string(),
        json!({"name":"e","channel":"a","data":"x","socket_id":"abc"}).to_string(),
        json!({"name":"e".repeat(201),"channel":"a","data":"x"}).to_string(),
        json!({"channel":"a","data":"x"}).to_string(),
    ] {
        let (status, body) = api.call("POST", "/events", &[], &bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body["error"].is_string());
    }
}

#[tokio::test]
async fn authentication_failures() {
    let h = Herald::start().await;
    let body = json!({"name":"e","channel":"a","data":"x"}).to_string();
    // Wrong secret.
    let wrong = Api {
        secret: "nope".into(),
        ..h.api()
    };
    let (status, res) = wrong.call("POST", "/events", &[], &body).await;
    assert_eq!(status, 401);
    assert!(
        res["error"].as_str().unwrap().contains("Invalid signature"),
        "{res}"
    );
    // Another app's credentials on this app's path.
    let foreign = Api {
        key: "key2".into(),
        secret: "secret2".into(),
        ..h.api()
    };
    assert_eq!(foreign.call("POST", "/events", &[], &body).await.0, 401);
    // Expired and future timestamps.
    let (status, res) = h
        .api()
        .call_at("POST", "/events", &[], &body, now() - 700)
        .await;
    assert_eq!(status, 401);
    assert!(
        res["error"]
            .as_str()
            .unwrap()
            .starts_with("Timestamp expired"),
        "{res}"
    );
    assert_eq!(
        h.api()
            .call_at("POST", "/events", &[], &body, now() + 700)
            .await
            .0,
        401
    );
    // A body that does not match body_md5.
    let q = herald_protocol::api_auth::signed_query(
        KEY,
        SECRET,
        "POST",
        "/apps/app1/events",
        &[],
        body.as_bytes(),
        now(),
    );
    let (status, _) = http(
        h.port,
        "POST",
        &format!("/apps/app1/events?{q}"),
        Bytes::from(body.replace("x", "y")),
    )
    .await;
    assert_eq!(status, 401);
    // No signature at all.
    assert_eq!(
        http(h.port, "GET", "/apps/app1/channels", Bytes::new())
            .await
            .0,
        401
    );
    // Unknown app, unknown route, wrong method.
    let other = Api {
        app: "nope".into(),
        ..h.api()
    };
    assert_eq!(other.call("POST", "/events", &[], &body).await.0, 404);
    assert_eq!(h.api().call("GET", "/nothing", &[], "").await.0, 404);
    assert_eq!(h.api().call("GET", "/events", &[], "").await.0, 405);
    // body_md5 on a GET (as pusher-http-python sends it) is accepted.
    let (status, _) = h
        .api()
        .call(
            "GET",
            "/channels",
            &[("body_md5", "d41d8cd98f00b204e9800998ecf8427e")],
            "",
        )
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn channel_queries() {
    let h = Herald::start().await;
    let mut a = h.client().await;
    let mut b = h.client().await;
    a.subscribe("news").await;
    a.subscribe("other").await;
    b.subscribe("news").await;
    a.subscribe_presence("presence-room", "1").await;
    b.subscribe_presence("presence-room", "2").await;
    let api = h.api();

    let (s, res) = api.call("GET", "/channels", &[], "").await;
    assert_eq!(
        (s, res),
        (
            200,
            json!({"channels":{"news":{},"other":{},"presence-room":{}}})
        )
    );
    let (s, res) = api
        .call(
            "GET",
            "/channels",
            &[("filter_by_prefix", "presence-"), ("info", "user_count")],
            "",
        )
        .await;
    assert_eq!(
        (s, res),
        (200, json!({"channels":{"presence-room":{"user_count":2}}}))
    );
    assert_eq!(
        api.call("GET", "/channels", &[("info", "user_count")], "")
            .await
            .0,
        400
    );
    let (_, res) = api
        .call(
            "GET",
            "/channels",
            &[("filter_by_prefix", "ne"), ("info", "subscription_count")],
            "",
        )
        .await;
    assert_eq!(res, json!({"channels":{"news":{"subscription_count":2}}}));

    let (s, res) = api
        .call(
            "GET",
            "/channels/news",
            &[("info", "subscription_count")],
            "",
        )
        .await;
    assert_eq!(
        (s, res),
        (200, json!({"occupied":true,"subscription_count":2}))
    );
    let (s, res) = api.call("GET", "/channels/empty", &[], "").await;
    assert_eq!((s, res), (200, json!({"occupied":false})));
    assert_eq!(
        api.call("GET", "/channels/news", &[("info", "user_count")], "")
            .await
            .0,
        400
    );
    assert_eq!(
        api.call("GET", "/channels/news", &[("info", "cache")], "")
            .await
            .0,
        400
    );
    assert_eq!(
        api.call("GET", "/channels/bad%20name", &[], "").await.0,
        400
    );

    assert_eq!(
        api.call("GET", "/channels/news/users", &[], "").await.0,
        400
    );
    let (s, res) = api
        .call("GET", "/channels/presence-empty/users", &[], "")
        .await;
    assert_eq!((s, res), (200, json!({"users":[]})));

    // Counts follow unsubscribes and disconnects.
    drop(b);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, res) = api
        .call(
            "GET",
            "/channels/news",
            &[("info", "subscription_count")],
            "",
        )
        .await;
    assert_eq!(res, json!({"occupied":true,"subscription_count":1}));
    let (_, res) = api
        .call(
            "GET",
            "/channels/presence-room",
            &[("info", "user_count")],
            "",
        )
        .await;
    assert_eq!(res, json!({"occupied":true,"user_count":1}));
}

fn signin_frame(socket_id: &str, user_data: &str) -> serde_json::Value {
    let sig = herald_protocol::signature::sign(
        SECRET,
        format!("{socket_id}::user::{user_data}").as_bytes(),
    );
    json!({"event":"pusher:signin","data":{"auth":format!("{KEY}:{sig}"),"user_data":user_data}})
}

#[tokio::test]
async fn signin_server_to_user_and_terminate() {
    let h = Herald::start().await;
    let api = h.api();
    let mut a = h.client().await;
    let mut a2 = h.client().await;
    let mut other = h.client().await;
    let user = r#"{"id":"u1","user_info":{"name":"A"}}"#;
    for c in [&mut a, &mut a2] {
        let sid = c.socket_id.clone();
        c.send(signin_frame(&sid, user)).await;
        let ok = c.recv().await;
        assert_eq!(
            ok,
            json!({"event":"pusher:signin_success","data":{"user_data":user}})
        );
        // pusher-js then subscribes to its user channel.
        assert_eq!(
            c.subscribe("#server-to-user-u1").await["event"],
            "pusher_internal:subscription_succeeded"
        );
    }
    // Forged sign-in and someone else's user channel.
    let sid = other.socket_id.clone();
    let mut forged = signin_frame(&sid, user);
    forged["data"]["user_data"] = json!(r#"{"id":"admin"}"#);
    other.send(forged).await;
    assert!(other.recv().await["data"]["message"]
        .as_str()
        .unwrap()
        .starts_with("Invalid signature"));
    other
        .send(json!({"event":"pusher:subscribe","data":{"channel":"#server-to-user-u1","auth":""}}))
        .await;
    assert_eq!(other.recv().await["event"], "pusher:error");
    assert_eq!(other.recv().await["event"], "pusher:subscription_error");
    // Re-signing as another user is refused.
    let sid = a.socket_id.clone();
    a.send(signin_frame(&sid, r#"{"id":"u2"}"#)).await;
    assert!(a.recv().await["data"]["message"]
        .as_str()
        .unwrap()
        .contains("already signed in"));

    // Server-to-user reaches both of u1's connections, not the other.
    let (s, _) = api
        .trigger(&["#server-to-user-u1"], "notice", "hi", None)
        .await;
    assert_eq!(s, 200);
    for c in [&mut a, &mut a2] {
        assert_eq!(
            c.recv().await,
            json!({"event":"notice","channel":"#server-to-user-u1","data":"hi"})
        );
    }
    other.expect_silence(Duration::from_millis(200)).await;

    // Terminate an unknown user: 200 {} and nothing closes.
    let (s, res) = api
        .call("POST", "/users/nobody/terminate_connections", &[], "{}")
        .await;
    assert_eq!((s, res), (200, json!({})));
    other.expect_silence(Duration::from_millis(200)).await;
    // Terminate u1: both of its connections close; the other stays.
    let (s, res) = api
        .call("POST", "/users/u1/terminate_connections", &[], "{}")
        .await;
    assert_eq!((s, res), (200, json!({})));
    for c in [&mut a, &mut a2] {
        assert_eq!(c.expect_close().await.0, herald_hub_terminate_code());
    }
    other.send(json!({"event":"pusher:ping","data":{}})).await;
    assert_eq!(other.recv().await["event"], "pusher:pong");
}

fn herald_hub_terminate_code() -> u16 {
    4200
}

#[tokio::test]
async fn presence_member_from_signin() {
    let h = Herald::start().await;
    let mut a = h.client().await;
    let sid = a.socket_id.clone();
    a.send(signin_frame(
        &sid,
        r#"{"id":"7","user_info":{"name":"Seven"}}"#,
    ))
    .await;
    a.recv_event("pusher:signin_success").await;
    // Presence subscribe without channel_data: the signature covers socket_id:channel.
    a.send(json!({"event":"pusher:subscribe","data":{"channel":"presence-x","auth":auth(&sid,"presence-x",None)}})).await;
    let ok = a.recv_event("pusher_internal:subscription_succeeded").await;
    assert_eq!(data(&ok)["presence"]["hash"]["7"]["name"], "Seven");
}

#[tokio::test]
async fn health_and_metrics() {
    let h = Herald::start().await;
    let mut a = h.client().await;
    a.subscribe("m").await;
    h.api().trigger(&["m"], "e", "x", None).await;
    a.recv().await;
    assert_eq!(h.admin_get("/healthz").await.0, 200);
    let (s, body) = h.admin_get("/readyz").await;
    assert_eq!(
        (s, body.as_str()),
        (200, r#"{"apps_store":"ok","ready":true}"#)
    );
    let (s, metrics) = h.admin_get("/metrics").await;
    assert_eq!(s, 200);
    for name in [
        "herald_connections{app=\"app1\"} 1",
        "herald_subscriptions 1",
        "herald_api_requests_total{endpoint=\"events\",status=\"200\"}",
        "herald_messages_sent_total{kind=\"event\"}",
        "herald_publish_delivery_seconds_bucket",
        "herald_ready 1",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    assert!(!metrics.contains("secret1"));
}

#[tokio::test]
async fn check_config_names_the_bad_key() {
    let dir = tempdir::Dir::new();
    let good = dir.0.join("good.toml");
    std::fs::write(&good, "[server]\nlisten = \"127.0.0.1:8080\"\n[[apps]]\nid = \"a\"\nkey = \"k\"\nsecret = \"s\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("check-config")
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration OK: 1 app(s)"));
    let bad = dir.0.join("bad.toml");
    std::fs::write(
        &bad,
        "[server]\nlisten = \"127.0.0.1:8080\"\nlisen_port = 1\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("check-config")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("lisen_port"), "{err}");
    // Starting with a bad file fails the same way, before listening.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("--config")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test]
async fn terminate_without_the_apps_prefix_as_pusher_http_python_sends_it() {
    let h = Herald::start().await;
    let mut c = h.client().await;
    c.signin_as(KEY, SECRET, r#"{"id":"py"}"#).await;
    let path = "/users/py/terminate_connections";
    let q = herald_protocol::api_auth::signed_query(KEY, SECRET, "POST", path, &[], b"{}", now());
    let (status, body) = http(
        h.port,
        "POST",
        &format!("{path}?{q}"),
        Bytes::from_static(b"{}"),
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "{}"));
    assert_eq!(c.expect_close().await.0, 4200);
    // Signed with another key's secret: refused.
    let q = herald_protocol::api_auth::signed_query(KEY, "wrong", "POST", path, &[], b"{}", now());
    assert_eq!(
        http(
            h.port,
            "POST",
            &format!("{path}?{q}"),
            Bytes::from_static(b"{}")
        )
        .await
        .0,
        401
    );
    assert_eq!(
        http(h.port, "POST", "/apps//events", Bytes::new()).await.0,
        404
    );
}
