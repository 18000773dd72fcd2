//! A connection's outbound queue, bounded in bytes.
//!
//! The hub pushes shared `Bytes` (one encoding per broadcast); the connection's writer drains
//! everything queued in one go. A push that would go over the bound does not wait: the queue is
//! dropped and the connection is marked to close with 4100, so a slow client never holds up the
//! fan-out to anyone else.

use std::collections::VecDeque;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use parking_lot::Mutex;

/// Why a connection is being closed by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseReason {
    pub code: u16,
    pub message: String,
}

/// What a push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// The queue went over its bound: the connection is now closing with 4100.
    Overflowed,
    /// The connection is already closing; the frame was dropped.
    Closed,
}

#[derive(Debug)]
struct Inner {
    queue: VecDeque<Bytes>,
    bytes: usize,
    /// Pong payloads owed to the client's protocol pings (at most a few).
    pongs: Vec<Bytes>,
    /// Publish time of the oldest queued publication (for the delivery latency metric).
    oldest_publish_us: u64,
    close: Option<CloseReason>,
    /// The writer, waiting for something to send (see [`Outbox::poll_ready`]).
    writer: Option<Waker>,
}

/// What one drain took out: the frames and pongs in order, the close reason once one is set
/// and the queue is empty, and the oldest publication's time.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Drained {
    pub frames: VecDeque<Bytes>,
    pub pongs: Vec<Bytes>,
    pub close: Option<CloseReason>,
    /// Publish time (Unix µs) of the oldest publication drained; 0 when none.
    pub oldest_publish_us: u64,
}

fn register(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(w) => w.clone_from(cx.waker()),
        None => *slot = Some(cx.waker().clone()),
    }
}

fn wake(writer: Option<Waker>) {
    if let Some(w) = writer {
        w.wake();
    }
}

/// Most protocol pongs kept pending; a client that pings faster than it reads gets fewer.
const MAX_PENDING_PONGS: usize = 4;

/// Bounded multi-producer, single-consumer queue of encoded frames.
#[derive(Debug)]
pub struct Outbox {
    inner: Mutex<Inner>,
    limit: usize,
}

/// Close code for a client that cannot keep up (4100: pusher-js reconnects after a back-off).
pub const SLOW_CLIENT_CODE: u16 = herald_protocol::ErrorCode::OverCapacity as u16;

impl Outbox {
    pub fn new(limit_bytes: usize) -> Self {
        Outbox {
            inner: Mutex::new(Inner {
                queue: VecDeque::new(),
                bytes: 0,
                pongs: Vec::new(),
                oldest_publish_us: 0,
                close: None,
                writer: None,
            }),
            limit: limit_bytes,
        }
    }

    pub fn push(&self, frame: Bytes) -> Pushed {
        self.push_timed(frame, 0)
    }

    /// Queues a publication that arrived at its first node at `published_at_us`.
    pub fn push_timed(&self, frame: Bytes, published_at_us: u64) -> Pushed {
        let mut inner = self.inner.lock();
        if inner.close.is_some() {
            return Pushed::Closed;
        }
        if inner.bytes + frame.len() > self.limit {
            inner.queue = VecDeque::new();
            inner.bytes = 0;
            inner.close = Some(CloseReason {
                code: SLOW_CLIENT_CODE,
                message: "Connection is not reading its messages fast enough".into(),
            });
            let writer = inner.writer.take();
            drop(inner);
            wake(writer);
            return Pushed::Overflowed;
        }
        inner.bytes += frame.len();
        if inner.oldest_publish_us == 0 {
            inner.oldest_publish_us = published_at_us;
        }
        inner.queue.push_back(frame);
        let writer = inner.writer.take();
        drop(inner);
        wake(writer);
        Pushed::Queued
    }

    /// Asks the writer to send what is queued, then `pusher:error` + close with `code`. The
    /// first reason given wins.
    pub fn close(&self, code: u16, message: impl Into<String>) {
        let mut inner = self.inner.lock();
        if inner.close.is_none() {
            inner.close = Some(CloseReason {
                code,
                message: message.into(),
            });
        }
        let writer = inner.writer.take();
        drop(inner);
        wake(writer);
    }

    pub fn is_closing(&self) -> bool {
        self.inner.lock().close.is_some()
    }

    /// Queues the answer to a protocol ping.
    pub fn push_pong(&self, payload: Bytes) {
        let mut inner = self.inner.lock();
        if inner.close.is_some() || inner.pongs.len() >= MAX_PENDING_PONGS {
            return;
        }
        inner.pongs.push(payload);
        let writer = inner.writer.take();
        drop(inner);
        wake(writer);
    }

    /// Takes everything queued, under one lock. The queue's storage goes with its frames: an
    /// idle connection holds none.
    pub fn drain_all(&self) -> Drained {
        let mut inner = self.inner.lock();
        inner.bytes = 0;
        Drained {
            frames: std::mem::take(&mut inner.queue),
            pongs: std::mem::take(&mut inner.pongs),
            close: inner.close.clone(),
            oldest_publish_us: std::mem::take(&mut inner.oldest_publish_us),
        }
    }

