//! What the fault tests share: a client's view of a presence channel, a steady publisher and
//! the check of what its subscribers got, convergence of every node's answers, readiness.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use super::*;

/// A client's view of a presence channel's members, kept from the frames it receives.
pub struct Members {
    pub client: Client,
    pub ids: BTreeSet<String>,
    pub removals: usize,
}

impl Members {
    pub async fn join(node: &Herald, channel: &str, user: &str) -> Members {
        let mut client = node.client().await;
        let ok = client.subscribe_presence(channel, user).await;
        let ids = data(&ok)["presence"]["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect();
        Members {
            client,
            ids,
            removals: 0,
        }
    }

    /// Applies member events for `wait`.
    pub async fn follow(&mut self, wait: Duration) {
        let until = Instant::now() + wait;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match self.client.next_within(left).await {
                Event::Text(v) if v["event"] == "pusher_internal:member_added" => {
                    self.ids
                        .insert(data(&v)["user_id"].as_str().unwrap().to_owned());
                }
                Event::Text(v) if v["event"] == "pusher_internal:member_removed" => {
                    self.ids.remove(data(&v)["user_id"].as_str().unwrap());
                    self.removals += 1;
                }
                Event::Text(_) => {}
                Event::Timeout => return,
                Event::Close(code, why) => panic!("closed {code} {why}"),
            }
        }
    }
}

pub async fn users(node: &Herald, channel: &str) -> Option<BTreeSet<String>> {
    let (status, body) = node
        .api()
        .call("GET", &format!("/channels/{channel}/users"), &[], "")
        .await;
    (status == 200).then(|| {
        body["users"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["id"].as_str().unwrap().to_owned())
            .collect()
    })
}

pub async fn subscription_count(node: &Herald, channel: &str) -> Option<u64> {
    let (status, body) = node
        .api()
        .call(
            "GET",
            &format!("/channels/{channel}"),
            &[("info", "subscription_count")],
            "",
        )
        .await;
    (status == 200).then(|| body["subscription_count"].as_u64().unwrap_or(0))
}

/// Waits until every node's answers match the connected clients: the presence members, the
/// subscription count of `counted`, readiness. Returns how long it took.
pub async fn converges(
    nodes: &[Herald],
    presence: &str,
    members: &[&str],
    counted: &str,
    count: u64,
) -> Duration {
    let want: BTreeSet<String> = members.iter().map(|m| m.to_string()).collect();
    let started = Instant::now();
    loop {
        let mut ok = true;
        for n in nodes {
            ok &= users(n, presence).await.as_ref() == Some(&want)
                && subscription_count(n, counted).await == Some(count)
                && n.admin_get("/readyz").await.0 == 200;
        }
        if ok {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "not converged after 15 s: users {:?}, count {:?}",
            users(&nodes[0], presence).await,
            subscription_count(&nodes[0], counted).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Publishes a numbered event every 50 ms until stopped; records each status and send time.
pub struct Publisher {
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<Vec<(u32, u16, Instant)>>,
}

impl Publisher {
    pub fn start(api: Api, channel: &'static str) -> Publisher {
        let stop = tokio_util::sync::CancellationToken::new();
        let s = stop.clone();
        let task = tokio::spawn(async move {
            let mut out = Vec::new();
            let mut i = 0;
            while !s.is_cancelled() {
                i += 1;
                let sent = Instant::now();
                let (status, body) = api.trigger(&[channel], "tick", &i.to_string(), None).await;
                assert!(matches!(status, 200 | 503 | 504), "{status} {body}");
                out.push((i, status, sent));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            out
        });
        Publisher { stop, task }
    }

    pub async fn finish(self) -> Vec<(u32, u16, Instant)> {
        self.stop.cancel();
        self.task.await.unwrap()
    }
}

/// Reads `tick` events for `wait`; returns (value, arrival) in order.
pub async fn ticks(client: &mut Client, wait: Duration) -> Vec<(u32, Instant)> {
    let mut out = Vec::new();
    let until = Instant::now() + wait;
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        match client.next_within(left).await {
            Event::Text(v) if v["event"] == "tick" => {
                out.push((v["data"].as_str().unwrap().parse().unwrap(), Instant::now()))
            }
            Event::Text(_) => {}
            Event::Timeout => break,
            Event::Close(code, why) => panic!("closed {code} {why}"),
        }
    }
    out
}

/// What a subscriber got against what the publisher was told: every 200 delivered in order,
/// nothing answered 503 delivered, nothing delivered more than 2 s after it was sent. Returns
/// (200s, 503s, 504s, 504s delivered).
pub fn check_deliveries(
    sent: &[(u32, u16, Instant)],
    got: &[(u32, Instant)],
) -> (usize, usize, usize, usize) {
    let status: BTreeMap<u32, (u16, Instant)> =
        sent.iter().map(|(i, s, t)| (*i, (*s, *t))).collect();
    let confirmed: Vec<u32> = sent.iter().filter(|x| x.1 == 200).map(|x| x.0).collect();
    let received: Vec<u32> = got.iter().map(|x| x.0).collect();
    let received_confirmed: Vec<u32> = received
        .iter()
        .copied()
        .filter(|i| status.get(i).is_some_and(|s| s.0 == 200))
        .collect();
    assert_eq!(
        received_confirmed, confirmed,
        "every 200 delivered, in order, once"
    );
    for (i, at) in got {
        let (s, sent_at) = status.get(i).copied().expect("a value that was sent");
        assert_ne!(s, 503, "publish {i} was answered 503 but delivered");
        let late = at.duration_since(sent_at);
        assert!(
            late < Duration::from_secs(2),
            "publish {i} ({s}) delivered {late:?} after it was sent"
        );
    }
    let count = |code| sent.iter().filter(|x| x.1 == code).count();
    let delivered_504 = got
        .iter()
        .filter(|(i, _)| status.get(i).is_some_and(|s| s.0 == 504))
        .count();
    (count(200), count(503), count(504), delivered_504)
}

pub async fn not_ready_within(node: &Herald, wait: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let (status, body) = node.admin_get("/readyz").await;
        if status == 503 {
            assert!(body.contains("bus"), "{body}");
            return started.elapsed();
        }
        assert!(started.elapsed() < wait, "/readyz still 200 after {wait:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Connects a client that retries refused handshakes (4100: over the handshake rate) after a
/// jittered pause, as pusher-js does; subscribes it.
pub async fn storm_client(port: u16, channel: String) -> Client {
    loop {
        let mut c = Client::connect(port, "/app/key1?protocol=7", None).await;
        match c.next().await {
            Event::Text(v) if v["event"] == "pusher:connection_established" => {
                let data: serde_json::Value =
                    serde_json::from_str(v["data"].as_str().unwrap()).unwrap();
                c.socket_id = data["socket_id"].as_str().unwrap().to_owned();
                let ok = c.subscribe(&channel).await;
                assert_eq!(
                    ok["event"], "pusher_internal:subscription_succeeded",
                    "{ok}"
                );
                return c;
            }
            Event::Text(v) if v["data"]["code"] == 4100 => {
                let pause = 200 + rand_ms(800);
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            other => panic!("{other:?}"),
        }
    }
}

pub fn rand_ms(below: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(Instant::now().elapsed().as_nanos() as u64);
    h.finish() % below
}

pub fn rss_kib(h: &Herald) -> i64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", h.child.id())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}
