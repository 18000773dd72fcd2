//! Building fred clients from Herald's bus settings: one Redis, Redis Cluster, or Sentinel,
//! with `rediss://` TLS and credentials taken from the URLs.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fred::clients::SubscriberClient;
use fred::prelude::*;
use fred::types::config::{ClusterDiscoveryPolicy, Server, TlsConnector};
use tokio_rustls::rustls::{
    self,
    pki_types::{pem::PemObject, CertificateDer},
    RootCertStore,
};

use crate::RedisBusConfig;

/// Which kind of Redis deployment the bus talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    Single,
    Cluster,
    Sentinel,
}

fn server_of(url: &str) -> Result<(Config, Server), Error> {
    let config = Config::from_url(url)?;
    let server = match &config.server {
        ServerConfig::Centralized { server } => server.clone(),
        ServerConfig::Clustered { hosts, .. } | ServerConfig::Sentinel { hosts, .. } => hosts
            .first()
            .cloned()
            .ok_or_else(|| Error::new(ErrorKind::Config, format!("no host in {url}")))?,
        #[allow(unreachable_patterns)]
        _ => {
            return Err(Error::new(
                ErrorKind::Config,
                format!("unsupported Redis URL {url}"),
            ))
        }
    };
    Ok((config, server))
}

/// The fred configuration for the given settings.
pub fn fred_config(cfg: &RedisBusConfig) -> Result<(Config, Topology), Error> {
    if !cfg.cluster_urls.is_empty() {
        let mut hosts = Vec::new();
        let mut base = None;
        for url in &cfg.cluster_urls {
            let (config, server) = server_of(url)?;
            hosts.push(server);
            base.get_or_insert(config);
        }
        let mut config =
            base.ok_or_else(|| Error::new(ErrorKind::Config, "bus.cluster_urls is empty"))?;
        config.server = ServerConfig::Clustered {
            hosts,
            policy: ClusterDiscoveryPolicy::default(),
        };
        return Ok((config, Topology::Cluster));
    }
    if !cfg.sentinel_urls.is_empty() {
        let mut hosts = Vec::new();
        let mut base = None;
        for url in &cfg.sentinel_urls {
            let (config, server) = server_of(url)?;
            hosts.push(server);
            base.get_or_insert(config);
        }
        let mut config =
            base.ok_or_else(|| Error::new(ErrorKind::Config, "bus.sentinel_urls is empty"))?;
        let service_name = cfg.sentinel_master.clone().ok_or_else(|| {
            Error::new(
                ErrorKind::Config,
                "bus.sentinel_master is required with sentinels",
            )
        })?;
        config.server = ServerConfig::Sentinel {
            hosts,
            service_name,
        };
        return Ok((config, Topology::Sentinel));
    }
    let url = cfg
        .url
        .as_deref()
        .ok_or_else(|| Error::new(ErrorKind::Config, "bus.url is required"))?;
    Ok((Config::from_url_centralized(url)?, Topology::Single))
}

