//! One WebSocket connection: admission, then one task that reads client frames into the
//! session and writes the connection's outbound queue, pings and close.
//!
//! The task waits on three things at once — a client frame (the reader is cancel-safe), the
//! outbound queue, and one timer — and after each wake writes everything queued in one
//! `write_all`, with frame headers from fastwebsockets: a burst of fan-out costs one syscall
//! per connection, and a reply goes out in the same poll that handled the request. A write to
//! a client that stopped reading is abandoned as soon as the connection is told to close.

use std::sync::Arc;
use std::time::Duration;

use fastwebsockets::{Frame, OpCode, Payload};
use herald_hub::{Activity, Connection, Refusal, Session};
use herald_protocol::{server, ErrorCode, SocketId};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use crate::apps_store::sync::By;
use crate::frames::{FrameReader, Message, ReadError};
use crate::metrics;
use crate::node::{Node, OpenGuard};

/// What the HTTP layer knows of the upgrade request.
#[derive(Debug)]
pub struct Handshake {
    pub app_key: String,
    pub protocol: Option<String>,
    pub origin: Option<String>,
}

/// Refuses a connection: `pusher:error` then a close frame with the same code.
/// Boxed: a refusal is rare, and its state would otherwise enlarge every connection's task.
fn refuse<'a>(
    io: &'a mut TokioIo<Upgraded>,
    code: u16,
    message: &'a str,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
    Box::pin(refuse_inner(io, code, message))
}

async fn refuse_inner(io: &mut TokioIo<Upgraded>, code: u16, message: &str) {
    let mut buf = Vec::new();
    push_text(&mut buf, &server::error(Some(code), message));
    push_close(&mut buf, code, message);
    let _ = io.write_all(&buf).await;
    let _ = io.shutdown().await;
}

fn push_frame(buf: &mut Vec<u8>, mut frame: Frame<'_>) {
    let mut head = [0u8; 14];
    let n = frame.fmt_head(&mut head);
    buf.extend_from_slice(&head[..n]);
    buf.extend_from_slice(&frame.payload);
}

fn push_text(buf: &mut Vec<u8>, text: &[u8]) {
    push_frame(buf, Frame::text(Payload::Borrowed(text)));
}

fn push_close(buf: &mut Vec<u8>, code: u16, reason: &str) {
    // Close reasons are limited to 123 bytes.
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    push_frame(buf, Frame::close(code, &reason.as_bytes()[..end]));
}

/// Checks the handshake against the node (draining, capacity) and the app (key, protocol,
/// origin), and holds one of the node's connection slots for it.
fn admit<'n>(
    node: &'n Node,
    hs: &Handshake,
) -> Result<(Arc<herald_hub::App>, OpenGuard<'n>), Refusal> {
    if node.is_draining() {
        return Err(Refusal::Draining);
    }
    let app = node
        .hub
        .admit(&hs.app_key, hs.protocol.as_deref(), hs.origin.as_deref())?;
    let slot = node.reserve_connection().ok_or(Refusal::NodeFull)?;
    if !node.take_handshake_token() {
        return Err(Refusal::HandshakeRate);
    }
    Ok((app, slot))
}

/// Runs an upgraded connection to its end.
pub async fn serve(
    node: Arc<Node>,
    ws: fastwebsockets::WebSocket<TokioIo<Upgraded>>,
    hs: Handshake,
) {
    let mut io = ws.into_inner();
    // A key not in memory is looked up in a database store once (see `apps_store::sync`).
    let looked_up = match node.hub.app_by_key(&hs.app_key) {
        Some(_) => Ok(()),
        None => node
            .apps
            .lookup(By::Key, &hs.app_key)
            .await
            .map(|_| ())
            .map_err(|_| Refusal::AppsStore),
    };
    let admitted = match looked_up.and_then(|()| admit(&node, &hs)) {
        Ok((app, slot)) => match node.hub.open_connection(&app).await {
            Ok(()) => Ok((app, slot)),
            Err(refusal) => Err(refusal),
        },
        Err(refusal) => Err(refusal),
    };
    let (app, mut slot) = match admitted {
        Ok(admitted) => admitted,
        Err(refusal) => {
            metrics::refused(refusal.label());
            let code = refusal.code().as_u16();
            tracing::info!(code, reason = refusal.label(), "connection refused");
            refuse(&mut io, code, &refusal.to_string()).await;
            return;
        }
    };

    let socket_id = SocketId::generate(&mut rand::rng());
    let conn = node.hub.connect(socket_id, app.clone());
    slot.admitted(&app.id);
    tracing::info!(app = %app.id, %socket_id, "connection opened");
    node.hub
        .monitor()
        .record(&app.id, |_| Activity::ConnectionOpened {
            socket_id: socket_id.to_string(),
            origin: hs.origin.clone(),
        });
    let session = Session::start(
        node.hub.clone(),
        conn.clone(),
        node.config.server.activity_timeout,
    );
    let started = Instant::now();
    let mut reader = FrameReader::new(io, node.config.server.max_message_bytes);
    let (session, close) = run(&node, &conn, session, &mut reader).await;

    // The socket is done or the server closed it: leave every channel.
    Box::pin(session.close()).await;
    metrics::closed(&app.id, close.as_ref().map(|c| c.code));
    let seconds = started.elapsed().as_secs();
    node.hub
        .monitor()
        .record(&app.id, |_| Activity::ConnectionClosed {
            socket_id: socket_id.to_string(),
            code: close.as_ref().map(|c| c.code),
            reason: close
                .as_ref()
                .map_or_else(|| "connection lost".to_owned(), |c| c.message.to_string()),
        });
    match close {
        Some(c) if c.code >= 4000 => {
            tracing::info!(app = %app.id, %socket_id, code = c.code, reason = %c.message, seconds, "connection closed by the server")
        }
        Some(c) => {
            tracing::info!(app = %app.id, %socket_id, code = c.code, seconds, "connection closed")
        }
        None => tracing::info!(app = %app.id, %socket_id, seconds, "connection lost"),
    }
}

