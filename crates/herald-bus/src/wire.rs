//! The bus message on a topic: a small binary envelope around the already-encoded frame, so a
//! receiving node delivers the bytes as they are (one encoding for the whole cluster).
//!
//! Layout (big-endian): `b'H'`, version 1, kind (0 frame, 1 terminate user), flags (bit 0: an
//! excluded socket follows), published-at µs (u64), [excluded socket (u128)], origin (u8 length
//! + bytes), app id (u16 length + bytes), channel (u16 length + bytes), payload (the rest).

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use herald_hub::{BusMessage, BusPayload};
use herald_protocol::{ChannelName, SocketId};

const MAGIC: u8 = b'H';
const VERSION: u8 = 1;

pub fn encode(msg: &BusMessage) -> Bytes {
    let (kind, payload) = match &msg.payload {
        BusPayload::Frame(f) => (0u8, f.clone()),
        BusPayload::TerminateUser => (1u8, Bytes::new()),
    };
    let origin = msg.origin.as_bytes();
    let app = msg.app_id.as_bytes();
    let channel = msg.channel.as_str().as_bytes();
    let mut b =
        BytesMut::with_capacity(32 + origin.len() + app.len() + channel.len() + payload.len());
    b.put_u8(MAGIC);
    b.put_u8(VERSION);
    b.put_u8(kind);
    b.put_u8(u8::from(msg.exclude.is_some()));
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
    b.put_slice(&payload);
    b.freeze()
}

fn take_str(b: &mut Bytes, len: usize) -> Option<String> {
    if b.remaining() < len {
        return None;
    }
    String::from_utf8(b.split_to(len).to_vec()).ok()
}

/// Decodes a bus message; `None` for anything malformed (it is counted and dropped).
pub fn decode(mut b: Bytes) -> Option<BusMessage> {
    if b.remaining() < 12 || b.get_u8() != MAGIC || b.get_u8() != VERSION {
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
            payload: BusPayload::Frame(Bytes::from_static(b"{\"event\":\"x\"}")),
        };
        assert_eq!(decode(encode(&msg)), Some(msg.clone()));
        let t = BusMessage {
            exclude: None,
            payload: BusPayload::TerminateUser,
            ..msg
        };
        assert_eq!(decode(encode(&t)), Some(t));
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
            payload: BusPayload::Frame(Bytes::new()),
        })
        .to_vec();
        ok.truncate(ok.len() - 1);
        assert!(decode(Bytes::from(ok)).is_none());
    }
}
