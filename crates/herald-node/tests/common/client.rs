//! A raw Pusher-protocol WebSocket client (fastwebsockets) for the tests.
#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::{FragmentCollector, Frame, OpCode, Payload};
use http_body_util::Empty;
use hyper::upgrade::Upgraded;
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;

use super::{KEY, SECRET};

struct SpawnExecutor;

impl<Fut> hyper::rt::Executor<Fut> for SpawnExecutor
where
    Fut: Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    fn execute(&self, fut: Fut) {
        tokio::spawn(fut);
    }
}

/// A raw Pusher-protocol WebSocket client.
pub struct Client {
    pub ws: FragmentCollector<TokioIo<Upgraded>>,
    pub socket_id: String,
}

pub const WAIT: Duration = Duration::from_secs(5);

impl Client {
    pub async fn connect(port: u16, path: &str, origin: Option<&str>) -> Client {
        Self::connect_with(port, path, origin, true).await
    }

    /// `auto_pong = false` makes a client that never answers protocol pings.
    pub async fn connect_with(
        port: u16,
        path: &str,
        origin: Option<&str>,
        auto_pong: bool,
    ) -> Client {
        let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut req = Request::builder()
            .method("GET")
            .uri(format!("http://127.0.0.1:{port}{path}"))
            .header("Host", format!("127.0.0.1:{port}"))
            .header("Upgrade", "websocket")
            .header("Connection", "upgrade")
            .header(
                "Sec-WebSocket-Key",
                fastwebsockets::handshake::generate_key(),
            )
            .header("Sec-WebSocket-Version", "13");
        if let Some(o) = origin {
            req = req.header("Origin", o);
        }
        let (ws, _) = fastwebsockets::handshake::client(
            &SpawnExecutor,
            req.body(Empty::<Bytes>::new()).unwrap(),
            stream,
        )
        .await
        .expect("handshake");
        let mut ws = ws;
        ws.set_auto_pong(auto_pong);
        Client {
            ws: FragmentCollector::new(ws),
            socket_id: String::new(),
        }
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws
            .write_frame(Frame::text(Payload::Borrowed(text.as_bytes())))
            .await
            .unwrap();
    }

    pub async fn send(&mut self, v: Value) {
        self.send_text(&v.to_string()).await;
    }

    pub async fn send_frame(&mut self, frame: Frame<'_>) {
        self.ws.write_frame(frame).await.unwrap();
    }

    /// Next text frame as JSON (panics on close or timeout).
    pub async fn recv(&mut self) -> Value {
        match self.next().await {
            Event::Text(v) => v,
            Event::Close(code, reason) => panic!("closed with {code} {reason}"),
            Event::Timeout => panic!("no frame within {WAIT:?}"),
        }
    }

    /// Next frame, or a timeout.
    pub async fn next_within(&mut self, wait: Duration) -> Event {
        loop {
            let frame = match tokio::time::timeout(wait, self.ws.read_frame()).await {
                Err(_) => return Event::Timeout,
                Ok(Err(_)) => return Event::Close(1006, String::new()),
                Ok(Ok(f)) => f,
            };
            match frame.opcode {
                OpCode::Text => {
                    return Event::Text(
                        serde_json::from_slice(&frame.payload).expect("server sends JSON"),
                    )
                }
                OpCode::Close => {
                    let code = if frame.payload.len() >= 2 {
                        u16::from_be_bytes([frame.payload[0], frame.payload[1]])
                    } else {
                        1005
                    };
                    let reason =
                        String::from_utf8_lossy(frame.payload.get(2..).unwrap_or(&[])).into_owned();
                    return Event::Close(code, reason);
                }
                _ => continue,
            }
        }
    }

    pub async fn next(&mut self) -> Event {
        self.next_within(WAIT).await
    }

    /// Reads until an event named `event` arrives; returns it.
    pub async fn recv_event(&mut self, event: &str) -> Value {
        loop {
            let v = self.recv().await;
            if v["event"] == event {
                return v;
            }
        }
    }

    /// Asserts nothing arrives for `wait`.
    pub async fn expect_silence(&mut self, wait: Duration) {
        match self.next_within(wait).await {
            Event::Timeout => {}
            other => panic!("expected silence, got {other:?}"),
        }
    }

    /// Reads until the close frame; returns its code. Panics on a timeout.
    pub async fn expect_close(&mut self) -> (u16, Vec<Value>) {
        let mut before = Vec::new();
        loop {
            match self.next().await {
                Event::Text(v) => before.push(v),
                Event::Close(code, _) => return (code, before),
                Event::Timeout => panic!("no close within {WAIT:?}; got {before:?}"),
            }
        }
    }

    pub async fn subscribe(&mut self, channel: &str) -> Value {
        self.send(
            serde_json::json!({"event":"pusher:subscribe","data":{"channel":channel,"auth":""}}),
        )
        .await;
        self.recv().await
    }

    /// Signs in as `user_data` with app `key`/`secret`; returns the signin_success frame.
    pub async fn signin_as(&mut self, key: &str, secret: &str, user_data: &str) -> Value {
        let sig = herald_protocol::signature::sign(
            secret,
            format!("{}::user::{user_data}", self.socket_id).as_bytes(),
        );
        self.send(serde_json::json!({"event":"pusher:signin","data":{"auth":format!("{key}:{sig}"),"user_data":user_data}}))
            .await;
        self.recv_event("pusher:signin_success").await
    }

    pub async fn subscribe_private(&mut self, channel: &str) -> Value {
        let auth = auth(&self.socket_id, channel, None);
        self.send(
            serde_json::json!({"event":"pusher:subscribe","data":{"channel":channel,"auth":auth}}),
        )
        .await;
        self.recv().await
    }

    pub async fn subscribe_presence(&mut self, channel: &str, user_id: &str) -> Value {
        let data = serde_json::json!({"user_id": user_id, "user_info": {"name": format!("user {user_id}")}}).to_string();
        let auth = auth(&self.socket_id, channel, Some(&data));
        self.send(serde_json::json!({"event":"pusher:subscribe","data":{"channel":channel,"auth":auth,"channel_data":data}}))
            .await;
        self.recv_event("pusher_internal:subscription_succeeded")
            .await
    }
}

#[derive(Debug)]
pub enum Event {
    Text(Value),
    Close(u16, String),
    Timeout,
}

/// `key:signature` for a channel subscription.
pub fn auth(socket_id: &str, channel: &str, channel_data: Option<&str>) -> String {
    let input = match channel_data {
        Some(d) => format!("{socket_id}:{channel}:{d}"),
        None => format!("{socket_id}:{channel}"),
    };
    format!(
        "{KEY}:{}",
        herald_protocol::signature::sign(SECRET, input.as_bytes())
    )
}

/// The `data` field of a frame, parsed.
pub fn data(frame: &Value) -> Value {
    match &frame["data"] {
        Value::String(s) => serde_json::from_str(s).unwrap_or(Value::String(s.clone())),
        other => other.clone(),
    }
}
