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
    addr: SocketAddr,
    authority: String,
    creds: AppCredentials,
}

async fn open(addr: SocketAddr) -> Result<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect to HTTP API at {addr}"))?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

impl Publisher {
    pub async fn connect(addr: SocketAddr, creds: AppCredentials) -> Result<Publisher> {
        let sender = open(addr).await?;
        Ok(Publisher {
            sender,
            addr,
            authority: addr.to_string(),
            creds,
        })
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
        self.post(
            "batch_events",
            serde_json::json!({ "batch": batch }).to_string(),
        )
        .await
    }

    /// A history channel's stream position (`GET …/channels/{name}/history?limit=0`): epoch
    /// and last offset.
    pub async fn position(&mut self, channel: &str) -> Result<(String, u64)> {
        let path = format!("/apps/{}/channels/{channel}/history", self.creds.app_id);
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let query = herald_protocol::api_auth::signed_query(
            &self.creds.key,
            &self.creds.secret,
            "GET",
            &path,
            &[("limit", "0")],
            b"",
            now,
        );
        if self.sender.is_closed() || self.sender.ready().await.is_err() {
            self.sender = open(self.addr).await?;
        }
        let request = hyper::Request::get(format!("{path}?{query}"))
            .header("host", &self.authority)
            .body(Full::new(Bytes::new()))?;
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            bail!("HTTP {status}: {}", String::from_utf8_lossy(&body));
        }
        let v: serde_json::Value = serde_json::from_slice(&body)?;
        Ok((
            v["epoch"].as_str().unwrap_or_default().to_owned(),
            v["offset"].as_u64().unwrap_or(0),
        ))
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
        let uri = format!("{path}?{query}");
        let body = Bytes::from(body);
        // Some servers close keep-alive connections after a response (soketi does at times):
        // reopen and resend once when the connection is found closed.
        let mut attempt = 0;
        let response = loop {
            attempt += 1;
            if self.sender.is_closed() || self.sender.ready().await.is_err() {
                self.sender = open(self.addr).await?;
            }
            let request = hyper::Request::post(&uri)
                .header("host", &self.authority)
                .header("content-type", "application/json")
                .body(Full::new(body.clone()))?;
            match self.sender.send_request(request).await {
                Ok(r) => break r,
                Err(e) if attempt < 3 && (e.is_canceled() || e.is_closed()) => {
                    self.sender = open(self.addr).await?;
                }
                Err(e) => return Err(e.into()),
            }
        };
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            bail!("HTTP {status}: {}", String::from_utf8_lossy(&body));
        }
        Ok(())
    }
}
