//! Cluster: several real `herald` processes on a real Redis (and on a three-master Redis
//! Cluster), driven by Rust WebSocket clients and the signed HTTP API.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::redis::{Redis, RedisCluster, RedisTls};
use common::*;
use serde_json::json;

const LEASE: u64 = 2;

fn bus_single(url: &str) -> String {
    format!(
        "[bus]\ndriver = \"redis\"\nurl = \"{url}\"\nlease_seconds = {LEASE}\n{}",
        default_apps()
    )
}

fn bus_cluster(urls: &[String]) -> String {
    let list: Vec<String> = urls.iter().map(|u| format!("\"{u}\"")).collect();
    format!(
        "[bus]\ndriver = \"redis\"\ncluster_urls = [{}]\nlease_seconds = {LEASE}\n{}",
        list.join(", "),
        default_apps()
    )
}

async fn nodes(n: usize, bus: &str) -> Vec<Herald> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(Herald::start_node(&format!("node-{i}"), "", bus).await);
    }
    out
}

/// Publish on A reaches B and C exactly once; socket_id exclusion holds across nodes; a node
/// without subscribers gets none of the channel's traffic.
async fn fan_out_across_nodes(nodes: &[Herald], subscribers_of: impl Fn(&str) -> i64) {
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let mut on_b = b.client().await;
    let mut on_c = c.client().await;
    let mut on_a = a.client().await;
    for cl in [&mut on_a, &mut on_b, &mut on_c] {
        cl.subscribe("news").await;
    }
    for i in 0..20 {
        let (s, _) = a.api().trigger(&["news"], "n", &i.to_string(), None).await;
        assert_eq!(s, 200);
    }
    for cl in [&mut on_a, &mut on_b, &mut on_c] {
        for i in 0..20 {
            assert_eq!(cl.recv().await["data"], i.to_string());
        }
        cl.expect_silence(Duration::from_millis(200)).await; // exactly once
    }
    // Exclusion of a socket on another node.
    let excluded = on_c.socket_id.clone();
    b.api().trigger(&["news"], "x", "1", Some(&excluded)).await;
    assert_eq!(on_a.recv().await["event"], "x");
    assert_eq!(on_b.recv().await["event"], "x");
    on_c.expect_silence(Duration::from_millis(300)).await;

    // Interest routing: only nodes with subscribers listen to the topic.
    assert_eq!(subscribers_of("{herald:app1:news}:msg"), 3);
    let mut only_a = a.client().await;
    only_a.subscribe("quiet").await;
    let received_before = c.metric("herald_bus_messages_received_total").await;
    for _ in 0..10 {
        assert_eq!(b.api().trigger(&["quiet"], "q", "x", None).await.0, 200);
    }
    for _ in 0..10 {
        assert_eq!(only_a.recv().await["event"], "q");
    }
    assert_eq!(subscribers_of("{herald:app1:quiet}:msg"), 1);
    assert_eq!(
        c.metric("herald_bus_messages_received_total").await,
        received_before,
        "node C got traffic it has no subscribers for"
    );
}

#[tokio::test]
async fn fan_out_routing_and_exclusion_single_redis() {
    let redis = Redis::start().await;
    let nodes = nodes(3, &bus_single(&redis.url())).await;
    fan_out_across_nodes(&nodes, |t| redis.numsub(t)).await;
}

#[tokio::test]
async fn fan_out_routing_and_exclusion_redis_cluster() {
    let cluster = RedisCluster::start().await;
    let nodes = nodes(3, &bus_cluster(&cluster.urls())).await;
    fan_out_across_nodes(&nodes, |t| cluster.shardnumsub(t)).await;
}

/// `rediss://`: three nodes on a Redis that speaks only TLS, its certificate signed by a private
/// CA named in `bus.tls_ca_file`. The same fan-out, exclusion and routing checks as above; a
/// node that does not trust the CA refuses to start and says why.
#[tokio::test]
async fn fan_out_over_tls_with_a_private_ca() {
    let redis = RedisTls::start().await;
    let bus = |ca: &str| {
        format!(
            "[bus]\ndriver = \"redis\"\nurl = \"{}\"\n{ca}lease_seconds = {LEASE}\n{}",
            redis.url(),
            default_apps()
        )
    };
    let trusted = bus(&format!("tls_ca_file = {:?}\n", redis.ca_file()));
    let nodes = nodes(3, &trusted).await;
    fan_out_across_nodes(&nodes, |t| {
        redis
            .cli(&["PUBSUB", "NUMSUB", t])
            .lines()
            .nth(1)
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    })
    .await;

    let (ok, stderr) = run_until_exit("untrusting", &bus("")).await;
    assert!(!ok, "{stderr}");
    assert!(
        stderr.contains("certificate is not trusted") && stderr.contains("bus.tls_ca_file"),
        "{stderr}"
    );
}

