//! History channels on this node: resuming clients and catching up gaps.
//!
//! Every event of a history channel carries its position (epoch, offset) in its stream. For
//! each such channel the node remembers the last position it delivered, and:
//!
//! - **A subscribe to a history channel** first holds the connection aside (it counts as a
//!   subscriber, so the node listens to the channel, but live events are held for it), reads
//!   the stream, sends `subscription_succeeded` with the channel's position, then — when the
//!   client asked to resume from a position and every event it missed is still kept — the
//!   missed events, then the held live events newer than what it now has, and only then
//!   makes it an ordinary subscriber. Nothing is lost between the replay and the live stream,
//!   and nothing is sent twice. Resuming is all or nothing, as Centrifugo does it: a changed
//!   epoch, a trimmed or expired stream, more missed events than the channel keeps or than fit
//!   the client's queue: the client is told "not recovered" and gets live events only.
//! - **A gap in what the node receives** (its subscription to the channel's topic was cut: the
//!   next event's offset jumps) holds the live events back, reads the missing ones from the
//!   stream, delivers them in order, then the held ones. After its subscriptions are restored
//!   the node does the same for every history channel, so a quiet channel catches up too.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use herald_protocol::client::Resume;
use herald_protocol::server::{self, Position};
use herald_protocol::{ChannelName, ErrorCode, SocketId};

use crate::app::{App, HistoryRule};
use crate::cluster::{BusError, History};
use crate::connection::Connection;
use crate::connection::Framed;
use crate::hub::{push_framed, Hub, LocalChannel};
use crate::metrics;

/// Most live events held for one resuming connection or during one catch-up; beyond, the
/// connection is told to reconnect (4200), so nothing is silently lost.
pub const MAX_HELD: usize = 1000;

/// A live event held back.
#[derive(Debug, Clone)]
pub(crate) struct Held {
    position: Position,
    event: Framed,
    exclude: Option<SocketId>,
    published_at_us: u64,
}

/// A connection whose subscribe reads the stream: live events wait here for it.
#[derive(Debug)]
pub(crate) struct Resuming {
    conn: Arc<Connection>,
    held: Vec<Held>,
    overflowed: bool,
}

/// A history channel's state on this node.
#[derive(Debug, Default)]
pub(crate) struct StreamState {
    /// The last position delivered to the channel's subscribers.
    last: Option<Position>,
    pub(crate) resuming: HashMap<SocketId, Resuming>,
    /// While the node reads a gap from the stream: live events held back, in order.
    catching_up: Option<Vec<Held>>,
}

/// What to do with a live history event.
pub(crate) enum Admit {
    /// Push it to the subscribers now.
    Deliver,
    /// Held (a catch-up is running) or already delivered: nothing to push.
    Held,
    /// The offset jumped past `after`: a catch-up must read what is missing.
    Gap(u64),
}

impl StreamState {
    pub(crate) fn admit(
        &mut self,
        position: &Position,
        event: &Framed,
        exclude: Option<SocketId>,
        published_at_us: u64,
    ) -> Admit {
        let held = Held {
            position: position.clone(),
            event: event.clone(),
            exclude,
            published_at_us,
        };
        if let Some(queue) = &mut self.catching_up {
            if queue.len() < MAX_HELD {
                queue.push(held);
            }
            return Admit::Held;
        }
        if let Some(last) = &self.last {
            if last.epoch == position.epoch {
                if position.offset <= last.offset {
                    return Admit::Held; // delivered already (by a catch-up)
                }
                if position.offset > last.offset + 1 {
                    let after = last.offset;
                    self.catching_up = Some(vec![held]);
                    return Admit::Gap(after);
                }
            }
        }
        self.last = Some(position.clone());
        for r in self.resuming.values_mut() {
            if Some(r.conn.socket_id) == exclude {
                continue;
            }
            if r.held.len() < MAX_HELD {
                r.held.push(held.clone());
            } else {
                r.overflowed = true;
            }
        }
        Admit::Deliver
    }
}

/// Why a resume was refused, as the client is told (`herald:recovery` `reason`).
fn refuse(reason: &'static str) -> Option<(bool, Option<&'static str>)> {
    metrics::recovery(reason);
    Some((false, Some(reason)))
}

