//! The bus message on a topic: a small binary envelope around the already-encoded frame, so a
//! receiving node delivers the bytes as they are (one encoding for the whole cluster).
//!
//! Layout (big-endian): `b'H'`, version (1, or 2 with a position), kind (0 frame, 1 terminate
//! user), flags (bit 0: an excluded socket follows; bit 1: a position follows), published-at µs
//! (u64), [excluded socket (u128)], origin (u8 length + bytes), app id (u16 length + bytes),
//! channel (u16 length + bytes), [position: u8 length + `epoch:offset`], payload (the rest).
//!
//! A history channel's event gets its position in Redis (the publish script assigns the
//! offset), so the node sends the envelope in two parts, [`encode_head`] and the frame, and the
//! script writes the position between them. Messages without a position stay version 1.

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use herald_hub::{BusMessage, BusPayload};
use herald_protocol::server::Position;
use herald_protocol::{ChannelName, SocketId};

const MAGIC: u8 = b'H';
const VERSION: u8 = 1;
const VERSION_POSITIONED: u8 = 2;

const FLAG_EXCLUDE: u8 = 1;
const FLAG_POSITION: u8 = 2;

fn payload_of(msg: &BusMessage) -> (u8, Bytes) {
    match &msg.payload {
        BusPayload::Frame(f) => (0u8, f.clone()),
        BusPayload::TerminateUser => (1u8, Bytes::new()),
    }
}

/// Everything before the position (or the payload): `positioned` announces a position.
fn head(msg: &BusMessage, positioned: bool, extra: usize) -> BytesMut {
    let (kind, _) = payload_of(msg);
    let origin = msg.origin.as_bytes();
    let app = msg.app_id.as_bytes();
    let channel = msg.channel.as_str().as_bytes();
    let mut b = BytesMut::with_capacity(32 + origin.len() + app.len() + channel.len() + extra);
    b.put_u8(MAGIC);
    b.put_u8(if positioned {
        VERSION_POSITIONED
    } else {
        VERSION
    });
    b.put_u8(kind);
    let mut flags = 0;
    if msg.exclude.is_some() {
        flags |= FLAG_EXCLUDE;
    }
    if positioned {
        flags |= FLAG_POSITION;
    }
    b.put_u8(flags);
    b.put_u64(msg.published_at_us);
    if let Some(s) = msg.exclude {
        b.put_u128(s.as_u128());
    }
    b.put_u8(origin.len().min(255) as u8);
    b.put_slice(&origin[..origin.len().min(255)]);
    b.put_u16(app.len() as u16);
    b.put_slice(app);
    b.put_u16(channel.len() as u16);
    b.put_slice(channel);
    b
}

pub fn encode(msg: &BusMessage) -> Bytes {
    let (_, payload) = payload_of(msg);
    let position = msg
        .position
        .as_ref()
        .map(|p| format!("{}:{}", p.epoch, p.offset));
    let mut b = head(msg, position.is_some(), payload.len() + 32);
    if let Some(p) = position {
        b.put_u8(p.len().min(255) as u8);
        b.put_slice(&p.as_bytes()[..p.len().min(255)]);
    }
    b.put_slice(&payload);
    b.freeze()
}

/// The envelope up to the position, for a history channel's event: the publish script
/// appends the position (u8 length + `epoch:offset`) and the frame.
pub fn encode_head(msg: &BusMessage) -> Bytes {
    head(msg, true, 0).freeze()
}

fn take_str(b: &mut Bytes, len: usize) -> Option<String> {
    if b.remaining() < len {
        return None;
    }
    String::from_utf8(b.split_to(len).to_vec()).ok()
}

/// Decodes a bus message; `None` for anything malformed (it is counted and dropped).
pub fn decode(mut b: Bytes) -> Option<BusMessage> {
    if b.remaining() < 12 || b.get_u8() != MAGIC {
        return None;
    }
    let version = b.get_u8();
    if version != VERSION && version != VERSION_POSITIONED {
        return None;
    }
    let kind = b.get_u8();
    let flags = b.get_u8();
    let published_at_us = b.get_u64();
    let exclude = if flags & 1 == 1 {
        if b.remaining() < 16 {
            return None;
        }
        Some(SocketId::from_u128(b.get_u128()))
    } else {
        None
    };
    if b.remaining() < 1 {
        return None;
    }
    let n = b.get_u8() as usize;
    let origin = take_str(&mut b, n)?;
    if b.remaining() < 2 {
        return None;
    }
    let n = b.get_u16() as usize;
    let app = take_str(&mut b, n)?;
    if b.remaining() < 2 {
        return None;
    }
    let n = b.get_u16() as usize;
    let channel = ChannelName::parse_internal(&take_str(&mut b, n)?).ok()?;
    let position = if flags & FLAG_POSITION != 0 {
        if b.remaining() < 1 {
            return None;
        }
        let n = b.get_u8() as usize;
        let text = take_str(&mut b, n)?;
        let (epoch, offset) = text.split_once(':')?;
        Some(Position {
            epoch: epoch.to_owned(),
            offset: offset.parse().ok()?,
        })
    } else {
        None
    };
    let payload = match kind {
        0 => BusPayload::Frame(b),
        1 => BusPayload::TerminateUser,
        _ => return None,
    };
    Some(BusMessage {
        origin: Arc::from(origin),
        app_id: Arc::from(app),
        channel,
        exclude,
        published_at_us,
        position,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let msg = BusMessage {
            origin: Arc::from("node-1"),
            app_id: Arc::from("app"),
            channel: ChannelName::parse("presence-a").expect("ok"),
            exclude: Some(SocketId::from_parts(12, 34)),
            published_at_us: 42,
            position: None,
            payload: BusPayload::Frame(Bytes::from_static(b"{\"event\":\"x\"}")),
        };
        assert_eq!(decode(encode(&msg)), Some(msg.clone()));
        let t = BusMessage {
            exclude: None,
            payload: BusPayload::TerminateUser,
            ..msg
        };
        assert_eq!(decode(encode(&t)), Some(t.clone()));
        let positioned = BusMessage {
            position: Some(Position {
                epoch: "Ab12".into(),
                offset: 7,
            }),
            payload: BusPayload::Frame(Bytes::from_static(b"{}")),
            ..t
        };
        assert_eq!(decode(encode(&positioned)), Some(positioned.clone()));
        // What the publish script writes after the head decodes to the same message.
        let mut scripted = encode_head(&positioned).to_vec();
        scripted.push(6);
        scripted.extend_from_slice(b"Ab12:7{}");
        assert_eq!(decode(Bytes::from(scripted)), Some(positioned));
    }

    #[test]
    fn malformed_is_rejected() {
        for bad in [
            &b""[..],
            b"H",
            b"X\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
            b"H\x01\x07\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
        ] {
            assert!(decode(Bytes::copy_from_slice(bad)).is_none());
        }
        let mut ok = encode(&BusMessage {
            origin: Arc::from("n"),
            app_id: Arc::from("a"),
            channel: ChannelName::parse("c").expect("ok"),
            exclude: None,
            published_at_us: 1,
            position: None,
            payload: BusPayload::Frame(Bytes::new()),
        })
        .to_vec();
        ok.truncate(ok.len() - 1);
        assert!(decode(Bytes::from(ok)).is_none());
    }
}
