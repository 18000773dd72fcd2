//! Real Redis for tests: a single `redis-server`, or a three-master Redis Cluster, on free ports.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, tempdir};

pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    dir: tempdir::Dir,
}

fn spawn_redis(port: u16, dir: &std::path::Path, extra: &[&str]) -> Child {
    Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args(["--dir", dir.to_str().unwrap()])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server starts (apt-get install redis-server)")
}

pub fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli runs");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

async fn wait_ping(port: u16) {
    for _ in 0..200 {
        if cli(port, &["PING"]) == "PONG" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("redis on {port} did not answer");
}

impl Redis {
    /// A server that requires `password` (AUTH).
    pub async fn start_with_password(password: &str) -> Redis {
        let port = free_port();
        let dir = tempdir::Dir::new();
        let mut child = spawn_redis(port, &dir.0, &["--requirepass", password]);
        for _ in 0..200 {
            if cli(port, &["-a", password, "--no-auth-warning", "PING"]) == "PONG" {
                return Redis {
                    port,
                    child: Some(child),
                    dir,
                };
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("redis with a password did not start");
    }

    /// A Sentinel watching this server as `master_name`.
    pub async fn start_sentinel(&self, master_name: &str) -> Sentinel {
        let port = free_port();
        let dir = tempdir::Dir::new();
        let conf = dir.0.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!("port {port}\nbind 127.0.0.1\nsentinel monitor {master_name} 127.0.0.1 {} 1\nsentinel down-after-milliseconds {master_name} 5000\n", self.port),
        )
        .unwrap();
        let mut child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server --sentinel starts");
        for _ in 0..200 {
            let out = cli(port, &["SENTINEL", "get-master-addr-by-name", master_name]);
            if out.contains(&self.port.to_string()) {
                return Sentinel {
                    port,
                    child,
                    _dir: dir,
                };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("sentinel did not learn the master");
    }

    pub async fn start() -> Redis {
        Redis::start_on(free_port()).await
    }

    pub async fn start_on(port: u16) -> Redis {
        let dir = tempdir::Dir::new();
        let child = spawn_redis(port, &dir.0, &[]);
        wait_ping(port).await;
        Redis {
            port,
            child: Some(child),
            dir,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL): everything in it is lost.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts a new, empty server on the same port.
    pub async fn restart(&mut self) {
        self.kill();
        self.child = Some(spawn_redis(self.port, &self.dir.0, &[]));
        wait_ping(self.port).await;
    }

    /// Sends a signal to the server (`STOP` freezes it with its connections open, `CONT`
    /// resumes it).
    pub fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            Command::new("kill")
                .args([&format!("-{sig}"), &c.id().to_string()])
                .status()
                .unwrap();
        }
    }

    pub fn numsub(&self, topic: &str) -> i64 {
        let out = cli(self.port, &["PUBSUB", "NUMSUB", topic]);
        out.lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Three masters, no replicas.
pub struct RedisCluster {
    pub ports: Vec<u16>,
    children: Vec<Child>,
    dir: tempdir::Dir,
}

impl RedisCluster {
    pub async fn start() -> RedisCluster {
        let dir = tempdir::Dir::new();
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let mut children = Vec::new();
        for p in &ports {
            let node_dir = dir.0.join(p.to_string());
            std::fs::create_dir_all(&node_dir).unwrap();
            children.push(spawn_cluster_node(*p, &node_dir));
        }
        for p in &ports {
            wait_ping(*p).await;
        }
        let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let mut args = vec!["--cluster".to_owned(), "create".to_owned()];
        args.extend(addrs);
        args.extend([
            "--cluster-replicas".to_owned(),
            "0".to_owned(),
            "--cluster-yes".to_owned(),
        ]);
        let out = Command::new("redis-cli")
            .args(&args)
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        for _ in 0..200 {
            if ports
                .iter()
                .all(|p| cli(*p, &["CLUSTER", "INFO"]).contains("cluster_state:ok"))
            {
                return RedisCluster {
                    ports,
                    children,
                    dir,
                };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("redis cluster did not become ready");
    }

    pub fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    /// Subscribers of a sharded topic, summed over the masters.
    pub fn shardnumsub(&self, topic: &str) -> i64 {
        self.ports
            .iter()
            .map(|p| {
                let out = cli(*p, &["PUBSUB", "SHARDNUMSUB", topic]);
                out.lines()
                    .nth(1)
                    .and_then(|l| l.trim().parse::<i64>().ok())
                    .unwrap_or(0)
            })
            .sum()
    }
}

/// Waits (up to 20 s) until every node in `ports` reports `cluster_state:ok` and `also` holds.
async fn wait_cluster(ports: &[u16], also: impl Fn() -> bool, what: &str) {
    for _ in 0..400 {
        if also()
            && ports
                .iter()
                .all(|p| cli(*p, &["CLUSTER", "INFO"]).contains("cluster_state:ok"))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("redis cluster: {what}");
}

fn spawn_cluster_node(port: u16, dir: &std::path::Path) -> Child {
    spawn_redis(
        port,
        dir,
        &[
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "2000",
        ],
    )
}

impl RedisCluster {
    /// Kills master `i` (SIGKILL: its data is gone) and starts it again, empty, with its
    /// cluster identity and slots; waits until the cluster is healthy again.
    pub async fn restart_node(&mut self, i: usize, down_for: Duration) {
        let _ = self.children[i].kill();
        let _ = self.children[i].wait();
        tokio::time::sleep(down_for).await;
        let port = self.ports[i];
        self.children[i] = spawn_cluster_node(port, &self.dir.0.join(port.to_string()));
        wait_cluster(&self.ports, || true, "did not recover").await;
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub struct Sentinel {
    pub port: u16,
    child: Child,
    _dir: tempdir::Dir,
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `redis-server` that speaks only TLS, its certificate (for 127.0.0.1) signed by a private CA
/// made for the test.
pub struct RedisTls {
    pub port: u16,
    child: Child,
    dir: tempdir::Dir,
}

impl RedisTls {
    pub async fn start() -> RedisTls {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let dir = tempdir::Dir::new();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "Herald test CA");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let server_key = KeyPair::generate().unwrap();
        let server = CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&server_key, &issuer)
            .unwrap();
        std::fs::write(dir.0.join("ca.pem"), ca_cert.pem()).unwrap();
        std::fs::write(dir.0.join("server.pem"), server.pem()).unwrap();
        std::fs::write(dir.0.join("server.key"), server_key.serialize_pem()).unwrap();

        let port = free_port();
        let path = |f: &str| dir.0.join(f).to_str().unwrap().to_owned();
        let child = Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--dir", dir.0.to_str().unwrap()])
            .args(["--tls-cert-file", &path("server.pem")])
            .args(["--tls-key-file", &path("server.key")])
            .args(["--tls-ca-cert-file", &path("ca.pem")])
            .args(["--tls-auth-clients", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        let redis = RedisTls { port, child, dir };
        for _ in 0..200 {
            if redis.cli(&["PING"]) == "PONG" {
                return redis;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("redis (TLS) on {port} did not answer");
    }

    /// The test CA's certificate (PEM).
    pub fn ca_file(&self) -> std::path::PathBuf {
        self.dir.0.join("ca.pem")
    }

    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }

    /// `redis-cli` over TLS, verifying the server with the test CA.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["--tls", "--cacert", self.ca_file().to_str().unwrap()])
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for RedisTls {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl RedisCluster {
    /// Starts one more node as a replica of master `i`; returns its index in `ports`.
    pub async fn add_replica_of(&mut self, i: usize) -> usize {
        let port = free_port();
        let node_dir = self.dir.0.join(port.to_string());
        std::fs::create_dir_all(&node_dir).unwrap();
        self.children.push(spawn_cluster_node(port, &node_dir));
        wait_ping(port).await;
        let master_id = cli(self.ports[i], &["CLUSTER", "MYID"]);
        let out = Command::new("redis-cli")
            .args(["--cluster", "add-node"])
            .arg(format!("127.0.0.1:{port}"))
            .arg(format!("127.0.0.1:{}", self.ports[i]))
            .args(["--cluster-slave", "--cluster-master-id", &master_id])
            .output()
            .expect("redis-cli --cluster add-node");
        assert!(
            out.status.success(),
            "add-node failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        self.ports.push(port);
        let synced = || cli(port, &["INFO", "replication"]).contains("master_link_status:up");
        wait_cluster(&self.ports, synced, "the replica did not sync").await;
        self.ports.len() - 1
    }

    /// `CLUSTER FAILOVER` on replica `j`: it becomes the master, the old master a replica (it
    /// stays up and drops its sharded subscribers for the slots it gave away).
    pub async fn failover_to(&self, j: usize) {
        assert_eq!(cli(self.ports[j], &["CLUSTER", "FAILOVER"]), "OK");
        let promoted = || cli(self.ports[j], &["ROLE"]).starts_with("master");
        wait_cluster(&self.ports, promoted, "the failover did not complete").await;
    }
}

impl RedisCluster {
    /// Moves the slots of `keys` (with everything in them) from master `from` to master `to`,
    /// the way `redis-cli --cluster reshard` does: IMPORTING/MIGRATING, MIGRATE, SETSLOT NODE.
    pub async fn move_slots(&self, from: usize, to: usize, keys: &[String]) {
        let (src, dst) = (self.ports[from], self.ports[to]);
        let src_id = cli(src, &["CLUSTER", "MYID"]);
        let dst_id = cli(dst, &["CLUSTER", "MYID"]);
        for key in keys {
            let s = cli(src, &["CLUSTER", "KEYSLOT", key]);
            assert_eq!(
                cli(dst, &["CLUSTER", "SETSLOT", &s, "IMPORTING", &src_id]),
                "OK"
            );
            assert_eq!(
                cli(src, &["CLUSTER", "SETSLOT", &s, "MIGRATING", &dst_id]),
                "OK"
            );
            loop {
                let in_slot = cli(src, &["CLUSTER", "GETKEYSINSLOT", &s, "100"]);
                let in_slot: Vec<&str> = in_slot.lines().filter(|k| !k.is_empty()).collect();
                if in_slot.is_empty() {
                    break;
                }
                let port = dst.to_string();
                let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
                args.extend(in_slot);
                assert_eq!(cli(src, &args), "OK");
            }
            for p in &self.ports {
                cli(*p, &["CLUSTER", "SETSLOT", &s, "NODE", &dst_id]);
            }
        }
        // Every other node redirects the keys to the new master.
        let moved = || {
            keys.iter().all(|key| {
                self.ports.iter().filter(|p| **p != dst).all(|p| {
                    cli(*p, &["EXISTS", key]).starts_with("MOVED")
                        && cli(*p, &["EXISTS", key]).ends_with(&format!(":{dst}"))
                })
            })
        };
        wait_cluster(&self.ports, moved, "the slots did not move").await;
    }
}
