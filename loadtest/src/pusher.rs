//! The Pusher protocol 7 frames the load tool sends, and a cheap classifier for the frames it
//! receives. Classification scans bytes instead of parsing JSON: one app event per delivery is
//! the hot path, and servers differ in field order, so only `"event":"…"` and the benchmark
//! marker in the data are looked at.

use herald_protocol::signature::sign;
use memchr::memmem;

/// Event name used for every benchmark publication.
pub const EVENT_NAME: &str = "bench";

/// Prefix of the benchmark payload: `hb:<send time µs>:<seq>:` followed by padding.
const MARKER: &[u8] = b"hb:";

/// What a received frame means to a scenario.
#[derive(Debug)]
pub enum Event {
    ConnectionEstablished(String),
    /// A benchmark publication: send time (µs since the tool's clock origin) and sequence number.
    Data {
        sent_us: u64,
        seq: u64,
    },
    SubscriptionSucceeded,
    /// `herald:recovery`: whether a resumed subscription got every missed event, and how many.
    Recovery {
        recovered: bool,
        replayed: u64,
    },
    MemberAdded,
    MemberRemoved,
    PusherPing,
    Error(Option<u32>),
    WsPing([u8; 125], u8),
    Closed(u16),
    Other,
}

/// Builds the `data` string of a benchmark publication.
pub fn payload(sent_us: u64, seq: u64, pad_to: usize) -> String {
    let mut s = format!("hb:{sent_us}:{seq}:");
    while s.len() < pad_to {
        s.push('x');
    }
    s
}