async fn presence_and_client_events_across_nodes(nodes: &[Herald]) {
    let (a, b) = (&nodes[0], &nodes[1]);
    let ch = "presence-room";
    let mut watcher = a.client().await;
    watcher.subscribe_presence(ch, "watcher").await;
    // One user, two sockets on two nodes.
    let mut u_a = a.client().await;
    let mut u_b = b.client().await;
    let first = u_a.subscribe_presence(ch, "u").await;
    assert_eq!(data(&first)["presence"]["count"], 2);
    let second = u_b.subscribe_presence(ch, "u").await;
    assert_eq!(data(&second)["presence"]["count"], 2);
    let added = watcher.recv().await;
    assert_eq!(added["event"], "pusher_internal:member_added");
    assert_eq!(data(&added)["user_id"], "u");
    watcher.expect_silence(Duration::from_millis(300)).await; // once, not per socket

    // API counts are cluster-wide.
    let (_, info) = b
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
        json!({"occupied":true,"user_count":2,"subscription_count":3})
    );
    let (_, users) = a
        .api()
        .call("GET", &format!("/channels/{ch}/users"), &[], "")
        .await;
    assert_eq!(users["users"].as_array().unwrap().len(), 2);
    let (_, list) = b
        .api()
        .call(
            "GET",
            "/channels",
            &[("filter_by_prefix", "presence-"), ("info", "user_count")],
            "",
        )
        .await;
    assert_eq!(list, json!({"channels":{"presence-room":{"user_count":2}}}));

    // Client events from B reach A's subscribers with user_id, not the sender.
    u_b.send(json!({"event":"client-hi","channel":ch,"data":{"x":1}}))
        .await;
    let got = watcher.recv().await;
    assert_eq!(
        got,
        json!({"event":"client-hi","channel":ch,"data":"{\"x\":1}","user_id":"u"})
    );
    assert_eq!(u_a.recv().await["event"], "client-hi");
    u_b.expect_silence(Duration::from_millis(200)).await;

    // member_removed once, after the user's last socket (on another node) leaves.
    drop(u_a);
    watcher.expect_silence(Duration::from_millis(400)).await;
    drop(u_b);
    let removed = watcher.recv().await;
    assert_eq!(removed["event"], "pusher_internal:member_removed");
    assert_eq!(data(&removed)["user_id"], "u");
    watcher.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn presence_and_client_events_single_redis() {
    let redis = Redis::start().await;
    let nodes = nodes(2, &bus_single(&redis.url())).await;
    presence_and_client_events_across_nodes(&nodes).await;
}

#[tokio::test]
async fn presence_and_client_events_redis_cluster() {
    let cluster = RedisCluster::start().await;
    let nodes = nodes(2, &bus_cluster(&cluster.urls())).await;
    presence_and_client_events_across_nodes(&nodes).await;
}

async fn limits_users_and_terminate(nodes: &[Herald]) {
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    // app2 allows two connections cluster-wide.
    let origin = Some("https://allowed.example");
    let mut c1 = Client::connect(a.port, "/app/key2?protocol=7", origin).await;
    assert_eq!(c1.recv().await["event"], "pusher:connection_established");
    let mut c2 = Client::connect(b.port, "/app/key2?protocol=7", origin).await;
    assert_eq!(c2.recv().await["event"], "pusher:connection_established");
    let mut c3 = Client::connect(c.port, "/app/key2?protocol=7", origin).await;
    assert_eq!(c3.expect_close().await.0, 4004);
    drop(c1);
    let mut admitted = false;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut again = Client::connect(c.port, "/app/key2?protocol=7", origin).await;
        if let Event::Text(v) = again.next().await {
            if v["event"] == "pusher:connection_established" {
                admitted = true;
                break;
            }
        }
    }
    assert!(
        admitted,
        "a freed connection slot is usable on another node"
    );

    // Server-to-user and terminate across nodes.
    let user = r#"{"id":"u9"}"#;
    let mut on_a = a.client().await;
    let mut on_b = b.client().await;
    for cl in [&mut on_a, &mut on_b] {
        let sid = cl.socket_id.clone();
        let sig =
            herald_protocol::signature::sign(SECRET, format!("{sid}::user::{user}").as_bytes());
        cl.send(json!({"event":"pusher:signin","data":{"auth":format!("{KEY}:{sig}"),"user_data":user}})).await;
        cl.recv_event("pusher:signin_success").await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        c.api()
            .trigger(&["#server-to-user-u9"], "dm", "hello", None)
            .await
            .0,
        200
    );
    for cl in [&mut on_a, &mut on_b] {
        assert_eq!(cl.recv().await["event"], "dm");
    }
    let (s, body) = c
        .api()
        .call("POST", "/users/u9/terminate_connections", &[], "{}")
        .await;
    assert_eq!((s, body), (200, json!({})));
    for cl in [&mut on_a, &mut on_b] {
        assert_eq!(cl.expect_close().await.0, 4200);
    }
}

