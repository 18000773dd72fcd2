//! Apps that change while the hub runs (in-process bus): open connections see new settings at
//! their next operation; disabled and removed apps close their connections with 4003 and
//! 4001; a full replacement removes what it leaves out; a key change moves the lookup; a
//! rotated-out secret verifies channel auth only during its grace.

use std::sync::Arc;

use herald_hub::{App, Apps, Cluster, Hub, HubConfig, PreviousSecret, Session, Upserted};
use herald_protocol::signature::{channel_auth_input, sign};
use herald_protocol::SocketId;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

fn hub() -> Arc<Hub> {
    Hub::new(
        HubConfig {
            node_id: "n1".into(),
            outbox_bytes: 1 << 20,
        },
        Apps::new([App::new("app", "key", "secret")]),
        Cluster::local(),
        TaskTracker::new(),
        CancellationToken::new(),
    )
}

fn session(hub: &Arc<Hub>, n: u64) -> Session {
    let app = hub.app_by_key("key").expect("app");
    let conn = hub.connect(SocketId::from_parts(1, n), app);
    let s = Session::start(hub.clone(), conn, 120);
    drain(&s);
    s
}

fn drain(s: &Session) -> Vec<Value> {
    let mut out = Vec::new();
    s.connection().outbox.drain(&mut out);
    out.iter()
        .map(|b| serde_json::from_slice(b).expect("json"))
        .collect()
}

fn close_code(s: &Session) -> Option<u16> {
    let mut out = Vec::new();
    s.connection().outbox.drain(&mut out).map(|c| c.code)
}

async fn send(s: &mut Session, v: Value) {
    let mut bytes = v.to_string().into_bytes();
    s.on_text(&mut bytes).await;
}

async fn subscribe_private(s: &mut Session, channel: &str, secret: &str) -> Vec<Value> {
    let input = channel_auth_input(s.connection().socket_id, channel, None);
    let auth = format!("key:{}", sign(secret, input.as_bytes()));
    send(
        s,
        json!({"event":"pusher:subscribe","data":{"channel":channel,"auth":auth}}),
    )
    .await;
    drain(s)
}

fn changed(hub: &Hub, f: impl FnOnce(&mut App)) -> Upserted {
    let mut app = (*hub.app_by_id("app").expect("app")).clone();
    f(&mut app);
    hub.upsert_app(app)
}

#[tokio::test]
async fn a_changed_flag_applies_to_the_next_client_event_of_an_open_connection() {
    let hub = hub();
    let mut a = session(&hub, 1);
    let mut b = session(&hub, 2);
    for s in [&mut a, &mut b] {
        let got = subscribe_private(s, "private-c", "secret").await;
        assert_eq!(got[0]["event"], "pusher_internal:subscription_succeeded");
    }
    let event = json!({"event":"client-x","channel":"private-c","data":{}});
    send(&mut a, event.clone()).await;
    assert_eq!(drain(&b).len(), 1);
    assert_eq!(
        changed(&hub, |app| app.client_events = false),
        Upserted::Changed
    );
    send(&mut a, event.clone()).await;
    assert!(drain(&b).is_empty());
    let refused = drain(&a);
    assert!(
        refused[0]["data"]["message"]
            .as_str()
            .expect("message")
            .contains("not enabled"),
        "{refused:?}"
    );
    // The same settings again change nothing.
    assert_eq!(
        changed(&hub, |app| app.client_events = false),
        Upserted::Unchanged
    );
    // A lower rate applies from the next event on.
    changed(&hub, |app| {
        app.client_events = true;
        app.client_event_rate = 2;
    });
    for _ in 0..5 {
        send(&mut a, event.clone()).await;
    }
    assert_eq!(drain(&b).len(), 2);
}

#[tokio::test]
async fn disabled_and_removed_apps_close_their_connections() {
    let hub = hub();
    let a = session(&hub, 1);
    changed(&hub, |app| app.enabled = false);
    assert_eq!(close_code(&a), Some(4003));
    assert_eq!(
        hub.admit("key", None, None).map(|_| ()),
        Err(herald_hub::Refusal::AppDisabled)
    );
    changed(&hub, |app| app.enabled = true);
    let b = session(&hub, 2);
    assert!(hub.remove_app("app"));
    assert_eq!(close_code(&b), Some(4001));
    assert!(!hub.remove_app("app"), "already gone");
    assert!(matches!(
        hub.admit("key", None, None),
        Err(herald_hub::Refusal::UnknownApp(_))
    ));
    // Admitted just before the removal: closed as it connects.
    let late = hub.connect(
        SocketId::from_parts(1, 3),
        Arc::new(App::new("app", "key", "s")),
    );
    let mut out = Vec::new();
    assert_eq!(late.outbox.drain(&mut out).map(|c| c.code), Some(4001));
}

#[tokio::test]
async fn a_full_replacement_removes_what_it_leaves_out_and_moves_keys() {
    let hub = hub();
    let a = session(&hub, 1);
    hub.replace_apps(vec![
        App::new("app", "new-key", "secret"),
        App::new("b", "kb", "sb"),
    ]);
    assert!(hub.app_by_key("key").is_none());
    assert_eq!(hub.app_by_key("new-key").expect("moved").id, "app");
    assert_eq!(close_code(&a), None, "a key change leaves connections open");
    let b = hub.connect(SocketId::from_parts(1, 2), hub.app_by_id("b").expect("b"));
    hub.replace_apps(vec![App::new("app", "new-key", "secret")]);
    let mut out = Vec::new();
    assert_eq!(b.outbox.drain(&mut out).map(|c| c.code), Some(4001));
    assert_eq!(hub.apps().len(), 1);
}

#[tokio::test]
async fn a_rotated_secret_signs_until_its_grace_ends() {
    let hub = hub();
    let now = herald_hub::clock::now_secs();
    changed(&hub, |app| {
        app.secret = "new-secret".into();
        app.previous_secret = Some(PreviousSecret {
            secret: "secret".into(),
            until_secs: now + 60,
        });
    });
    let mut s = session(&hub, 1);
    let got = subscribe_private(&mut s, "private-old", "secret").await;
    assert_eq!(got[0]["event"], "pusher_internal:subscription_succeeded");
    let got = subscribe_private(&mut s, "private-new", "new-secret").await;
    assert_eq!(got[0]["event"], "pusher_internal:subscription_succeeded");
    changed(&hub, |app| {
        app.previous_secret = Some(PreviousSecret {
            secret: "secret".into(),
            until_secs: now - 1,
        })
    });
    let got = subscribe_private(&mut s, "private-late", "secret").await;
    assert_eq!(got[0]["event"], "pusher:error", "{got:?}");
}
