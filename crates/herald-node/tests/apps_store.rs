//! Apps as data, on real databases (Postgres 15 and MariaDB, the same cases on each), two real
//! nodes on a real Redis sharing one database: `herald migrate` twice; an app created through
//! node A's admin API serves connections and API calls on node B within 2 s; a rotated secret
//! works on B at once and the old one only for the grace; a flag turned off applies to the next
//! client event of an open connection; disabled and deleted apps close open connections on both
//! nodes (4003, 4001) and refuse new ones and API calls.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::admin::*;
use common::db::{Db, Driver};
use common::redis::Redis;
use common::*;
use serde_json::{json, Value};

/// The rotation grace of these tests, in seconds.
const GRACE: u64 = 4;
const PROPAGATION: Duration = Duration::from_secs(2);
const SECRET1: &str = "live-secret-one-0123";
const SECRET2: &str = "live-secret-two-4567";

#[tokio::test]
async fn lifecycle_on_postgres() {
    lifecycle(Driver::Postgres).await;
}

#[tokio::test]
async fn lifecycle_on_mariadb() {
    lifecycle(Driver::MariaDb).await;
}

/// Subscribes `c` to a private channel signed with `secret`; the answer.
async fn subscribe_signed(c: &mut Client, channel: &str, secret: &str) -> Value {
    let auth = auth_with("live-key", secret, &c.socket_id, channel);
    c.send(json!({"event":"pusher:subscribe","data":{"channel":channel,"auth":auth}}))
        .await;
    // Events of other channels may be on the way; the answer is Pusher's own.
    loop {
        let v = c.recv().await;
        if v["event"]
            .as_str()
            .unwrap_or_default()
            .starts_with("pusher")
        {
            return v;
        }
    }
}

/// Sends a client event; whether the server refused it because client events are off.
async fn client_event_refused(c: &mut Client, channel: &str) -> bool {
    c.send(json!({"event":"client-typing","channel":channel,"data":{}}))
        .await;
    match c.next_within(Duration::from_millis(200)).await {
        Event::Text(v) if v["event"] == "pusher:error" => {
            let m = v["data"]["message"].as_str().unwrap_or_default().to_owned();
            assert!(m.contains("not enabled"), "{v}");
            true
        }
        Event::Text(v) => panic!("unexpected {v}"),
        Event::Timeout => false,
        Event::Close(code, why) => panic!("closed {code} {why}"),
    }
}

