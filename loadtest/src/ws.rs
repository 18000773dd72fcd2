//! A minimal WebSocket client connection: HTTP upgrade, masked text frames out, server frames in.
//!
//! Why not a WebSocket crate: the scenarios wait on "next frame" and on commands in one
//! `tokio::select!`, so reading must be cancel-safe (a frame is consumed only once complete and
//! the bytes stay in our buffer otherwise), the bytes that follow the `101` response in the same
//! segment must not be lost, and the hot path (one small text frame per delivery) should not
//! allocate. A client that only sends small masked text frames and reads unmasked server frames
//! needs very little of RFC 6455, so it lives here.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::pusher::{classify, Event};

const INITIAL_BUFFER: usize = 4096;
const MAX_FRAME: usize = 1 << 20;

/// Where and how to open a WebSocket.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// `host:port` for the Host header.
    pub authority: String,
    /// Path and query, e.g. `/app/key?protocol=7&...`.
    pub path: String,
}

/// One client connection after a successful upgrade.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    fragments: Vec<u8>,
    write_buf: Vec<u8>,
    mask_state: u32,
}

impl Conn {
    /// Connects (optionally from a given loopback source address), performs the upgrade and
    /// returns the connection; the Pusher handshake frame is read by the caller.
    pub async fn open(endpoint: &Endpoint, source: Option<IpAddr>, seed: u32) -> Result<Conn> {
        let socket = match endpoint.addr {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        if let Some(ip) = source {
            socket
                .bind(SocketAddr::new(ip, 0))
                .with_context(|| format!("bind {ip}"))?;
        }
        let stream = tokio::time::timeout(Duration::from_secs(10), socket.connect(endpoint.addr))
            .await
            .context("connect timed out")??;
        stream.set_nodelay(true)?;
        // An abortive close (RST) on drop: no TIME_WAIT on our side, so storms and repeated runs
        // do not exhaust ephemeral ports, and the server sees what a dead network looks like.
        stream.set_zero_linger()?;
        let mut conn = Conn {
            stream,
            buf: vec![0; INITIAL_BUFFER],
            start: 0,
            end: 0,
            fragments: Vec::new(),
            write_buf: Vec::with_capacity(256),
            mask_state: seed | 1,
        };
        conn.upgrade(endpoint).await?;
        Ok(conn)
    }

    async fn upgrade(&mut self, endpoint: &Endpoint) -> Result<()> {
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            endpoint.path, endpoint.authority
        );
        self.stream.write_all(request.as_bytes()).await?;
        loop {
            if let Some(pos) = memchr::memmem::find(&self.buf[..self.end], b"\r\n\r\n") {
                let head = &self.buf[..pos];
                if !(head.starts_with(b"HTTP/1.1 101") || head.starts_with(b"HTTP/1.0 101")) {
                    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
                    bail!("upgrade refused: {}", String::from_utf8_lossy(line));
                }
                self.start = pos + 4;
                if self.start == self.end {
                    self.start = 0;
                    self.end = 0;
                }
                return Ok(());
            }
            if self.end == self.buf.len() {
                bail!("upgrade response headers too large");
            }
            let n = self.stream.read(&mut self.buf[self.end..]).await?;
            if n == 0 {
                bail!("connection closed during upgrade");
            }
            self.end += n;
        }
    }

    /// The next Pusher-level event. Cancel-safe: a partially received frame stays buffered.
    pub async fn next_event(&mut self) -> Result<Event> {
        loop {
            if let Some(event) = self.parse_buffered()? {
                return Ok(event);
            }
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.end == self.buf.len() {
                let len = self.buf.len() * 2;
                self.buf.resize(len, 0);
            }
            let n = self.stream.read(&mut self.buf[self.end..]).await?;
            if n == 0 {
                bail!("connection closed by server");
            }
            self.end += n;
        }
    }

    /// Parses complete frames from the buffer until one yields an event.
    fn parse_buffered(&mut self) -> Result<Option<Event>> {
        loop {
            let avail = &self.buf[self.start..self.end];
            if avail.len() < 2 {
                return Ok(None);
            }
            let fin = avail[0] & 0x80 != 0;
            let opcode = avail[0] & 0x0f;
            let masked = avail[1] & 0x80 != 0;
            let (len, mut header) = match avail[1] & 0x7f {
                126 if avail.len() >= 4 => (u16::from_be_bytes([avail[2], avail[3]]) as usize, 4),
                127 if avail.len() >= 10 => {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&avail[2..10]);
                    (u64::from_be_bytes(b) as usize, 10)
                }
                126 | 127 => return Ok(None),
                n => (n as usize, 2),
            };
            if len > MAX_FRAME {
                bail!("frame of {len} bytes is larger than the {MAX_FRAME} limit");
            }
            let mask = if masked {
                if avail.len() < header + 4 {
                    return Ok(None);
                }
                let m = [
                    avail[header],
                    avail[header + 1],
                    avail[header + 2],
                    avail[header + 3],
                ];
                header += 4;
                Some(m)
            } else {
                None
            };
            let total = header + len;
            if avail.len() < total {
                if total > self.buf.len() {
                    // Make room for the whole frame; next_event compacts before reading.
                    self.buf.resize(total.next_power_of_two(), 0);
                }
                return Ok(None);
            }
            let begin = self.start + header;
            let payload = &mut self.buf[begin..begin + len];
            if let Some(m) = mask {
                for (i, b) in payload.iter_mut().enumerate() {
                    *b ^= m[i & 3];
                }
            }
            self.start += total;
            if self.start == self.end {
                self.start = 0;
                self.end = 0;
            }
            let payload = &self.buf[begin..begin + len];
            match opcode {
                0x1 | 0x2 if fin && self.fragments.is_empty() => {
                    return Ok(Some(classify(payload)))
                }
                0x1 | 0x2 => self.fragments.extend_from_slice(payload),
                0x0 => {
                    self.fragments.extend_from_slice(payload);
                    if fin {
                        let event = classify(&self.fragments);
                        self.fragments.clear();
                        return Ok(Some(event));
                    }
                }
                0x8 => {
                    let code = if payload.len() >= 2 {
                        u16::from_be_bytes([payload[0], payload[1]])
                    } else {
                        1005
                    };
                    return Ok(Some(Event::Closed(code)));
                }
                0x9 => {
                    let mut data = [0u8; 125];
                    let n = payload.len().min(125);
                    data[..n].copy_from_slice(&payload[..n]);
                    return Ok(Some(Event::WsPing(data, n as u8)));
                }
                _ => {}
            }
        }
    }

    /// Sends one masked text frame.
    pub async fn send_text(&mut self, payload: &[u8]) -> Result<()> {
        self.send_frame(0x1, payload).await
    }

    /// Answers a WebSocket ping.
    pub async fn send_pong(&mut self, payload: &[u8]) -> Result<()> {
        self.send_frame(0xA, payload).await
    }

    async fn send_frame(&mut self, opcode: u8, payload: &[u8]) -> Result<()> {
        // xorshift32: masks only need to vary, not to be secret, for a load generator.
        let mut x = self.mask_state;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.mask_state = x;
        let mask = x.to_be_bytes();
        let out = &mut self.write_buf;
        out.clear();
        out.push(0x80 | opcode);
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= u16::MAX as usize => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        self.stream.write_all(out).await?;
        Ok(())
    }
}
