//! One WebSocket connection: admission, then one task that reads client frames into the
//! session and writes the connection's outbound queue, pings and close.
//!
//! The task waits on three things at once — a client frame (the reader is cancel-safe), the
//! outbound queue, and one timer — and after each wake writes everything queued in one write,
//! with frame headers from fastwebsockets: a burst of fan-out costs one syscall per connection,
//! and a reply goes out in the same poll that handled the request. A write to a client that
//! stopped reading is abandoned as soon as the connection is told to close.
//!
//! Memory: most connections idle for hours, so what an idle one holds is kept small (measured
//! in docs/benchmarks.md): the task's state between wakes is the session, the socket and the
//! clock; the wait, the outgoing bytes and a frame's handling are built per wake or boxed, and
//! no read or write buffer is held between frames.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use fastwebsockets::{Frame, OpCode, Payload};
use herald_hub::{Activity, Connection, Refusal, Session};
use herald_protocol::{server, ErrorCode, SocketId};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::apps_store::sync::By;
use crate::frames::{FrameReader, Message, ReadError};
use crate::metrics;
use crate::node::{IpSlot, Node, OpenGuard};

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

/// Writes as much of `buf` as the socket takes now, without waiting: the usual case, and one
/// that keeps no write state in the connection's task.
fn write_now(io: &mut TokioIo<Upgraded>, buf: &[u8]) -> std::io::Result<usize> {
    let mut cx = Context::from_waker(Waker::noop());
    let mut done = 0;
    while done < buf.len() {
        match Pin::new(&mut *io).poll_write(&mut cx, &buf[done..]) {
            Poll::Ready(Ok(0)) => return Err(std::io::ErrorKind::WriteZero.into()),
            Poll::Ready(Ok(n)) => done += n,
            Poll::Ready(Err(e)) => return Err(e),
            Poll::Pending => break,
        }
    }
    Ok(done)
}

/// The rest of a write the socket did not take at once. Boxed: only a client that is behind
/// gets here. A client that stopped reading blocks this write; once the connection is told to
/// close (its queue overflowed, a drain, a terminate) it gets a few more seconds to take the
/// rest, so a slow client still learns why; then it is dropped.
fn write_rest<'a>(
    io: &'a mut TokioIo<Upgraded>,
    rest: &'a [u8],
    conn: &'a Connection,
    closing: bool,
) -> Pin<Box<dyn Future<Output = bool> + Send + 'a>> {
    Box::pin(async move {
        let grace = Duration::from_secs(5);
        if closing {
            return tokio::time::timeout(grace, io.write_all(rest))
                .await
                .is_ok_and(|r| r.is_ok());
        }
        let mut write = std::pin::pin!(io.write_all(rest));
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
    })
}