async fn lifecycle(driver: Driver) {
    let db = Db::start(driver).await;
    let redis = Redis::start().await;
    let rest = store_config(&db, &db.url(), &redis.url(), GRACE);

    // herald migrate: the table, and the file's [[apps]] imported once; twice is a no-op.
    let imported =
        "\n[[apps]]\nid = \"imported\"\nkey = \"imported-key\"\nsecret = \"imported-secret\"\n";
    let (ok, out, err) = migrate(&format!("{rest}{imported}")).await;
    assert!(ok && out.contains("1 app(s) imported"), "{out}{err}");
    let (ok, out, err) = migrate(&format!("{rest}{imported}")).await;
    assert!(ok && out.contains("0 app(s) imported"), "{out}{err}");
    assert_eq!(db.sql("SELECT count(*) FROM herald_apps"), "1");

    let a = Herald::start_node("node-a", "", &rest).await;
    let b = Herald::start_node("node-b", "", &rest).await;
    connect_within(&b, "imported-key", PROPAGATION).await;

    // Created through A: connections and the API on B within 2 s.
    let created = Instant::now();
    let (status, body) = put_app(&a, "live", json!({"key": "live-key", "secret": SECRET1})).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["app"]["secret"], "live…", "{body}");
    assert!(!body.to_string().contains(SECRET1), "{body}");
    let (mut on_b, _) = connect_within(&b, "live-key", PROPAGATION).await;
    on_b.subscribe("news").await;
    let old = api_of(&b, "live", "live-key", SECRET1);
    assert_eq!(old.trigger(&["news"], "hello", "1", None).await.0, 200);
    on_b.recv_event("hello").await;
    let create_took = created.elapsed();
    assert!(create_took < PROPAGATION, "{create_took:?}");
    let (mut on_a, _) = connect_within(&a, "live-key", PROPAGATION).await;
    on_a.subscribe("news").await;

    // Rotated through A: the new secret works on B within 2 s, the old one for the grace.
    let rotated = Instant::now();
    let (status, body) = put_app(&a, "live", json!({"key": "live-key", "secret": SECRET2})).await;
    assert_eq!((status, &body["created"]), (200, &json!(false)), "{body}");
    assert!(body["app"]["previous_secret_until"].is_u64(), "{body}");
    let new = api_of(&b, "live", "live-key", SECRET2);
    let new_api = &new;
    let rotate_took = within(PROPAGATION, "the new secret works on B", || async move {
        new_api.trigger(&["news"], "rotated", "x", None).await.0 == 200
    })
    .await;
    on_a.recv_event("rotated").await;
    assert_eq!(old.trigger(&["news"], "old", "x", None).await.0, 200);
    let ok = subscribe_signed(&mut on_b, "private-old", SECRET1).await;
    assert_eq!(
        ok["event"], "pusher_internal:subscription_succeeded",
        "{ok}"
    );
    assert!(
        rotated.elapsed() < Duration::from_secs(GRACE - 1),
        "the grace checks ran late"
    );
    tokio::time::sleep_until((rotated + Duration::from_secs(GRACE + 2)).into()).await;
    let (status, body) = old.trigger(&["news"], "old", "x", None).await;
    assert_eq!(status, 401, "{body}");
    let refused_auth = subscribe_signed(&mut on_b, "private-late", SECRET1).await;
    assert_eq!(refused_auth["event"], "pusher:error", "{refused_auth}");
    let scoped = on_b.recv_event("pusher:subscription_error").await;
    assert_eq!(data(&scoped)["status"], 401, "{scoped}");
    assert_eq!(new.trigger(&["news"], "new", "x", None).await.0, 200);

    // A flag turned off applies to the next client event of an open connection.
    let ok = subscribe_signed(&mut on_b, "private-room", SECRET2).await;
    assert_eq!(
        ok["event"], "pusher_internal:subscription_succeeded",
        "{ok}"
    );
    let ok = subscribe_signed(&mut on_a, "private-room", SECRET2).await;
    assert_eq!(
        ok["event"], "pusher_internal:subscription_succeeded",
        "{ok}"
    );
    assert!(!client_event_refused(&mut on_b, "private-room").await);
    on_a.recv_event("client-typing").await;
    let (status, _) = put_app(
        &a,
        "live",
        json!({"key": "live-key", "secret": SECRET2, "client_events": false}),
    )
    .await;
    assert_eq!(status, 200);
    let flagged = Instant::now();
    while !client_event_refused(&mut on_b, "private-room").await {
        assert!(flagged.elapsed() < PROPAGATION, "client events still on");
    }
    let flag_took = flagged.elapsed();

    // Disabled: open connections on both nodes closed with 4003, new ones and the API refused.
    let disabled = Instant::now();
    let off = json!({"key": "live-key", "secret": SECRET2, "enabled": false});
    assert_eq!(put_app(&a, "live", off).await.0, 200);
    assert_eq!(on_a.expect_close().await.0, 4003);
    assert_eq!(on_b.expect_close().await.0, 4003);
    let disable_took = disabled.elapsed();
    assert!(disable_took < PROPAGATION, "{disable_took:?}");
    assert_eq!(
        refused(&b, "live-key").await,
        (4003, "App disabled".to_owned())
    );
    let (status, body) = new.trigger(&["news"], "e", "x", None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("App live is disabled"))
    );
    let publish = json!({"app": "live", "channel": "news", "event": "e", "data": "x"});
    let (status, _) = admin(
        b.admin_port,
        "POST",
        "/console/api/publish",
        Some(ADMIN_TOKEN),
        &publish.to_string(),
    )
    .await;
    assert_eq!(
        status, 403,
        "the console publishes nothing for a disabled app"
    );

    // Enabled again, then deleted: 4001 on both nodes, then unknown.
    let on = json!({"key": "live-key", "secret": SECRET2});
    assert_eq!(put_app(&a, "live", on).await.0, 200);
    let (mut on_a, _) = connect_within(&a, "live-key", PROPAGATION).await;
    let (mut on_b, _) = connect_within(&b, "live-key", PROPAGATION).await;
    let deleted = Instant::now();
    assert_eq!(delete_app(&a, "live").await.0, 200);
    assert_eq!(on_a.expect_close().await.0, 4001);
    assert_eq!(on_b.expect_close().await.0, 4001);
    let delete_took = deleted.elapsed();
    assert!(delete_took < PROPAGATION, "{delete_took:?}");
    assert_eq!(refused(&b, "live-key").await.0, 4001);
    assert_eq!(new.trigger(&["news"], "e", "x", None).await.0, 404);
    assert_eq!(delete_app(&a, "live").await.0, 404);

    // A row written by hand with a bad value: listed with the reason, served by no node.
    db.sql(
        "INSERT INTO herald_apps (id, app_key, secret, max_connections) \
         VALUES ('broken', 'broken-key', 'broken-secret-0123', -5)",
    );
    assert_eq!(refused(&b, "broken-key").await.0, 4001);
    // What the admin API lists: the store's apps, secrets masked.
    let (status, list) = admin(b.admin_port, "GET", "/admin/apps", Some(ADMIN_TOKEN), "").await;
    assert_eq!(status, 200);
    assert_eq!(list["driver"], driver.name());
    let ids: Vec<&str> = list["apps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["imported"]);
    assert_eq!(list["invalid"][0]["id"], "broken", "{list}");
    let why = list["invalid"][0]["error"].as_str().unwrap();
    assert!(why.starts_with("max_connections"), "{why}");
    assert!(!list.to_string().contains("imported-secret"), "{list}");
    println!(
        "{driver:?}: created→served on B {create_took:?}, rotation on B {rotate_took:?}, \
         flag on B {flag_took:?}, disable→closed on both {disable_took:?}, \
         delete→closed on both {delete_took:?}"
    );
}