    /// Moves every queued frame into `out`; returns the close reason once one is set and the
    /// queue is empty.
    pub fn drain(&self, out: &mut Vec<Bytes>) -> Option<CloseReason> {
        let mut inner = self.inner.lock();
        let queue = std::mem::take(&mut inner.queue);
        inner.bytes = 0;
        inner.oldest_publish_us = 0;
        let close = inner.close.clone();
        drop(inner);
        out.extend(queue);
        close
    }

    /// Resolves once a close has been requested. For the writer, while it is blocked on a
    /// client that stopped reading (it shares the writer's waker slot with `poll_ready`).
    pub async fn closing(&self) {
        std::future::poll_fn(|cx| {
            let mut inner = self.inner.lock();
            if inner.close.is_some() {
                return Poll::Ready(());
            }
            register(&mut inner.writer, cx);
            Poll::Pending
        })
        .await
    }

    /// Ready once something is queued or a close is requested; otherwise the writer's waker is
    /// kept (one writer per outbox) and woken by the next push. Level-triggered and stateless
    /// for the caller: a connection waiting here holds no future of its own.
    pub fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut inner = self.inner.lock();
        if !inner.queue.is_empty() || !inner.pongs.is_empty() || inner.close.is_some() {
            return Poll::Ready(());
        }
        register(&mut inner.writer, cx);
        Poll::Pending
    }

    /// Waits until something is queued or a close is requested.
    pub async fn ready(&self) {
        std::future::poll_fn(|cx| self.poll_ready(cx)).await
    }

    pub fn queued_bytes(&self) -> usize {
        self.inner.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_in_bytes() {
        let o = Outbox::new(10);
        assert_eq!(o.push(Bytes::from_static(b"12345")), Pushed::Queued);
        assert_eq!(o.push(Bytes::from_static(b"12345")), Pushed::Queued);
        assert_eq!(o.queued_bytes(), 10);
        assert_eq!(o.push(Bytes::from_static(b"1")), Pushed::Overflowed);
        assert_eq!(o.queued_bytes(), 0);
        assert_eq!(o.push(Bytes::from_static(b"1")), Pushed::Closed);
        let mut out = Vec::new();
        assert_eq!(o.drain(&mut out).map(|c| c.code), Some(SLOW_CLIENT_CODE));
        assert!(out.is_empty());
    }

    #[test]
    fn drain_keeps_order_and_close_comes_last() {
        let o = Outbox::new(100);
        o.push(Bytes::from_static(b"a"));
        o.push(Bytes::from_static(b"b"));
        o.close(4200, "bye");
        o.close(4100, "ignored");
        let mut out = Vec::new();
        let close = o.drain(&mut out);
        assert_eq!(
            out,
            vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")]
        );
        assert_eq!(
            close,
            Some(CloseReason {
                code: 4200,
                message: "bye".into()
            })
        );
    }

    #[test]
    fn drain_all_takes_frames_pongs_and_the_oldest_publish_time() {
        let o = Outbox::new(100);
        o.push_timed(Bytes::from_static(b"a"), 7);
        o.push_timed(Bytes::from_static(b"b"), 9);
        o.push_pong(Bytes::from_static(b"p"));
        let d = o.drain_all();
        assert_eq!(
            d.frames,
            [Bytes::from_static(b"a"), Bytes::from_static(b"b")]
        );
        assert_eq!(d.pongs, [Bytes::from_static(b"p")]);
        assert_eq!((d.close, d.oldest_publish_us), (None, 7));
        assert_eq!(o.queued_bytes(), 0);
        assert_eq!(o.drain_all(), Drained::default());
    }

    #[tokio::test]
    async fn closing_resolves_on_close_and_on_overflow() {
        let o = std::sync::Arc::new(Outbox::new(10));
        let o2 = o.clone();
        let waiter = tokio::spawn(async move { o2.closing().await });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        o.push(Bytes::from_static(b"0123456789x"));
        waiter.await.expect("woken by the overflow");
        // Already closing: resolves at once.
        tokio::time::timeout(std::time::Duration::from_secs(1), o.closing())
            .await
            .expect("immediate");
        let o = Outbox::new(10);
        o.close(4200, "bye");
        tokio::time::timeout(std::time::Duration::from_secs(1), o.closing())
            .await
            .expect("immediate");
    }

    #[tokio::test]
    async fn ready_wakes_on_push() {
        let o = std::sync::Arc::new(Outbox::new(100));
        let o2 = o.clone();
        let waiter = tokio::spawn(async move {
            o2.ready().await;
            let mut out = Vec::new();
            o2.drain(&mut out);
            out
        });
        tokio::task::yield_now().await;
        o.push(Bytes::from_static(b"x"));
        assert_eq!(waiter.await.expect("join"), vec![Bytes::from_static(b"x")]);
    }
}
