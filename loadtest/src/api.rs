//! Publishing through the signed Pusher HTTP API (`POST /apps/{id}/events` and
//! `/batch_events`) over one keep-alive HTTP/1.1 connection per publisher.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::pusher::{AppCredentials, EVENT_NAME};

pub struct Publisher {
    sender: SendRequest<Full<Bytes>>,
    authority: String,
    creds: AppCredentials,
}

impl Publisher {
    pub async fn connect(addr: SocketAddr, creds: AppCredentials) -> Result<Publisher> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect to HTTP API at {addr}"))?;
        stream.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Publisher { sender, authority: addr.to_string(), creds })
    }

    /// Triggers one event on one channel.
    pub async fn trigger(&mut self, channel: &str, data: &str) -> Result<()> {
        let body = serde_json::json!({ "name": EVENT_NAME, "channel": channel, "data": data });
        self.post("events", body.to_string()).await
    }

    /// Triggers several events in one `batch_events` request.
    pub async fn trigger_batch(&mut self, items: &[(String, String)]) -> Result<()> {
        let batch: Vec<_> = items
            .iter()
            .map(|(channel, data)| serde_json::json!({ "name": EVENT_NAME, "channel": channel, "data": data }))
            .collect();
        self.post("batch_events", serde_json::json!({ "batch": batch }).to_string()).await
    }

    async fn post(&mut self, endpoint: &str, body: String) -> Result<()> {
        let path = format!("/apps/{}/{endpoint}", self.creds.app_id);
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let query = herald_protocol::api_auth::signed_query(
            &self.creds.key,
            &self.creds.secret,
            "POST",
            &path,
            &[],
            body.as_bytes(),
            now,
        );
        let request = hyper::Request::post(format!("{path}?{query}"))
            .header("host", &self.authority)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))?;
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            bail!("HTTP {status}: {}", String::from_utf8_lossy(&body));
        }
        Ok(())
    }
}