/// Admin API requests that fail name what is wrong: the field, the token, the method.
#[tokio::test]
async fn admin_api_refusals_on_postgres() {
    let db = Db::start(Driver::Postgres).await;
    let redis = Redis::start().await;
    let rest = store_config(&db, &db.url(), &redis.url(), GRACE);
    assert!(migrate(&rest).await.0);
    let a = Herald::start_logged("", &rest).await;
    let app = |extra: Value| {
        let mut v = json!({"key": "k1", "secret": "secret-one-0123"});
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        v
    };
    for (body, field) in [
        (app(json!({"max_connections": "many"})), "max_connections"),
        (app(json!({"client_event": true})), "client_event"),
        (
            app(json!({"webhooks": [{"url": "ftp://x"}]})),
            "webhooks[0].url",
        ),
        (app(json!({"id": "other"})), "id"),
        (json!({"key": "k1"}), "secret"),
    ] {
        let (status, answer) = put_app(&a, "one", body.clone()).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(
            answer["error"].as_str().unwrap().contains(field),
            "{answer}"
        );
    }
    let (status, answer) = put_app(&a, "bad%20id", app(json!({}))).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(put_app(&a, "one", app(json!({}))).await.0, 201);
    // A key another app uses.
    let (status, answer) = put_app(&a, "two", app(json!({}))).await;
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("key"),
        "{answer}"
    );
    let path = "/admin/apps/one";
    assert_eq!(admin(a.admin_port, "GET", path, None, "").await.0, 401);
    assert_eq!(
        admin(a.admin_port, "GET", path, Some("wrong-token-0123456"), "")
            .await
            .0,
        401
    );
    let (status, got) = admin(a.admin_port, "GET", path, Some(ADMIN_TOKEN), "").await;
    assert_eq!(
        (status, got["app"]["secret"].as_str()),
        (200, Some("secr…"))
    );
    assert_eq!(
        admin(a.admin_port, "POST", path, Some(ADMIN_TOKEN), "")
            .await
            .0,
        405
    );
    let big = format!("{{\"key\": \"{}\"}}", "k".repeat(70_000));
    assert_eq!(
        admin(a.admin_port, "PUT", path, Some(ADMIN_TOKEN), &big)
            .await
            .0,
        413
    );
    // The table holds the secret for the nodes; the node's log (info level) never shows it.
    assert_eq!(
        db.sql("SELECT secret FROM herald_apps WHERE id = 'one'"),
        "secret-one-0123"
    );
    let log = a.stdout();
    assert!(log.contains("app created through the admin API"), "{log}");
    assert!(!log.contains("secret-one-0123"), "{log}");
}
