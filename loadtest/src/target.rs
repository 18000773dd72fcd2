//! The server(s) under test: WebSocket endpoints, HTTP API addresses, app credentials, and which
//! loopback source address each client connection binds to.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};

use anyhow::{bail, Context, Result};

use crate::pusher::AppCredentials;
use crate::ws::Endpoint;

/// Connections per source address before another 127.0.0.x is used; stays under the ~28k
/// ephemeral ports Linux hands out per (source, destination) pair by default.
const CONNECTIONS_PER_SOURCE: usize = 25_000;

#[derive(Debug, Clone)]
pub struct Target {
    pub endpoints: Vec<Endpoint>,
    /// HTTP API address per endpoint (same host:port unless overridden).
    pub api: Vec<SocketAddr>,
    pub creds: AppCredentials,
    pub sources: usize,
}

fn host_port(url: &str, scheme_ports: &[(&str, u16)]) -> Result<(String, SocketAddr)> {
    let (scheme, rest) = url.split_once("://").unwrap_or(("ws", url));
    let default_port = scheme_ports
        .iter()
        .find(|(s, _)| *s == scheme)
        .map(|(_, p)| *p)
        .with_context(|| format!("unsupported scheme in {url} (TLS is not supported)"))?;
    let authority = rest.split('/').next().unwrap_or(rest);
    let with_port = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_owned()
    } else {
        format!("{authority}:{default_port}")
    };
    let addr = with_port
        .to_socket_addrs()
        .with_context(|| format!("resolve {with_port}"))?
        .next()
        .with_context(|| format!("no address for {with_port}"))?;
    Ok((with_port, addr))
}

impl Target {
    pub fn new(
        urls: &[String],
        api_url: Option<&str>,
        creds: AppCredentials,
        total_connections: usize,
        sources: usize,
    ) -> Result<Target> {
        if urls.is_empty() {
            bail!("at least one --url is needed");
        }
        let mut endpoints = Vec::new();
        let mut api = Vec::new();
        for url in urls {
            let (authority, addr) = host_port(url, &[("ws", 80), ("http", 80)])?;
            endpoints.push(Endpoint {
                addr,
                authority,
                path: format!(
                    "/app/{}?protocol=7&client=js&version=8.4.0&flash=false",
                    creds.key
                ),
            });
            api.push(addr);
        }
        if let Some(u) = api_url {
            let (_, addr) = host_port(u, &[("http", 80), ("ws", 80)])?;
            api[0] = addr;
        }
        let sources = if sources == 0 {
            total_connections.div_ceil(CONNECTIONS_PER_SOURCE).max(1)
        } else {
            sources
        };
        Ok(Target {
            endpoints,
            api,
            creds,
            sources: sources.min(250),
        })
    }

    /// The source address for connection `i`: none (kernel's choice) when one suffices or the
    /// server is not on IPv4 loopback, else 127.0.0.1, 127.0.0.2, … in turn.
    pub fn source_for(&self, node: usize, i: usize) -> Option<IpAddr> {
        let dst = self.endpoints[node].addr;
        if self.sources <= 1 || !matches!(dst.ip(), IpAddr::V4(v4) if v4.is_loopback()) {
            return None;
        }
        Some(IpAddr::V4(Ipv4Addr::new(
            127,
            0,
            0,
            1 + (i % self.sources) as u8,
        )))
    }
}
