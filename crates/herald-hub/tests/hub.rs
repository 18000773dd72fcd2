//! Hub tests with the in-process bus: fan-out, slow clients, presence, client events.

use std::sync::Arc;

use bytes::Bytes;
use herald_hub::{App, Apps, Cluster, Connection, Hub, HubConfig, Session};
use herald_protocol::signature::{channel_auth_input, sign};
use herald_protocol::{ChannelName, SocketId};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

fn hub(outbox_bytes: usize) -> Arc<Hub> {
    let mut app = App::new("app", "key", "secret");
    app.client_event_rate = 10;
    Hub::new(
        HubConfig {
            node_id: "n1".into(),
            outbox_bytes,
        },
        Apps::new([app]),
        Cluster::local(),
        TaskTracker::new(),
        CancellationToken::new(),
    )
}

fn session(hub: &Arc<Hub>, n: u64) -> Session {
    let app = hub.apps().by_key("key").expect("app").clone();
    let conn = hub.connect(SocketId::from_parts(1, n), app);
    Session::start(hub.clone(), conn, 120)
}

fn drain(conn: &Connection) -> Vec<Value> {
    let mut out = Vec::new();
    conn.outbox.drain(&mut out);
    out.iter()
        .map(|b| serde_json::from_slice(b).expect("json"))
        .collect()
}

async fn send(s: &mut Session, v: Value) {
    let mut bytes = v.to_string().into_bytes();
    s.on_text(&mut bytes).await;
}

fn auth(s: &Session, channel: &str, data: Option<&str>) -> String {
    format!(
        "key:{}",
        sign(
            "secret",
            channel_auth_input(s.connection().socket_id, channel, data).as_bytes()
        )
    )
}

#[tokio::test]
async fn broadcast_is_encoded_once_and_shared() {
    let hub = hub(1 << 20);
    let mut sessions = Vec::new();
    for i in 0..3 {
        let mut s = session(&hub, i);
        send(
            &mut s,
            json!({"event":"pusher:subscribe","data":{"channel":"c"}}),
        )
        .await;
        drain(s.connection());
        sessions.push(s);
    }
    let frame = Bytes::from_static(br#"{"event":"e","channel":"c","data":"x"}"#);
    let n = hub
        .publish(
            "app",
            &ChannelName::parse("c").expect("ok"),
            frame.clone(),
            None,
            0,
        )
        .await
        .expect("ok");
    assert_eq!(n, 3);
    for s in &sessions {
        let mut out = Vec::new();
        s.connection().outbox.drain(&mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(
            out[0].as_ptr(),
            frame.as_ptr(),
            "every subscriber shares the one encoding"
        );
    }
}

#[tokio::test]
async fn a_slow_client_is_cut_off_without_holding_up_the_others() {
    // Room for a few frames only.
    let hub = hub(16 * 1024);
    let mut slow = session(&hub, 1);
    let mut fast = session(&hub, 2);
    for s in [&mut slow, &mut fast] {
        send(
            s,
            json!({"event":"pusher:subscribe","data":{"channel":"c"}}),
        )
        .await;
        drain(s.connection());
    }
    let channel = ChannelName::parse("c").expect("ok");
    let frame = Bytes::from(vec![b'x'; 1000]);
    let mut fast_got = 0;
    for _ in 0..100 {
        hub.publish("app", &channel, frame.clone(), None, 0)
            .await
            .expect("ok");
        // The fast client's writer keeps up; the slow one never drains.
        let mut out = Vec::new();
        fast.connection().outbox.drain(&mut out);
        fast_got += out.len();
    }
    assert_eq!(fast_got, 100);
    let mut out = Vec::new();
    let close = slow.connection().outbox.drain(&mut out);
    assert_eq!(close.map(|c| c.code), Some(4100));
    assert!(
        out.is_empty(),
        "the slow client's backlog is dropped, not kept"
    );
}

#[tokio::test]
async fn presence_member_added_once_and_removed_after_last_socket() {
    let hub = hub(1 << 20);
    let data = |id: &str| json!({"user_id": id}).to_string();
    let mut watcher = session(&hub, 1);
    let d = data("w");
    let a = auth(&watcher, "presence-p", Some(&d));
    send(&mut watcher, json!({"event":"pusher:subscribe","data":{"channel":"presence-p","auth":a,"channel_data":d}})).await;
    drain(watcher.connection());

    let mut u1 = session(&hub, 2);
    let mut u2 = session(&hub, 3);
    for s in [&mut u1, &mut u2] {
        let d = data("u");
        let a = auth(s, "presence-p", Some(&d));
        send(s, json!({"event":"pusher:subscribe","data":{"channel":"presence-p","auth":a,"channel_data":d}})).await;
    }
    let seen = drain(watcher.connection());
    assert_eq!(
        seen.iter()
            .filter(|f| f["event"] == "pusher_internal:member_added")
            .count(),
        1
    );
    u1.close().await;
    assert!(drain(watcher.connection()).is_empty());
    u2.close().await;
    let seen = drain(watcher.connection());
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0]["event"], "pusher_internal:member_removed");
}

#[tokio::test(start_paused = true)]
async fn client_event_rate_limit_refills() {
    let hub = hub(1 << 20);
    let mut a = session(&hub, 1);
    let mut b = session(&hub, 2);
    for s in [&mut a, &mut b] {
        let au = auth(s, "private-c", None);
        send(
            s,
            json!({"event":"pusher:subscribe","data":{"channel":"private-c","auth":au}}),
        )
        .await;
        drain(s.connection());
    }
    for _ in 0..15 {
        send(
            &mut a,
            json!({"event":"client-x","channel":"private-c","data":{}}),
        )
        .await;
    }
    assert_eq!(drain(b.connection()).len(), 10);
    let errors = drain(a.connection());
    assert_eq!(errors.len(), 5);
    assert!(errors.iter().all(|e| e["data"]["code"] == 4301));
    tokio::time::advance(std::time::Duration::from_secs(1)).await;
    send(
        &mut a,
        json!({"event":"client-x","channel":"private-c","data":{}}),
    )
    .await;
    assert_eq!(drain(b.connection()).len(), 1);
}