/// What a history channel's subscribe found in the stream.
#[derive(Debug, Default)]
pub(crate) struct Resumed {
    /// The channel's position as the client is told it in `subscription_succeeded`.
    pub top: Option<Position>,
    /// Missed events to send, oldest first, in both forms.
    pub replay: Vec<Framed>,
    /// For a client that asked to resume: recovered or not, and why not.
    pub verdict: Option<(bool, Option<&'static str>)>,
}

impl Hub {
    /// Holds a connection aside on a history channel while its subscribe reads the stream.
    pub(crate) fn begin_resume(&self, conn: &Arc<Connection>, channel: &ChannelName) {
        let Some(ch) = self.local_channel(conn, channel) else {
            return;
        };
        let fresh = ch
            .stream
            .lock()
            .resuming
            .insert(
                conn.socket_id,
                Resuming {
                    conn: conn.clone(),
                    held: Vec::new(),
                    overflowed: false,
                },
            )
            .is_none();
        if fresh {
            metrics::subscriptions(1.0);
        }
        self.recount(&conn.app.id, channel, &ch);
    }

    /// Reads the stream for a subscribe: the channel's position, and for a client that asked
    /// to resume, whether it can and what it missed.
    pub(crate) async fn resume_read(
        &self,
        app: &App,
        channel: &ChannelName,
        rule: &HistoryRule,
        wanted: Option<&Resume>,
    ) -> Result<Resumed, BusError> {
        let at = match wanted {
            Some(Resume::At(p)) => Some(p),
            _ => None,
        };
        // One more than the channel keeps: enough to tell "too many missed".
        let (after, limit) = at.map_or((u64::MAX, 0), |p| (p.offset, rule.size + 1));
        let read = self
            .cluster
            .history(&app.id, channel, rule, after, limit, true)
            .await?;
        let mut resumed = Resumed {
            top: read.top.clone(),
            ..Resumed::default()
        };
        resumed.verdict = match (wanted, at, &read.top) {
            (None, ..) => None,
            (Some(Resume::Invalid(_)), ..) => refuse("invalid_position"),
            (_, Some(_), None) => refuse("stream_lost"),
            (_, Some(p), Some(top)) if p.epoch != top.epoch => refuse("epoch_changed"),
            (_, Some(p), Some(top)) if p.offset > top.offset => refuse("unknown_position"),
            (_, Some(p), Some(top)) if top.offset - p.offset > rule.size as u64 => {
                refuse("too_many_missed")
            }
            (_, Some(p), Some(top)) => {
                let missed = (top.offset - p.offset) as usize;
                let contiguous = read.events.len() >= missed
                    && read
                        .events
                        .iter()
                        .take(missed)
                        .enumerate()
                        .all(|(i, (o, _))| *o == p.offset + 1 + i as u64);
                let bytes: usize = read.events.iter().take(missed).map(|(_, f)| f.len()).sum();
                if !contiguous {
                    refuse("expired")
                } else if bytes > self.replay_budget() {
                    refuse("too_large")
                } else {
                    let epoch = &p.epoch;
                    resumed.replay = read
                        .events
                        .into_iter()
                        .take(missed)
                        .map(|(offset, f)| {
                            framed(
                                f,
                                &Position {
                                    epoch: epoch.clone(),
                                    offset,
                                },
                            )
                        })
                        .collect();
                    metrics::recovery("recovered");
                    metrics::replayed(resumed.replay.len());
                    Some((true, None))
                }
            }
            (Some(Resume::At(_)), None, _) => None,
        };
        Ok(resumed)
    }

    /// Most bytes of missed events one resume may send: half a client's queue, so a replay
    /// never gets a client cut off as slow.
    fn replay_budget(&self) -> usize {
        self.outbox_bytes() / 2
    }

    /// Makes a resuming connection an ordinary subscriber: first the live events held for it
    /// that are newer than `have` (the position it now has), then everything else as it comes.
    pub(crate) fn finish_resume(
        &self,
        conn: &Connection,
        channel: &ChannelName,
        have: Option<&Position>,
    ) {
        let Some(ch) = self.channel(&conn.app.id, channel) else {
            return;
        };
        let mut stream = ch.stream.lock();
        // The node's record starts where its first subscriber's does, so a gap in what the
        // node receives from then on is noticed.
        if stream.last.is_none() {
            stream.last = have.cloned();
        }
        let have = have.map_or(0, |p| p.offset);
        let Some(r) = stream.resuming.remove(&conn.socket_id) else {
            return; // it left meanwhile
        };
        if r.overflowed {
            r.conn.outbox.close(
                ErrorCode::ReconnectImmediately.as_u16(),
                "Too many events arrived while the subscription was resumed; reconnect",
            );
        }
        for h in r.held.into_iter().filter(|h| h.position.offset > have) {
            r.conn
                .send_timed(r.conn.pick(&h.event).clone(), h.published_at_us);
        }
        ch.subscribers.write().insert(conn.socket_id, r.conn);
    }