/// The connection's life after admission. Returns the session and the close sent, if any.
async fn run(
    node: &Node,
    conn: &Arc<Connection>,
    mut session: Session,
    reader: &mut FrameReader<TokioIo<Upgraded>>,
) -> (Session, Option<herald_hub::CloseReason>) {
    let activity = Duration::from_secs(node.config.server.activity_timeout);
    let pong_wait = Duration::from_secs(node.config.server.pong_timeout);
    let started = Instant::now();
    // "Authorized connections": sign in or subscribe to a private/presence channel in time.
    let authorize_by = conn.app.get().authorized_connections().map(|t| started + t);
    let mut last_seen = started;
    let mut pinged = false;
    let (mut frames, mut pongs, mut buf) = (Vec::new(), Vec::new(), Vec::new());
    // One timer for the connection's life, moved only when its deadline changes.
    let timer = tokio::time::sleep_until(started + activity);
    tokio::pin!(timer);
    loop {
        let message = tokio::select! {
            m = reader.next() => Some(m),
            _ = conn.outbox.ready() => None,
            _ = &mut timer => None,
        };
        match message {
            None => {}
            Some(Err(ReadError::Closed)) => return (session, None),
            Some(Err(e)) => {
                let (code, why) = match e {
                    ReadError::TooBig(n) => {
                        (1009, format!("Message of {n} bytes is over the limit"))
                    }
                    ReadError::BadUtf8 => (1007, "Text frame is not valid UTF-8".to_owned()),
                    ReadError::Protocol(p) => (1002, format!("WebSocket protocol error: {p}")),
                    ReadError::Closed => (1000, String::new()),
                };
                conn.send_error(None, &why);
                conn.outbox.close(code, why);
            }
            Some(Ok(message)) => {
                last_seen = Instant::now();
                pinged = false;
                match message {
                    Message::Text(mut text) => {
                        metrics::bytes_in(text.len());
                        Box::pin(session.on_text(&mut text)).await
                    }
                    Message::Binary(b) => {
                        metrics::bytes_in(b.len());
                        conn.send_error(
                            None,
                            "Binary frames are not supported: send JSON in text frames",
                        )
                    }
                    Message::Ping(payload) => conn.outbox.push_pong(payload.freeze()),
                    Message::Pong => {}
                    Message::Close(_) => conn.outbox.close(1000, ""),
                }
            }
        }

        let now = Instant::now();
        if authorize_by.is_some_and(|by| now >= by) && !conn.is_authorized() {
            conn.outbox.close(
                ErrorCode::Unauthorized.as_u16(),
                "Connection is unauthorized: sign in or subscribe to a private channel in time",
            );
        }
        let drained = conn.outbox.drain_all(&mut frames, &mut pongs);
        for p in pongs.drain(..) {
            push_frame(&mut buf, Frame::pong(Payload::Borrowed(&p)));
        }
        for f in frames.drain(..) {
            push_text(&mut buf, &f);
        }
        let idle = now.saturating_duration_since(last_seen);
        let close = match drained.close {
            Some(c) => Some(c),
            None if pinged && idle >= activity + pong_wait => Some(herald_hub::CloseReason {
                code: ErrorCode::PongNotReceived.as_u16(),
                message: "Pong reply not received".into(),
            }),
            None => {
                if !pinged && idle >= activity {
                    push_frame(
                        &mut buf,
                        Frame::new(true, OpCode::Ping, None, Payload::Borrowed(b"")),
                    );
                    pinged = true;
                }
                None
            }
        };
        if let Some(c) = &close {
            if c.code >= 4000 {
                push_text(&mut buf, &server::error(Some(c.code), &c.message));
            }
            push_close(&mut buf, c.code, &c.message);
        }
        if !buf.is_empty() {
            metrics::bytes_out(buf.len());
            // A client that stopped reading blocks this write. Once the connection is told to
            // close (its queue overflowed, a drain, a terminate) it gets a few more seconds to
            // take the rest, so a slow client still learns why; then it is dropped.
            let grace = Duration::from_secs(5);
            let written = if close.is_some() {
                tokio::time::timeout(grace, reader.get_mut().write_all(&buf))
                    .await
                    .is_ok_and(|r| r.is_ok())
            } else {
                let mut write = std::pin::pin!(reader.get_mut().write_all(&buf));
                let finished = tokio::select! {
                    r = &mut write => Some(r.is_ok()),
                    _ = conn.outbox.closing() => None,
                };
                match finished {
                    Some(ok) => ok,
                    None => tokio::time::timeout(grace, write)
                        .await
                        .is_ok_and(|r| r.is_ok()),
                }
            };
            if !written {
                let closing = conn.outbox.drain_all(&mut frames, &mut pongs).close;
                return (session, close.or(closing));
            }
            if drained.oldest_publish_us > 0 {
                herald_hub::metrics::delivery_latency_sampled(
                    herald_hub::hub::now_us(),
                    drained.oldest_publish_us,
                );
            }
            buf.clear();
            if buf.capacity() > 64 * 1024 {
                buf = Vec::new();
            }
        }
        if let Some(c) = close {
            let _ = reader.get_mut().shutdown().await;
            return (session, Some(c));
        }
        let mut deadline = last_seen + activity + if pinged { pong_wait } else { Duration::ZERO };
        if let Some(by) = authorize_by.filter(|_| !conn.is_authorized()) {
            deadline = deadline.min(by);
        }
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
    }
}
