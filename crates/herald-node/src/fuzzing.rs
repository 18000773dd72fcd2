//! The bodies of the fuzz targets (`fuzz/`), here so that the committed corpus is replayed by
//! `cargo test` on stable Rust as well (`tests/fuzz_corpus.rs`). Each takes arbitrary bytes
//! from the network's point of view and must neither panic, hang nor recurse without bound;
//! where a property holds for every input (a decoded message re-encodes to itself), it is
//! asserted.

use std::sync::OnceLock;

use bytes::Bytes;
use herald_protocol::api::{parse_batch, parse_trigger, InfoAttrs};
use herald_protocol::api_auth::{verify, SignedRequest};
use herald_protocol::presence::{parse_channel_data, parse_user_data};
use herald_protocol::ClientMessage;

use crate::frames::{FrameReader, Message};

/// A client's WebSocket text frame, decoded.
pub fn client_frame(data: &[u8]) {
    let mut buf = data.to_vec();
    match ClientMessage::decode(&mut buf) {
        Ok(ClientMessage::ClientEvent { event, .. }) => assert!(event.starts_with("client-")),
        Ok(_) => {}
        // Anything refused is refused for a reason a client can be told.
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        #[allow(clippy::expect_used)]
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime")
    })
}

/// Raw bytes from a client's socket, read as WebSocket frames with a 4 KiB message limit.
pub fn frame_reader(data: &[u8]) {
    runtime().block_on(async {
        let mut reader = FrameReader::new(data, 4096);
        // Every call consumes at least one byte or ends, so this ends.
        for _ in 0..=data.len() {
            match reader.next().await {
                Ok(Message::Text(t)) => {
                    assert!(t.len() <= 4096);
                    assert!(std::str::from_utf8(&t).is_ok());
                }
                Ok(Message::Binary(b)) => assert!(b.len() <= 4096),
                Ok(Message::Ping(p)) => assert!(p.len() <= 125),
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
}

/// An HTTP API request: `method 0xff path 0xff query 0xff body`, signature-checked against a
/// fixed app, then routed and its body parsed as a trigger and as a batch.
pub fn api_request(data: &[u8]) {
    let mut parts = data.splitn(4, |b| *b == 0xff);
    let text = |p: Option<&[u8]>| String::from_utf8_lossy(p.unwrap_or_default()).into_owned();
    let (method, path, query) = (text(parts.next()), text(parts.next()), text(parts.next()));
    let body = parts.next().unwrap_or_default();
    let pairs = crate::api::query_pairs(Some(&query));
    let _ = verify(
        &SignedRequest {
            method: &method,
            path: &path,
            query: &pairs,
            body,
        },
        "key",
        "secret",
        1_700_000_000,
    );
    if let Ok(m) = hyper::Method::from_bytes(method.as_bytes()) {
        let _ = crate::api::route_for_fuzzing(&m, &path);
    }
    let _ = InfoAttrs::parse(pairs.first().map(|(_, v)| v.as_str()));
    if let Ok(p) = parse_trigger(body, 10 * 1024) {
        assert!(!p.channels.is_empty() && p.channels.len() <= 100);
        assert!(p.data.len() <= 10 * 1024);
    }
    if let Ok(batch) = parse_batch(body, 10 * 1024) {
        assert!(batch.len() <= 10);
    }
}

/// Presence `channel_data` and sign-in `user_data`.
pub fn presence_data(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(m) = parse_channel_data(text, 1024) {
        assert!(!m.user_id.is_empty() && m.user_id.chars().count() <= 128);
        assert!(m.user_info.is_none_or(|i| i.len() <= 1024));
    }
    if let Ok(u) = parse_user_data(text, 1024) {
        assert!(!u.id.is_empty());
    }
}

/// A bus message from Redis: decoded, and if valid, re-encoded to the same message.
pub fn bus_envelope(data: &[u8]) {
    if let Some(msg) = herald_bus::wire::decode(Bytes::copy_from_slice(data)) {
        let again = herald_bus::wire::decode(herald_bus::wire::encode(&msg));
        assert_eq!(again.as_ref(), Some(&msg));
    }
}