    /// Reads what a channel missed after `after` and delivers it in order, then the live
    /// events held meanwhile.
    pub(crate) async fn catch_up(
        self: &Arc<Self>,
        app_id: &str,
        channel: &ChannelName,
        after: u64,
    ) {
        let Some(ch) = self.channel(app_id, channel) else {
            return;
        };
        let rule = self
            .apps()
            .by_id(app_id)
            .and_then(|a| a.history_for(channel).cloned());
        let read = match &rule {
            Some(rule) => self
                .cluster
                .history(app_id, channel, rule, after, rule.size, false)
                .await
                .ok(),
            None => None,
        };
        let mut stream = ch.stream.lock();
        let held = stream.catching_up.take().unwrap_or_default();
        let mut caught_up = 0;
        let mut filled = false;
        if let Some(History {
            top: Some(top),
            events,
        }) = read
        {
            // Offsets after+1 .. until-1 are missing; the stream's events are unique and
            // sorted, so counting them tells whether every one is still kept.
            let until = held.first().map_or(top.offset + 1, |h| h.position.offset);
            let needed = until.saturating_sub(after + 1);
            filled = events
                .iter()
                .filter(|(o, _)| *o > after && *o < until)
                .count() as u64
                == needed;
            // Events of another epoch (the stream was reset) cannot fill this gap.
            if stream.last.as_ref().is_some_and(|l| l.epoch == top.epoch) {
                for (offset, frame) in events {
                    let position = Position {
                        epoch: top.epoch.clone(),
                        offset,
                    };
                    caught_up += deliver_held(
                        &mut stream,
                        &ch,
                        &Held {
                            event: framed(frame, &position),
                            position,
                            exclude: None,
                            published_at_us: 0,
                        },
                    );
                }
            }
        }
        for h in &held {
            deliver_held(&mut stream, &ch, h);
        }
        drop(stream);
        metrics::caught_up(caught_up);
        if !filled {
            // The stream no longer holds what the node missed: rather than a silent gap, the
            // channel's clients reconnect, and those that resume are told they were not
            // recovered.
            tracing::warn!(app = app_id, %channel, "missed events are no longer kept; asking the channel's clients to reconnect");
            metrics::recovery("node_gap_unfilled");
            for conn in ch.subscribers.read().values() {
                conn.outbox.close(
                    ErrorCode::ReconnectImmediately.as_u16(),
                    "Events were missed and are no longer kept; reconnect",
                );
            }
        }
    }

    /// After the node's subscriptions were restored: every history channel catches up from
    /// the last event it delivered.
    pub(crate) async fn catch_up_all(self: &Arc<Self>) {
        for (app_id, channel, ch) in self.local_channels() {
            let after = {
                let mut stream = ch.stream.lock();
                match (&stream.last, &stream.catching_up) {
                    (Some(last), None) => {
                        let after = last.offset;
                        stream.catching_up = Some(Vec::new());
                        after
                    }
                    _ => continue,
                }
            };
            self.catch_up(&app_id, &channel, after).await;
        }
    }
}

/// Delivers a held or caught-up event unless it was delivered already; how many got it.
fn deliver_held(stream: &mut StreamState, ch: &LocalChannel, h: &Held) -> usize {
    if stream
        .last
        .as_ref()
        .is_some_and(|l| l.epoch == h.position.epoch && h.position.offset <= l.offset)
    {
        return 0;
    }
    stream.last = Some(h.position.clone());
    for r in stream.resuming.values_mut() {
        if r.held.len() < MAX_HELD {
            r.held.push(h.clone());
        } else {
            r.overflowed = true;
        }
    }
    push_framed(
        &ch.subscribers.read(),
        &h.event,
        h.exclude,
        h.published_at_us,
    )
}

/// A stored event (which carries its position) in both forms.
pub(crate) fn framed(positioned: Bytes, position: &Position) -> Framed {
    let base = server::without_position(&positioned, &position.epoch, position.offset)
        .map_or_else(|| positioned.clone(), Bytes::from);
    Framed { base, positioned }
}
