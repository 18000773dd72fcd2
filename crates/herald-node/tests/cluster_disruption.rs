//! Redis Cluster slot disruptions under steady publishing: a master SIGKILLed and restarted
//! empty, a `CLUSTER FAILOVER` to a replica, the channels' slots resharded. Real `herald`
//! processes on a real three-master Redis Cluster.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::redis::RedisCluster;
use common::*;

const LEASE: u64 = 2;

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

#[derive(Clone, Copy, Debug)]
enum Disruption {
    /// SIGKILL master 0, restart it empty (same cluster identity) after 1 s.
    RestartMaster0,
    /// `CLUSTER FAILOVER` to a replica of master 0.
    FailoverMaster0,
    /// Master 0's slots of the test channels moved to master 1 (resharding).
    MoveSlotsToMaster1,
}

/// Publishes every 40 ms on six sharded channels while master 0's slots are disrupted; checks
/// that publishing resumes and that every publish answered 200 arrived, in order per channel.
async fn steady_publishing_through(disruption: Disruption) {
    let mut cluster = RedisCluster::start().await;
    let replica = match disruption {
        Disruption::FailoverMaster0 => Some(cluster.add_replica_of(0).await),
        Disruption::RestartMaster0 | Disruption::MoveSlotsToMaster1 => None,
    };
    let nodes = nodes(2, &bus_cluster(&cluster.urls())).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut sub = b.client().await;
    // Channels spread over the three masters' slots.
    let channels: Vec<String> = (0..6).map(|i| format!("steady-{i}")).collect();
    for ch in &channels {
        sub.subscribe(ch).await;
    }
    let topic = |ch: &str| format!("{{herald:app1:{ch}}}:msg");
    let subscribers_on = |port: u16, ch: &str| -> u32 {
        let out = common::redis::cli(port, &["PUBSUB", "SHARDNUMSUB", &topic(ch)]);
        out.lines()
            .nth(1)
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    };
    // The channels whose shard is the master that will be restarted.
    let on_restarted: Vec<&String> = channels
        .iter()
        .filter(|ch| subscribers_on(cluster.ports[0], ch) == 1)
        .collect();
    assert!(!on_restarted.is_empty(), "some channels live on master 0");
    let mut accepted = Vec::new();
    let mut refused = 0;
    let mut refused_values = std::collections::HashSet::new();
    let mut unconfirmed = 0;
    let mut timeline = Vec::new();
    let restart = {
        // Restart master 0 (down for 1 s) while publishing continues.
        let started = Instant::now();
        let mut i = 0u32;
        let mut restarted = false;
        while started.elapsed() < Duration::from_secs(10) {
            i += 1;
            if i == 15 && !restarted {
                timeline.push(format!("{} {disruption:?}", wall_ms()));
                match (disruption, replica) {
                    (Disruption::FailoverMaster0, Some(r)) => cluster.failover_to(r).await,
                    (Disruption::MoveSlotsToMaster1, _) => {
                        let keys: Vec<String> = on_restarted.iter().map(|ch| topic(ch)).collect();
                        cluster.move_slots(0, 1, &keys).await
                    }
                    _ => cluster.restart_node(0, Duration::from_secs(1)).await,
                }
                timeline.push(format!("{} cluster ok", wall_ms()));
                restarted = true;
            }
            let ch = &channels[i as usize % channels.len()];
            let (s, body) = a.api().trigger(&[ch], "tick", &i.to_string(), None).await;
            timeline.push(format!("{} #{i} {ch} {s}", wall_ms()));
            match s {
                200 => accepted.push(i.to_string()),
                503 => {
                    refused += 1;
                    refused_values.insert(i.to_string());
                }
                504 => unconfirmed += 1,
                other => panic!("unexpected status {other}: {body}"),
            }
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        restarted
    };
    eprintln!(
        "{disruption:?}: {} accepted, {refused} refused, {unconfirmed} unconfirmed",
        accepted.len()
    );
    assert!(restart);
    let after = accepted
        .iter()
        .filter(|v| v.parse::<u32>().unwrap() > 40)
        .count();
    assert!(
        after > 10,
        "publishing resumes after the master is back ({after}; refused {refused})"
    );
    let resumed_on_restarted = accepted
        .iter()
        .filter(|v| {
            let i: usize = v.parse().unwrap();
            i > 15 && on_restarted.contains(&&channels[i % channels.len()])
        })
        .count();
    assert!(
        resumed_on_restarted > 5,
        "publishes to the restarted master's channels were accepted again ({resumed_on_restarted})"
    );
    // Every publish answered 200 was delivered, in order per channel.
    let mut got = std::collections::HashSet::new();
    let mut last: std::collections::HashMap<String, u32> = Default::default();
    // (A publish answered 504 may have been delivered; one answered 503 must not be.)
    while accepted.iter().any(|v| !got.contains(v)) {
        match sub.next_within(Duration::from_secs(3)).await {
            Event::Text(v) if v["event"] == "tick" => {
                let data = v["data"].as_str().unwrap().to_owned();
                let n: u32 = data.parse().unwrap();
                let ch = v["channel"].as_str().unwrap().to_owned();
                let prev = last.insert(ch.clone(), n).unwrap_or(0);
                assert!(n > prev, "{ch}: {n} after {prev}");
                assert!(
                    !refused_values.contains(&data),
                    "publish {data} was answered 503 but delivered"
                );
                got.insert(data);
            }
            Event::Text(_) => {}
            other => {
                let missing: Vec<&String> = accepted.iter().filter(|v| !got.contains(*v)).collect();
                eprintln!("timeline:\n{}", timeline.join("\n"));
                for p in &cluster.ports {
                    eprintln!(
                        "redis {p}: {}",
                        common::redis::cli(*p, &["CLIENT", "LIST", "TYPE", "pubsub"])
                    );
                    for ch in &channels {
                        eprintln!("  {}: {}", topic(ch), subscribers_on(*p, ch));
                    }
                }
                panic!(
                    "after {} of {} deliveries (refused {refused}): {other:?}; missing {missing:?}",
                    got.len(),
                    accepted.len()
                )
            }
        }
    }
    for v in &accepted {
        assert!(
            got.contains(v),
            "publish {v} was answered 200 but not delivered"
        );
    }
    // The shard's master (restarted, or the promoted replica) has the subscriber node's
    // subscriptions again.
    let master = match disruption {
        Disruption::MoveSlotsToMaster1 => cluster.ports[1],
        _ => cluster.ports[replica.unwrap_or(0)],
    };
    for ch in &on_restarted {
        assert_eq!(subscribers_on(master, ch), 1, "{ch}");
    }
    assert_eq!(a.admin_get("/readyz").await.0, 200);
    assert_eq!(b.admin_get("/readyz").await.0, 200);
}

#[tokio::test]
async fn redis_cluster_master_restart_under_steady_publishing() {
    steady_publishing_through(Disruption::RestartMaster0).await;
}

#[tokio::test]
async fn redis_cluster_failover_under_steady_publishing() {
    steady_publishing_through(Disruption::FailoverMaster0).await;
}

#[tokio::test]
async fn redis_cluster_resharding_under_steady_publishing() {
    steady_publishing_through(Disruption::MoveSlotsToMaster1).await;
}

fn wall_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
}