/// TLS for `rediss://`: the system's roots plus the CA certificates of `ca_file` (a Redis whose
/// certificate a private CA signed), with the ring provider.
fn rustls_connector(ca_file: Option<&Path>) -> Result<TlsConnector, Error> {
    let tls_error = |msg: String| Error::new(ErrorKind::Tls, msg);
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::warn!(error = %e, "loading the system's CA certificates");
    }
    let (_, unusable) = roots.add_parsable_certificates(native.certs);
    if unusable > 0 {
        tracing::debug!(unusable, "system CA certificates skipped");
    }
    if let Some(path) = ca_file {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| tls_error(format!("bus.tls_ca_file {}: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(tls_error(format!(
                "bus.tls_ca_file {}: no certificate in it",
                path.display()
            )));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| tls_error(format!("bus.tls_ca_file {}: {e}", path.display())))?;
        }
    }
    if roots.is_empty() {
        return Err(tls_error(
            "no CA certificate to verify Redis with: set bus.tls_ca_file".into(),
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config.into())
}

/// A command client and a subscriber client, not yet connected.
pub fn build(cfg: &RedisBusConfig) -> Result<(Client, SubscriberClient, Topology), Error> {
    let (mut config, topology) = fred_config(cfg)?;
    if config.tls.is_some() {
        config.tls = Some(rustls_connector(cfg.tls_ca_file.as_deref())?.into());
    } else if cfg.tls_ca_file.is_some() {
        return Err(Error::new(
            ErrorKind::Config,
            "bus.tls_ca_file is set but the Redis URL is not rediss://",
        ));
    }
    config.fail_fast = true;
    let mut builder = Builder::from_config(config);
    builder
        .with_performance_config(|p| {
            p.default_command_timeout = cfg.command_timeout;
        })
        .with_connection_config(|c| {
            c.connection_timeout = Duration::from_secs(2);
            c.internal_command_timeout = Duration::from_secs(2);
            // Room for MOVED and ASK during a slot migration: fred 10 ends the whole client
            // when an ASK arrives for a command with no attempts left ("Max attempts reached").
            c.max_command_attempts = 10;
            // A stalled Redis keeps its TCP connections up: a connection with a command
            // unanswered this long is closed and reconnected (the recovery round follows).
            c.unresponsive.max_timeout = Some(cfg.unresponsive_after);
            c.unresponsive.interval = (cfg.unresponsive_after / 4).max(Duration::from_millis(100));
        })
        .set_policy(ReconnectPolicy::new_constant(
            0,
            cfg.reconnect_delay.as_millis() as u32,
        ));
    let client = builder.build()?;
    // Only the subscriber client receives bus messages, read by one task that only pushes
    // into outboxes: it alone gets a deep channel. fred allocates every event channel of a
    // client at this capacity up front (about 48 MB per client at 65,536), so the command
    // client keeps fred's default.
    builder.with_performance_config(|p| p.broadcast_channel_capacity = 1 << 16);
    let subscriber = builder.build_subscriber_client()?;
    Ok((client, subscriber, topology))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_ca_file_needs_rediss_and_a_readable_pem() {
        let mut c = cfg();
        c.url = Some("redis://127.0.0.1:6379".into());
        c.tls_ca_file = Some("/nonexistent/ca.pem".into());
        let e = build(&c).expect_err("a CA without TLS is a mistake");
        assert!(e.details().contains("not rediss://"), "{e}");

        c.url = Some("rediss://127.0.0.1:6379".into());
        let e = build(&c).expect_err("missing CA file");
        assert!(e.details().contains("/nonexistent/ca.pem"), "{e}");

        let dir = std::env::temp_dir().join(format!("herald-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        c.tls_ca_file = Some(empty);
        let e = build(&c).expect_err("no certificate in the file");
        assert!(e.details().contains("no certificate"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn cfg() -> RedisBusConfig {
        RedisBusConfig::new("n1")
    }

    #[test]
    fn single_cluster_and_sentinel() {
        let mut c = cfg();
        c.url = Some("redis://user:pw@127.0.0.1:6380/0".into());
        let (config, t) = fred_config(&c).expect("ok");
        assert_eq!(t, Topology::Single);
        assert_eq!(config.username.as_deref(), Some("user"));
        assert_eq!(config.password.as_deref(), Some("pw"));

        let mut c = cfg();
        c.cluster_urls = vec![
            "redis://127.0.0.1:7000".into(),
            "redis://127.0.0.1:7001".into(),
        ];
        let (config, t) = fred_config(&c).expect("ok");
        assert_eq!(t, Topology::Cluster);
        assert!(
            matches!(config.server, ServerConfig::Clustered { ref hosts, .. } if hosts.len() == 2)
        );

        let mut c = cfg();
        c.sentinel_urls = vec!["redis://127.0.0.1:26379".into()];
        assert!(fred_config(&c).is_err(), "sentinel needs a master name");
        c.sentinel_master = Some("mymaster".into());
        let (config, t) = fred_config(&c).expect("ok");
        assert_eq!(t, Topology::Sentinel);
        assert!(
            matches!(config.server, ServerConfig::Sentinel { ref service_name, .. } if service_name == "mymaster")
        );
    }
}
