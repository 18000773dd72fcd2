//! Herald's Redis deployments: a node started before Redis, a password and key prefix keeping
//! two Herald clusters apart on one Redis, Sentinel, node ids refused when in use and freed by a
//! graceful exit. Real `herald` processes and a real `redis-server`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::redis::Redis;
use common::*;

const LEASE: u64 = 2;

fn bus_single(url: &str) -> String {
    format!(
        "[bus]\ndriver = \"redis\"\nurl = \"{url}\"\nlease_seconds = {LEASE}\n{}",
        default_apps()
    )
}

/// Redis not up yet when a node starts (a compose file, a cluster still forming): the node keeps
/// trying and starts once Redis answers.
#[tokio::test]
async fn a_node_waits_for_redis_at_start() {
    let port = free_port();
    let bus = bus_single(&format!("redis://127.0.0.1:{port}"));
    let starting = tokio::spawn(async move { Herald::start_node("early", "", &bus).await });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !starting.is_finished(),
        "the node must not be up before Redis"
    );
    let _redis = Redis::start_on(port).await;
    let node = starting.await.unwrap();
    assert_eq!(node.admin_get("/readyz").await.0, 200);
    let mut c = node.client().await;
    c.subscribe("early").await;
    assert_eq!(node.api().trigger(&["early"], "e", "1", None).await.0, 200);
    assert_eq!(c.recv().await["event"], "e");
}

#[tokio::test]
async fn password_and_key_prefix_keep_clusters_apart() {
    let redis = Redis::start_with_password("s3cret").await;
    let url = format!("redis://:s3cret@127.0.0.1:{}", redis.port);
    let blue = |prefix: &str| {
        format!("[bus]\ndriver = \"redis\"\nurl = \"{url}\"\nkey_prefix = \"{prefix}\"\nlease_seconds = {LEASE}\n{}", default_apps())
    };
    let blue_a = Herald::start_node("blue-a", "", &blue("blue")).await;
    let blue_b = Herald::start_node("blue-b", "", &blue("blue")).await;
    let green = Herald::start_node("green-a", "", &blue("green")).await;
    let mut on_blue = blue_b.client().await;
    let mut on_green = green.client().await;
    on_blue.subscribe("shared-name").await;
    on_green.subscribe("shared-name").await;
    assert_eq!(
        blue_a
            .api()
            .trigger(&["shared-name"], "e", "blue", None)
            .await
            .0,
        200
    );
    assert_eq!(on_blue.recv().await["data"], "blue");
    on_green.expect_silence(Duration::from_millis(400)).await;
    let (_, info) = green
        .api()
        .call(
            "GET",
            "/channels/shared-name",
            &[("info", "subscription_count")],
            "",
        )
        .await;
    assert_eq!(
        info["subscription_count"], 1,
        "the green cluster counts only its own subscriber"
    );

    // A wrong password is refused at start-up with a clear error.
    let bad = format!("redis://:wrong@127.0.0.1:{}", redis.port);
    let (ok, err) = run_until_exit(
        "h",
        &format!(
            "[bus]\ndriver = \"redis\"\nurl = \"{bad}\"\n{}",
            default_apps()
        ),
    )
    .await;
    assert!(!ok);
    assert!(err.contains("connecting the Redis bus"), "{err}");
    assert!(
        !err.contains("wrong@"),
        "credentials must not be printed: {err}"
    );
}

#[tokio::test]
async fn sentinel_discovers_the_master() {
    let redis = Redis::start().await;
    let sentinel = redis.start_sentinel("mymaster").await;
    let bus = format!(
        "[bus]\ndriver = \"redis\"\nsentinel_urls = [\"redis://127.0.0.1:{}\"]\nsentinel_master = \"mymaster\"\nlease_seconds = {LEASE}\n{}",
        sentinel.port,
        default_apps()
    );
    let a = Herald::start_node("s-a", "", &bus).await;
    let b = Herald::start_node("s-b", "", &bus).await;
    let mut on_b = b.client().await;
    on_b.subscribe("via-sentinel").await;
    assert_eq!(
        a.api().trigger(&["via-sentinel"], "e", "1", None).await.0,
        200
    );
    assert_eq!(on_b.recv().await["data"], "1");
    assert_eq!(redis.numsub("{herald:app1:via-sentinel}:msg"), 1);
}

#[tokio::test]
async fn duplicate_node_ids_are_refused_and_a_graceful_exit_leaves_the_cluster() {
    let redis = Redis::start().await;
    let bus = format!(
        "[bus]\ndriver = \"redis\"\nurl = \"{}\"\nlease_seconds = 1\n{}",
        redis.url(),
        default_apps()
    );
    let first = Herald::start_node("twin", "drain_window = 0\ndrain_deadline = 2", &bus).await;
    assert!(
        common::redis::cli(redis.port, &["ZSCORE", "herald:nodes", "twin"])
            .parse::<f64>()
            .is_ok()
    );

    // A second live process with the same id gives up with a clear error.
    let (ok, err) = run_until_exit("twin", &bus).await;
    assert!(!ok);
    assert!(err.contains("in use by another live node"), "{err}");

    // SIGTERM: the lease goes at once, not a lease later.
    first.sigterm();
    let mut first = first;
    let status = tokio::task::spawn_blocking(move || first.child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success());
    assert_eq!(
        common::redis::cli(redis.port, &["ZSCORE", "herald:nodes", "twin"]),
        ""
    );
    // And the id is free for the next life immediately.
    let again = Herald::start_node("twin", "", &bus).await;
    assert_eq!(again.admin_get("/readyz").await.0, 200);
}