#[tokio::test]
async fn limits_server_to_user_and_terminate_single_redis() {
    let redis = Redis::start().await;
    let nodes = nodes(3, &bus_single(&redis.url())).await;
    limits_users_and_terminate(&nodes).await;
}

#[tokio::test]
async fn limits_server_to_user_and_terminate_redis_cluster() {
    let cluster = RedisCluster::start().await;
    let nodes = nodes(3, &bus_cluster(&cluster.urls())).await;
    limits_users_and_terminate(&nodes).await;
}

async fn dead_node_members_are_removed(mut nodes: Vec<Herald>) {
    let ch = "presence-crash";
    let mut watcher = nodes[0].client().await;
    watcher.subscribe_presence(ch, "watcher").await;
    let mut victim = nodes[1].client().await;
    victim.subscribe_presence(ch, "doomed").await;
    watcher.recv_event("pusher_internal:member_added").await;
    let killed = Instant::now();
    nodes[1].kill9();
    let removed = watcher.recv_event("pusher_internal:member_removed").await;
    let took = killed.elapsed();
    assert_eq!(data(&removed)["user_id"], "doomed");
    assert!(
        took <= Duration::from_secs(2 * LEASE + 1),
        "removed after {took:?}, bound is twice the lease"
    );
    let (_, info) = nodes[0]
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
        json!({"occupied":true,"user_count":1,"subscription_count":1})
    );
    watcher.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn kill_9_node_members_removed_within_bound_single_redis() {
    let redis = Redis::start().await;
    dead_node_members_are_removed(nodes(2, &bus_single(&redis.url())).await).await;
}

#[tokio::test]
async fn kill_9_node_members_removed_within_bound_redis_cluster() {
    let cluster = RedisCluster::start().await;
    dead_node_members_are_removed(nodes(2, &bus_cluster(&cluster.urls())).await).await;
}

