//! End-to-end: cache channels, subscription counts, watchlists, authorized connections and
//! encrypted channels on the real `herald` binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

#[tokio::test]
async fn cache_channels_hit_miss_ttl_and_info() {
    let h = Herald::start().await;
    let api = h.api3();
    let mut first = h.client_of("key3").await;
    first.subscribe("cache-prices").await;
    assert_eq!(
        first.recv().await,
        json!({"event":"pusher:cache_miss","channel":"cache-prices","data":"{}"})
    );

    assert_eq!(
        api.trigger(&["cache-prices"], "price", "{\"v\":1}", None)
            .await
            .0,
        200
    );
    assert_eq!(first.recv().await["event"], "price");
    let mut late = h.client_of("key3").await;
    assert_eq!(
        late.subscribe("cache-prices").await["event"],
        "pusher_internal:subscription_succeeded"
    );
    assert_eq!(
        late.recv().await,
        json!({"event":"price","channel":"cache-prices","data":"{\"v\":1}"})
    );

    let (s, info) = api
        .call(
            "GET",
            "/channels/cache-prices",
            &[("info", "cache,subscription_count")],
            "",
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(info["cache"]["data"], "{\"v\":1}");
    assert!(info["cache"]["ttl"].as_u64().unwrap() <= 2);
    assert_eq!(info["subscription_count"], 2);

    // Expired after the app's 2 s TTL.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let mut expired = h.client_of("key3").await;
    expired.subscribe("cache-prices").await;
    assert_eq!(
        expired.recv_event("pusher:cache_miss").await["channel"],
        "cache-prices"
    );
    let (_, info) = api
        .call("GET", "/channels/cache-prices", &[("info", "cache")], "")
        .await;
    assert!(info["cache"].is_null(), "{info}");

    // Client events are not cached.
    let sid = first.socket_id.clone();
    let a = format!(
        "key3:{}",
        herald_protocol::signature::sign("secret3", format!("{sid}:private-cache-chat").as_bytes())
    );
    first
        .send(json!({"event":"pusher:subscribe","data":{"channel":"private-cache-chat","auth":a}}))
        .await;
    first.recv_event("pusher:cache_miss").await;
    first
        .send(json!({"event":"client-typing","channel":"private-cache-chat","data":{}}))
        .await;
    let mut other = h.client_of("key3").await;
    let sid = other.socket_id.clone();
    let a = format!(
        "key3:{}",
        herald_protocol::signature::sign("secret3", format!("{sid}:private-cache-chat").as_bytes())
    );
    other
        .send(json!({"event":"pusher:subscribe","data":{"channel":"private-cache-chat","auth":a}}))
        .await;
    other
        .recv_event("pusher_internal:subscription_succeeded")
        .await;
    let next = other.recv().await;
    assert_eq!(next["event"], "pusher:cache_miss", "{next}");
    // Bad auth on a private cache channel: refused, no cache frame.
    let mut bad = h.client_of("key3").await;
    bad.send(json!({"event":"pusher:subscribe","data":{"channel":"private-cache-chat","auth":"key3:00"}})).await;
    assert_eq!(bad.recv().await["event"], "pusher:error");
    assert_eq!(bad.recv().await["event"], "pusher:subscription_error");
    bad.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn subscription_count_events() {
    let h = Herald::start().await;
    let mut a = h.client_of("key3").await;
    a.subscribe("room").await;
    let n = a.recv_event("pusher_internal:subscription_count").await;
    assert_eq!(
        n,
        json!({"event":"pusher_internal:subscription_count","channel":"room","data":"{\"subscription_count\":1}"})
    );
    let mut b = h.client_of("key3").await;
    b.subscribe("room").await;
    for c in [&mut a, &mut b] {
        assert_eq!(
            data(&c.recv_event("pusher_internal:subscription_count").await)["subscription_count"],
            2
        );
    }
    drop(b);
    assert_eq!(
        data(&a.recv_event("pusher_internal:subscription_count").await)["subscription_count"],
        1
    );
    // Not on presence channels; not for apps without the flag.
    let mut p = h.client().await;
    p.subscribe("room").await;
    p.expect_silence(Duration::from_millis(400)).await;
}

#[tokio::test]
async fn watchlist_online_offline_and_limit() {
    let h = Herald::start().await;
    let mut watcher = h.client_of("key3").await;
    watcher
        .signin_as("key3", "secret3", r#"{"id":"w","watchlist":["b","c"]}"#)
        .await;
    let initial = watcher.recv_event("pusher_internal:watchlist_events").await;
    assert_eq!(
        data(&initial),
        json!({"events":[{"name":"offline","user_ids":["b","c"]}]})
    );

    let mut b1 = h.client_of("key3").await;
    b1.signin_as("key3", "secret3", r#"{"id":"b"}"#).await;
    let online = watcher.recv_event("pusher_internal:watchlist_events").await;
    assert_eq!(
        data(&online),
        json!({"events":[{"name":"online","user_ids":["b"]}]})
    );
    // A second connection of b changes nothing; b is offline after its last one.
    let mut b2 = h.client_of("key3").await;
    b2.signin_as("key3", "secret3", r#"{"id":"b"}"#).await;
    drop(b1);
    watcher.expect_silence(Duration::from_millis(300)).await;
    drop(b2);
    let offline = watcher.recv_event("pusher_internal:watchlist_events").await;
    assert_eq!(
        data(&offline),
        json!({"events":[{"name":"offline","user_ids":["b"]}]})
    );

    // A watcher of an online user learns it at sign-in.
    let mut c = h.client_of("key3").await;
    c.signin_as("key3", "secret3", r#"{"id":"c"}"#).await;
    watcher.recv_event("pusher_internal:watchlist_events").await;
    let mut w2 = h.client_of("key3").await;
    w2.signin_as("key3", "secret3", r#"{"id":"w2","watchlist":["c"]}"#)
        .await;
    assert_eq!(
        data(&w2.recv_event("pusher_internal:watchlist_events").await),
        json!({"events":[{"name":"online","user_ids":["c"]}]})
    );

    // Over 100 ids: sign-in succeeds, 4302, the first 100 are watched.
    let ids: Vec<String> = (0..105).map(|i| format!("u{i}")).collect();
    let mut big = h.client_of("key3").await;
    big.signin_as(
        "key3",
        "secret3",
        &json!({"id":"big","watchlist":ids}).to_string(),
    )
    .await;
    let err = big.recv().await;
    assert_eq!(err["data"]["code"], 4302, "{err}");
    let state = big.recv_event("pusher_internal:watchlist_events").await;
    assert_eq!(
        data(&state)["events"][0]["user_ids"]
            .as_array()
            .unwrap()
            .len(),
        100
    );

    // Oversized user_data is refused.
    let mut huge = h.client_of("key3").await;
    let ud = json!({"id":"h","user_info":{"x":"y".repeat(2000)}}).to_string();
    let sig = herald_protocol::signature::sign(
        "secret3",
        format!("{}::user::{ud}", huge.socket_id).as_bytes(),
    );
    huge.send(
        json!({"event":"pusher:signin","data":{"auth":format!("key3:{sig}"),"user_data":ud}}),
    )
    .await;
    assert!(huge.recv().await["data"]["message"]
        .as_str()
        .unwrap()
        .contains("over the limit"));
}

#[tokio::test]
async fn authorized_connections_timeout_closes_with_4009() {
    let h = Herald::start().await;
    let started = Instant::now();
    let mut idle = h.client_of("key4").await;
    let mut authorized = h.client_of("key4").await;
    let sid = authorized.socket_id.clone();
    let a = format!(
        "key4:{}",
        herald_protocol::signature::sign("secret4", format!("{sid}:private-ok").as_bytes())
    );
    authorized
        .send(json!({"event":"pusher:subscribe","data":{"channel":"private-ok","auth":a}}))
        .await;
    authorized
        .recv_event("pusher_internal:subscription_succeeded")
        .await;
    let (closed, kept) = tokio::join!(
        idle.expect_close(),
        authorized.next_within(Duration::from_millis(2000))
    );
    assert_eq!(closed.0, 4009);
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert!(matches!(kept, Event::Timeout), "{kept:?}");
}

#[tokio::test]
async fn encrypted_channels_pass_data_through() {
    let h = Herald::start().await;
    let mut c = h.client().await;
    assert_eq!(
        c.subscribe_private("private-encrypted-x").await["event"],
        "pusher_internal:subscription_succeeded"
    );
    let sealed = r#"{"nonce":"AAAA","ciphertext":"BBBB"}"#;
    assert_eq!(
        h.api()
            .trigger(&["private-encrypted-x"], "secret", sealed, None)
            .await
            .0,
        200
    );
    assert_eq!(c.recv().await["data"], sealed);
    let (s, _) = h
        .api()
        .trigger(&["private-encrypted-x", "other"], "secret", sealed, None)
        .await;
    assert_eq!(s, 400);
}