/// Checks the handshake against the node (draining, capacity) and the app (key, protocol,
/// origin), and holds one of the node's connection slots for it.
fn admit(node: &Arc<Node>, hs: &Handshake) -> Result<(Arc<herald_hub::App>, OpenGuard), Refusal> {
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

/// Admits an upgraded connection and starts its task; a refused one is answered here.
///
/// Admission (an app lookup, the cluster's connection limit) runs in the upgrade's short-lived
/// task; the connection then gets a task of its own holding only what it needs for its life
/// (see [`live`]): state captured here would otherwise stay in every connection's memory.
pub async fn serve(
    node: Arc<Node>,
    tracker: TaskTracker,
    ip_slot: Option<Arc<IpSlot>>,
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
    slot.admitted(&conn.app);
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
    let reader = FrameReader::new(io, node.config.server.max_message_bytes);
    let task = live(
        Live {
            node,
            conn,
            _slot: slot,
            _ip_slot: ip_slot,
        },
        session,
        reader,
    );
    tracker.spawn(task);
}

/// What a connection's task holds besides its session and socket.
struct Live {
    node: Arc<Node>,
    conn: Arc<Connection>,
    /// The node's connection slot, released when the task ends.
    _slot: OpenGuard,
    /// The connection keeps counting against its IP while it lives.
    _ip_slot: Option<Arc<IpSlot>>,
}

/// A connection's task: runs it to its end, then leaves every channel.
///
/// A plain function returning an `async move` block: the block uses what it captures in
/// place, where an `async fn` would keep a second copy of its arguments for the task's life.
#[allow(clippy::manual_async_fn)]
fn live(
    live: Live,
    mut session: Session,
    mut reader: FrameReader<TokioIo<Upgraded>>,
) -> impl Future<Output = ()> + Send {
    async move {
        let Live { node, conn, .. } = &live;
        let started = Instant::now();
        let close = run(node, conn, &mut session, &mut reader).await;

        // The socket is done or the server closed it: leave every channel.
        Box::pin(session.close()).await;
        let app = &conn.app.id;
        let socket_id = conn.socket_id;
        metrics::closed(app, close.as_ref().map(|c| c.code));
        let seconds = started.elapsed().as_secs();
        node.hub
            .monitor()
            .record(app, |_| Activity::ConnectionClosed {
                socket_id: socket_id.to_string(),
                code: close.as_ref().map(|c| c.code),
                reason: close
                    .as_ref()
                    .map_or_else(|| "connection lost".to_owned(), |c| c.message.to_string()),
            });
        match close {
            Some(c) if c.code >= 4000 => {
                tracing::info!(app = %app, %socket_id, code = c.code, reason = %c.message, seconds, "connection closed by the server")
            }
            Some(c) => {
                tracing::info!(app = %app, %socket_id, code = c.code, seconds, "connection closed")
            }
            None => tracing::info!(app = %app, %socket_id, seconds, "connection lost"),
        }
        drop(live);
    }
}

/// The connection's clock: activity, pings and the authorization deadline.
struct Liveness {
    activity: Duration,
    pong_wait: Duration,
    /// "Authorized connections": sign in or subscribe to a private/presence channel by then.
    authorize_by: Option<Instant>,
    last_seen: Instant,
    pinged: bool,
}

impl Liveness {
    /// When the timer must next fire.
    fn deadline(&self, conn: &Connection) -> Instant {
        let wait = self.activity
            + if self.pinged {
                self.pong_wait
            } else {
                Duration::ZERO
            };
        let mut deadline = self.last_seen + wait;
        if let Some(by) = self.authorize_by.filter(|_| !conn.is_authorized()) {
            deadline = deadline.min(by);
        }
        deadline
    }
}

/// What one wake has to send: the bytes, and the close they end with, if any.
struct Outgoing {
    buf: Vec<u8>,
    close: Option<herald_hub::CloseReason>,
    oldest_publish_us: u64,
}

/// Takes everything queued for the connection and frames it, with a ping or a close when the
/// clock says so. Synchronous, so none of it is kept in the connection's task.
fn outgoing(conn: &Connection, clock: &mut Liveness, now: Instant) -> Outgoing {
    if clock.authorize_by.is_some_and(|by| now >= by) && !conn.is_authorized() {
        conn.outbox.close(
            ErrorCode::Unauthorized.as_u16(),
            "Connection is unauthorized: sign in or subscribe to a private channel in time",
        );
    }
    // The buffer lives only while there is something to write: an idle connection holds none.
    let drained = conn.outbox.drain_all();
    let mut buf = Vec::new();
    for p in &drained.pongs {
        push_frame(&mut buf, Frame::pong(Payload::Borrowed(p)));
    }
    for f in &drained.frames {
        push_text(&mut buf, f);
    }
    let idle = now.saturating_duration_since(clock.last_seen);
    let close = match drained.close {
        Some(c) => Some(c),
        None if clock.pinged && idle >= clock.activity + clock.pong_wait => {
            Some(herald_hub::CloseReason {
                code: ErrorCode::PongNotReceived.as_u16(),
                message: "Pong reply not received".into(),
            })
        }
        None => {
            if !clock.pinged && idle >= clock.activity {
                push_frame(
                    &mut buf,
                    Frame::new(true, OpCode::Ping, None, Payload::Borrowed(b"")),
                );
                clock.pinged = true;
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
    Outgoing {
        buf,
        close,
        oldest_publish_us: drained.oldest_publish_us,
    }
}

/// Handles one client frame.
async fn on_message(
    conn: &Connection,
    session: &mut Session,
    message: Result<Message, ReadError>,
) -> Result<(), ()> {
    match message {
        Err(ReadError::Closed) => return Err(()),
        Err(e) => {
            let (code, why) = match e {
                ReadError::TooBig(n) => (1009, format!("Message of {n} bytes is over the limit")),
                ReadError::BadUtf8 => (1007, "Text frame is not valid UTF-8".to_owned()),
                ReadError::Protocol(p) => (1002, format!("WebSocket protocol error: {p}")),
                ReadError::Closed => (1000, String::new()),
            };
            conn.send_error(None, &why);
            conn.outbox.close(code, why);
        }
        Ok(Message::Text(mut text)) => {
            metrics::bytes_in(text.len());
            // Not boxed again: this future is boxed where it is awaited (see `run`).
            session.on_text(&mut text).await
        }
        Ok(Message::Binary(b)) => {
            metrics::bytes_in(b.len());
            conn.send_error(
                None,
                "Binary frames are not supported: send JSON in text frames",
            )
        }
        Ok(Message::Ping(payload)) => conn.outbox.push_pong(payload.freeze()),
        Ok(Message::Pong) => {}
        Ok(Message::Close(_)) => conn.outbox.close(1000, ""),
    }
    Ok(())
}

/// The connection's life after admission. Returns the close sent, if any.
///
/// What stays in the task between wakes is the clock and its timer; everything else is built
/// per wake (the wait, the outgoing bytes) or boxed (a frame's handling, a slow write).
async fn run(
    node: &Node,
    conn: &Arc<Connection>,
    session: &mut Session,
    reader: &mut FrameReader<TokioIo<Upgraded>>,
) -> Option<herald_hub::CloseReason> {
    let now = Instant::now();
    let mut clock = Liveness {
        activity: Duration::from_secs(node.config.server.activity_timeout),
        pong_wait: Duration::from_secs(node.config.server.pong_timeout),
        authorize_by: conn.app.get().authorized_connections().map(|t| now + t),
        last_seen: now,
        pinged: false,
    };
    // One timer for the connection's life, moved only when its deadline changes.
    let timer = tokio::time::sleep_until(clock.deadline(conn));
    tokio::pin!(timer);
    loop {
        // Waits for a client frame, something to send, or the timer. The frame reader is
        // cancel-safe and the outbox keeps the task's waker, so this wait is rebuilt on every
        // poll and an idle connection's task stores no future for it.
        let message = std::future::poll_fn(|cx| {
            if let Poll::Ready(m) = std::pin::pin!(reader.next()).poll(cx) {
                return Poll::Ready(Some(m));
            }
            if conn.outbox.poll_ready(cx).is_ready() || timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(None);
            }
            Poll::Pending
        })
        .await;
        if let Some(message) = message {
            if message.is_ok() {
                clock.last_seen = Instant::now();
                clock.pinged = false;
            }
            if Box::pin(on_message(conn, session, message)).await.is_err() {
                return None;
            }
        }

        let out = outgoing(conn, &mut clock, Instant::now());
        if !out.buf.is_empty() {
            metrics::bytes_out(out.buf.len());
            let written = match write_now(reader.get_mut(), &out.buf) {
                Ok(n) if n == out.buf.len() => true,
                Ok(n) => {
                    write_rest(reader.get_mut(), &out.buf[n..], conn, out.close.is_some()).await
                }
                Err(_) => false,
            };
            if !written {
                let closing = conn.outbox.drain(&mut Vec::new());
                return out.close.or(closing);
            }
            if out.oldest_publish_us > 0 {
                herald_hub::metrics::delivery_latency_sampled(
                    herald_hub::hub::now_us(),
                    out.oldest_publish_us,
                );
            }
        }
        if let Some(c) = out.close {
            let _ = Box::pin(reader.get_mut().shutdown()).await;
            return Some(c);
        }
        let deadline = clock.deadline(conn);
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
    }
}
