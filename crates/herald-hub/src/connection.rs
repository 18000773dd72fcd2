//! What the hub knows of one connection: its id, its app, its outbound queue and, once signed
//! in, its user. The socket itself belongs to the node.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use herald_protocol::SocketId;
use parking_lot::Mutex;

use crate::live::LiveApp;
use crate::outbox::{Outbox, Pushed};

/// A history channel's event in the two forms clients get: as published (`base`) and with its
/// stream position (`positioned`). Both encoded once per node, shared by every client.
#[derive(Debug, Clone)]
pub struct Framed {
    pub base: Bytes,
    pub positioned: Bytes,
}

#[derive(Debug)]
pub struct Connection {
    pub socket_id: SocketId,
    /// The app's cell (`app.id`, and `app.get()`: its settings as they are now, not as they
    /// were at the handshake, so a changed limit or flag applies to the next operation).
    pub app: Arc<LiveApp>,
    pub outbox: Outbox,
    user_id: Mutex<Option<Arc<str>>>,
    authorized: AtomicBool,
    /// Asked for history channels' stream positions (`herald:positions`).
    positions: AtomicBool,
}

impl Connection {
    pub(crate) fn new(socket_id: SocketId, app: Arc<LiveApp>, outbox_bytes: usize) -> Self {
        Connection {
            socket_id,
            app,
            outbox: Outbox::new(outbox_bytes),
            user_id: Mutex::new(None),
            authorized: AtomicBool::new(false),
            positions: AtomicBool::new(false),
        }
    }

    /// Queues a frame for this connection alone.
    pub fn send(&self, frame: impl Into<Bytes>) -> Pushed {
        self.send_timed(frame.into(), 0)
    }

    /// Queues a publication first received at `published_at_us` (Unix µs).
    pub fn send_timed(&self, frame: Bytes, published_at_us: u64) -> Pushed {
        let pushed = self.outbox.push_timed(frame, published_at_us);
        if pushed == Pushed::Overflowed {
            crate::metrics::slow_client(&self.app.id);
        }
        pushed
    }

    /// Sends `pusher:error` with `code` (None = non-fatal) and `message`.
    pub fn send_error(&self, code: Option<u16>, message: &str) {
        self.send(herald_protocol::server::error(code, message));
    }

    /// Whether the client asked for stream positions (the recovery plugin does).
    pub fn wants_positions(&self) -> bool {
        self.positions.load(Ordering::Relaxed)
    }

    pub(crate) fn set_wants_positions(&self) {
        self.positions.store(true, Ordering::Relaxed);
    }

    /// The client's copy of a history channel's event: with its position for a client that
    /// asked for positions, without it for every other.
    pub(crate) fn pick<'f>(&self, event: &'f Framed) -> &'f Bytes {
        if self.wants_positions() {
            &event.positioned
        } else {
            &event.base
        }
    }

    /// The user this connection signed in as.
    pub fn user_id(&self) -> Option<Arc<str>> {
        self.user_id.lock().clone()
    }

    /// Signed in, or subscribed to a private or presence channel (the "authorized
    /// connections" rule).
    pub fn is_authorized(&self) -> bool {
        self.authorized.load(Ordering::Acquire)
    }

    pub(crate) fn set_authorized(&self) {
        self.authorized.store(true, Ordering::Release);
    }

    pub(crate) fn set_user_id(&self, id: Arc<str>) {
        *self.user_id.lock() = Some(id);
    }
}