pub fn classify(frame: &[u8]) -> Event {
    let Some(name) = event_name(frame) else {
        return Event::Other;
    };
    match name {
        b"pusher:connection_established" => {
            Event::ConnectionEstablished(socket_id(frame).unwrap_or_default())
        }
        b"pusher_internal:subscription_succeeded" => Event::SubscriptionSucceeded,
        b"pusher_internal:member_added" => Event::MemberAdded,
        b"pusher_internal:member_removed" => Event::MemberRemoved,
        b"pusher:ping" => Event::PusherPing,
        b"pusher:error" => Event::Error(error_code(frame)),
        b"herald:recovery" => Event::Recovery {
            recovered: memmem::find(frame, br#"recovered\":true"#).is_some(),
            replayed: after(frame, br#"replayed\":"#)
                .and_then(digits)
                .map_or(0, |(n, _)| n),
        },
        _ if name.starts_with(b"pusher") => Event::Other,
        _ => match marker(frame) {
            Some((sent_us, seq)) => Event::Data { sent_us, seq },
            None => Event::Other,
        },
    }
}

fn after<'a>(frame: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let at = memmem::find(frame, key)?;
    let rest = &frame[at + key.len()..];
    let skip = rest.iter().take_while(|b| b.is_ascii_whitespace()).count();
    Some(&rest[skip..])
}

fn event_name(frame: &[u8]) -> Option<&[u8]> {
    let rest = after(frame, b"\"event\":")?;
    let rest = rest.strip_prefix(b"\"")?;
    let end = memchr::memchr(b'"', rest)?;
    Some(&rest[..end])
}

fn digits(s: &[u8]) -> Option<(u64, &[u8])> {
    let n = s.iter().take_while(|b| b.is_ascii_digit()).count();
    if n == 0 || n > 19 {
        return None;
    }
    let v = s[..n]
        .iter()
        .fold(0u64, |acc, b| acc * 10 + u64::from(b - b'0'));
    Some((v, &s[n..]))
}

fn marker(frame: &[u8]) -> Option<(u64, u64)> {
    let at = memmem::find(frame, MARKER)?;
    let (sent, rest) = digits(&frame[at + MARKER.len()..])?;
    let (seq, _) = digits(rest.strip_prefix(b":")?)?;
    Some((sent, seq))
}

fn socket_id(frame: &[u8]) -> Option<String> {
    let rest = after(frame, b"socket_id")?;
    let skip = rest.iter().take_while(|b| !b.is_ascii_digit()).count();
    let rest = &rest[skip..];
    let n = rest
        .iter()
        .take_while(|b| b.is_ascii_digit() || **b == b'.')
        .count();
    (n > 0).then(|| String::from_utf8_lossy(&rest[..n]).into_owned())
}

fn error_code(frame: &[u8]) -> Option<u32> {
    let rest = after(frame, b"\"code\":").or_else(|| after(frame, b"code\\\":"))?;
    digits(rest).and_then(|(v, _)| u32::try_from(v).ok())
}

/// Credentials needed to authorise private and presence subscriptions.
#[derive(Debug, Clone)]
pub struct AppCredentials {
    pub app_id: String,
    pub key: String,
    pub secret: String,
}

/// `pusher:subscribe` for any channel type; signs private and presence channels.
pub fn subscribe(
    creds: &AppCredentials,
    socket_id: &str,
    channel: &str,
    user_id: Option<&str>,
) -> String {
    let mut data = serde_json::Map::new();
    if channel.starts_with("presence-") {
        let channel_data =
            serde_json::json!({ "user_id": user_id.unwrap_or(socket_id), "user_info": {} })
                .to_string();
        let sig = sign(
            &creds.secret,
            format!("{socket_id}:{channel}:{channel_data}").as_bytes(),
        );
        data.insert("auth".into(), format!("{}:{sig}", creds.key).into());
        data.insert("channel_data".into(), channel_data.into());
    } else if channel.starts_with("private-") {
        let sig = sign(&creds.secret, format!("{socket_id}:{channel}").as_bytes());
        data.insert("auth".into(), format!("{}:{sig}", creds.key).into());
    }
    data.insert("channel".into(), channel.into());
    serde_json::json!({ "event": "pusher:subscribe", "data": data }).to_string()
}

/// `pusher:subscribe` of a public channel resuming after `offset` of stream `epoch` (what
/// the recovery plugin sends after a reconnect).
pub fn subscribe_at(channel: &str, epoch: &str, offset: u64) -> String {
    serde_json::json!({ "event": "pusher:subscribe", "data": {
        "channel": channel, "position": { "epoch": epoch, "offset": offset } } })
    .to_string()
}

/// Asks for history channels' positions (sent once per connection by the recovery plugin).
pub const POSITIONS: &[u8] = br#"{"event":"herald:positions","data":{}}"#;

pub fn unsubscribe(channel: &str) -> String {
    serde_json::json!({ "event": "pusher:unsubscribe", "data": { "channel": channel } }).to_string()
}

pub const PONG: &[u8] = br#"{"event":"pusher:pong","data":{}}"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_frames_from_different_servers() {
        let herald = br#"{"event":"bench","channel":"c","data":"hb:123:7:xxxx"}"#;
        assert!(matches!(
            classify(herald),
            Event::Data {
                sent_us: 123,
                seq: 7
            }
        ));
        let reordered = br#"{"channel":"c","data":"hb:5:0:","event":"bench"}"#;
        assert!(matches!(
            classify(reordered),
            Event::Data { sent_us: 5, seq: 0 }
        ));
        let est = br#"{"event":"pusher:connection_established","data":"{\"socket_id\":\"12.34\",\"activity_timeout\":30}"}"#;
        match classify(est) {
            Event::ConnectionEstablished(id) => assert_eq!(id, "12.34"),
            other => panic!("{other:?}"),
        }
        let err = br#"{"event":"pusher:error","data":{"code":4001,"message":"x"}}"#;
        assert!(matches!(classify(err), Event::Error(Some(4001))));
        let ok = br#"{"event":"pusher_internal:subscription_succeeded","channel":"c"}"#;
        assert!(matches!(classify(ok), Event::SubscriptionSucceeded));
        let rec = br#"{"event":"herald:recovery","channel":"c","data":"{\"recovered\":true,\"replayed\":20}"}"#;
        assert!(matches!(
            classify(rec),
            Event::Recovery {
                recovered: true,
                replayed: 20
            }
        ));
    }
}
