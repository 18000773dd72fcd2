//! The apps store when the database misbehaves, on real Postgres 15 and MariaDB: unknown keys
//! tried a thousand times cost the database a bounded number of queries (counted by the
//! database itself); a database killed leaves the cached apps working and the node ready, with
//! `/readyz` and `herald_apps_store_up` saying so; it recovers when the database returns; a
//! change made directly in the database while the node could not reach it is picked up when it
//! can again.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::admin::*;
use common::db::{Db, Driver};
use common::proxy::Proxy;
use common::redis::Redis;
use common::*;
use serde_json::json;
use tokio::task::JoinSet;

/// How long the node may take to notice the database going or coming back (a ping every 5 s,
/// a 3 s connection timeout, retries every second).
const NOTICE: Duration = Duration::from_secs(12);
/// Lookups the node may send per second (`apps_store::sync::LOOKUPS_PER_SECOND`).
const LOOKUPS_PER_SECOND: u64 = 20;

#[tokio::test]
async fn database_outage_on_postgres() {
    outage(Driver::Postgres).await;
}

#[tokio::test]
async fn database_outage_on_mariadb() {
    outage(Driver::MariaDb).await;
}

/// `n` connections with the keys `key(i)`, 50 at a time; each must be refused with 4001.
async fn unknown_keys(node: &Herald, n: usize, key: impl Fn(usize) -> String) {
    let port = node.port;
    let mut i = 0;
    while i < n {
        let mut batch = JoinSet::new();
        for j in i..(i + 50).min(n) {
            let key = key(j);
            batch.spawn(async move {
                let mut c = Client::connect(port, &format!("/app/{key}?protocol=7"), None).await;
                c.expect_close().await.0
            });
        }
        while let Some(code) = batch.join_next().await {
            assert_eq!(code.unwrap(), 4001);
        }
        i += 50;
    }
}

async fn store_state(node: &Herald) -> (u16, String, f64) {
    let (status, body) = readyz(node).await;
    let up = node.metric("herald_apps_store_up").await;
    (
        status,
        body["apps_store"].as_str().unwrap_or_default().to_owned(),
        up,
    )
}

async fn outage(driver: Driver) {
    let mut db = Db::start(driver).await;
    let redis = Redis::start().await;
    // The node reaches the database through a proxy, so a test can cut it off.
    let proxy = Proxy::start(db.port).await;
    let rest = store_config(&db, &db.url_via(proxy.port), &redis.url(), 60);
    let (ok, out, err) = migrate(&rest).await;
    assert!(ok, "{out}{err}");
    let node = Herald::start_node("node-o", "", &rest).await;
    let body = json!({"key": "kept-key", "secret": "kept-secret-0123"});
    assert_eq!(put_app(&node, "kept", body).await.0, 201);
    let (mut c, _) = connect_within(&node, "kept-key", Duration::from_secs(2)).await;
    c.subscribe("news").await;
    let api = api_of(&node, "kept", "kept-key", "kept-secret-0123");

    // One unknown key, a thousand times: the database is asked once.
    db.count_statements();
    unknown_keys(&node, 1000, |_| "no-such-key".to_owned()).await;
    let same_key = db.statements_with("WHERE app_key =");
    assert!((1..=2).contains(&same_key), "{same_key} queries");
    // Ten thousand distinct unknown keys: within the node's lookup budget.
    db.count_statements();
    let started = Instant::now();
    unknown_keys(&node, 10_000, |i| format!("flood-{i}")).await;
    let took = started.elapsed();
    let distinct = db.statements_with("WHERE app_key =");
    let bound = LOOKUPS_PER_SECOND * (1 + took.as_secs() + 1);
    assert!(
        distinct >= 1 && distinct <= bound,
        "{distinct} queries in {took:?}"
    );
    println!(
        "{driver:?}: 1000 attempts with one unknown key: {same_key} database queries; \
         10,000 distinct unknown keys in {took:?}: {distinct} queries (bound {bound})"
    );
    if driver == Driver::MariaDb {
        db.sql("SET GLOBAL general_log = 0");
    }

    // The database killed: the cached app keeps working, the node stays ready and says so.
    db.kill();
    let n = &node;
    let down_took = within(NOTICE, "the store reported unavailable", || async move {
        store_state(n).await == (200, "unavailable".into(), 0.0)
    })
    .await;
    assert_eq!(api.trigger(&["news"], "still", "x", None).await.0, 200);
    c.recv_event("still").await;
    connect_within(&node, "kept-key", Duration::from_secs(1)).await;
    // A key the node does not know cannot be looked up now: retry later (4100), not 4001.
    assert_eq!(refused(&node, "not-known-yet").await.0, 4100);
    // The node keeps trying to reload meanwhile.
    within(NOTICE, "a failed reload", || async move {
        n.metric("herald_apps_store_reloads_total{outcome=\"error\"}")
            .await
            >= 1.0
    })
    .await;

    // Back: the node recovers.
    db.restart().await;
    let up_took = within(NOTICE, "the store reported up again", || async move {
        store_state(n).await == (200, "ok".into(), 1.0)
    })
    .await;

    // Cut off, changed by hand meanwhile, reachable again: the change is picked up.
    proxy.refuse(true);
    proxy.cut();
    within(NOTICE, "the store reported unavailable", || async move {
        store_state(n).await.1 == "unavailable"
    })
    .await;
    db.sql("INSERT INTO herald_apps (id, app_key, secret) VALUES ('direct', 'direct-key', 'direct-secret')");
    db.sql("UPDATE herald_apps SET enabled = false WHERE id = 'kept'");
    assert_eq!(api.trigger(&["news"], "cached", "x", None).await.0, 200);
    c.recv_event("cached").await;
    proxy.refuse(false);
    let back = Instant::now();
    let code = loop {
        match c.next_within(NOTICE).await {
            Event::Close(code, _) => break code,
            Event::Text(_) => {}
            Event::Timeout => panic!("the hand-made change was not applied within {NOTICE:?}"),
        }
    };
    assert_eq!(code, 4003);
    connect_within(&node, "direct-key", Duration::from_secs(2)).await;
    let picked_up = back.elapsed();
    println!(
        "{driver:?}: database killed → unavailable in {down_took:?}; restarted → up in \
         {up_took:?}; reachable again → hand-made change applied in {picked_up:?}"
    );
}