#[tokio::test]
async fn redis_restart_under_steady_publishing() {
    let mut redis = Redis::start().await;
    let nodes = nodes(2, &bus_single(&redis.url())).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut sub = b.client().await;
    sub.subscribe("steady").await;
    let mut accepted = Vec::new();
    let mut refused = 0;
    let mut refused_values = std::collections::HashSet::new();
    let mut restarted = false;
    let started = Instant::now();
    let mut i = 0u32;
    while started.elapsed() < Duration::from_secs(8) {
        i += 1;
        if i == 20 {
            redis.kill();
            // Both nodes report not ready, with a reason, while Redis is gone.
            for n in [a, b] {
                let mut ready = 200;
                for _ in 0..40 {
                    ready = n.admin_get("/readyz").await.0;
                    if ready == 503 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                assert_eq!(ready, 503);
                assert!(n.admin_get("/readyz").await.1.contains("bus not ready"));
            }
        }
        if i == 60 && !restarted {
            redis.restart().await;
            restarted = true;
        }
        let (s, body) = a
            .api()
            .trigger(&["steady"], "tick", &i.to_string(), None)
            .await;
        match s {
            200 => accepted.push(i.to_string()),
            503 => {
                refused += 1;
                refused_values.insert(i.to_string());
                assert!(
                    body["error"]
                        .as_str()
                        .unwrap()
                        .contains("Nothing was published"),
                    "{body}"
                );
            }
            // Not confirmed: may or may not arrive.
            504 => {}
            other => panic!("unexpected status {other}: {body}"),
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    assert!(
        refused > 0,
        "publishes while Redis was down must be refused"
    );
    let after_restart = accepted
        .iter()
        .filter(|v| v.parse::<u32>().unwrap() > 60)
        .count();
    assert!(
        after_restart > 10,
        "publishing resumes after Redis is back ({after_restart})"
    );
    // Every publish answered 200 was delivered, in order; none answered 503 was.
    let got = deliveries_of(&mut sub, &accepted).await;
    let confirmed: Vec<String> = got
        .iter()
        .filter(|v| accepted.contains(v))
        .cloned()
        .collect();
    assert_eq!(confirmed, accepted);
    for v in &got {
        assert!(
            !refused_values.contains(v),
            "publish {v} was answered 503 but delivered"
        );
    }
    // Readiness came back.
    assert_eq!(a.admin_get("/readyz").await.0, 200);
}

async fn protocol_features_across_nodes(mut nodes: Vec<Herald>) {
    // Cache: published through A, hit by a subscriber on B.
    assert_eq!(
        nodes[0]
            .api3()
            .trigger(&["cache-x"], "snap", "1", None)
            .await
            .0,
        200
    );
    let mut on_b = nodes[1].client_of("key3").await;
    on_b.subscribe("cache-x").await;
    assert_eq!(
        on_b.recv().await,
        json!({"event":"snap","channel":"cache-x","data":"1"})
    );
    let (_, info) = nodes[1]
        .api3()
        .call("GET", "/channels/cache-x", &[("info", "cache")], "")
        .await;
    assert_eq!(info["cache"]["data"], "1");

    // Subscription counts are cluster-wide: a subscriber on A sees B's arrival.
    let mut count_a = nodes[0].client_of("key3").await;
    count_a.subscribe("counted").await;
    assert_eq!(
        data(
            &count_a
                .recv_event("pusher_internal:subscription_count")
                .await
        )["subscription_count"],
        1
    );
    let mut count_b = nodes[1].client_of("key3").await;
    count_b.subscribe("counted").await;
    let mut latest = 0;
    for _ in 0..3 {
        latest = data(
            &count_a
                .recv_event("pusher_internal:subscription_count")
                .await,
        )["subscription_count"]
            .as_u64()
            .unwrap();
        if latest == 2 {
            break;
        }
    }
    assert_eq!(latest, 2);

    // Watchlist: the watcher on A learns that u2 signed in on B, and that it went offline
    // when B died.
    let mut watcher = nodes[0].client_of("key3").await;
    watcher
        .signin_as("key3", "secret3", r#"{"id":"w","watchlist":["u2"]}"#)
        .await;
    assert_eq!(
        data(&watcher.recv_event("pusher_internal:watchlist_events").await)["events"][0]["name"],
        "offline"
    );
    let mut u2 = nodes[1].client_of("key3").await;
    u2.signin_as("key3", "secret3", r#"{"id":"u2"}"#).await;
    let online = watcher.recv_event("pusher_internal:watchlist_events").await;
    assert_eq!(
        data(&online),
        json!({"events":[{"name":"online","user_ids":["u2"]}]})
    );
    let killed = Instant::now();
    nodes[1].kill9();
    let offline = watcher.recv_event("pusher_internal:watchlist_events").await;
    assert_eq!(
        data(&offline),
        json!({"events":[{"name":"offline","user_ids":["u2"]}]})
    );
    assert!(killed.elapsed() <= Duration::from_secs(2 * LEASE + 1));
}

#[tokio::test]
async fn cache_counts_and_watchlist_single_redis() {
    let redis = Redis::start().await;
    protocol_features_across_nodes(nodes(2, &bus_single(&redis.url())).await).await;
}

#[tokio::test]
async fn cache_counts_and_watchlist_redis_cluster() {
    let cluster = RedisCluster::start().await;
    protocol_features_across_nodes(nodes(2, &bus_cluster(&cluster.urls())).await).await;
}

/// Subscribing again right around the moment the node drops an idle topic must never leave the
/// node unsubscribed while it has a subscriber.
#[tokio::test]
async fn resubscribe_races_the_idle_topic_drop() {
    let redis = Redis::start().await;
    let nodes = nodes(2, &bus_single(&redis.url())).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut c = b.client().await;
    for step in 0..12u64 {
        c.subscribe("flappy").await;
        c.send(json!({"event":"pusher:unsubscribe","data":{"channel":"flappy"}}))
            .await;
        // The topic is dropped 1 s after it went idle (checked every 50 ms): land around it.
        tokio::time::sleep(Duration::from_millis(930 + step * 15)).await;
        c.subscribe("flappy").await;
        assert_eq!(
            a.api()
                .trigger(&["flappy"], "e", &step.to_string(), None)
                .await
                .0,
            200
        );
        let got = c.recv().await;
        assert_eq!(got["data"], step.to_string(), "step {step}: {got}");
        c.send(json!({"event":"pusher:unsubscribe","data":{"channel":"flappy"}}))
            .await;
    }
}

/// Reads `tick` events until every value of `expected` has arrived (and 300 ms more, for
/// stragglers); returns every value received, in order.
async fn deliveries_of(sub: &mut Client, expected: &[String]) -> Vec<String> {
    let mut got: Vec<String> = Vec::new();
    loop {
        let done = expected.iter().all(|v| got.contains(v));
        let wait = if done {
            Duration::from_millis(300)
        } else {
            Duration::from_secs(3)
        };
        match sub.next_within(wait).await {
            Event::Text(v) if v["event"] == "tick" => {
                got.push(v["data"].as_str().unwrap().to_owned())
            }
            Event::Text(_) => {}
            Event::Timeout if done => return got,
            other => panic!(
                "after {} deliveries, {} expected: {other:?}",
                got.len(),
                expected.len()
            ),
        }
    }
}
