//! Frames the server sends. `data` is double-encoded (a JSON string holding JSON) everywhere
//! except `pusher:error` and `pusher:signin_success`, whose data is an object, as the official
//! service sends them (<https://pusher.com/docs/channels/library_auth_reference/pusher-websockets-protocol/>).

use serde::Serialize;

use crate::presence::Member;
use crate::SocketId;

#[derive(Serialize)]
struct Frame<'a, D: Serialize> {
    event: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
    data: D,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<&'a str>,
}

fn encode<D: Serialize>(
    event: &str,
    channel: Option<&str>,
    data: D,
    user_id: Option<&str>,
) -> Vec<u8> {
    // Serialising plain strings and integers into a Vec cannot fail.
    serde_json::to_vec(&Frame {
        event,
        channel,
        data,
        user_id,
    })
    .unwrap_or_default()
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

pub fn connection_established(socket_id: SocketId, activity_timeout_secs: u64) -> Vec<u8> {
    let data =
        format!(r#"{{"socket_id":"{socket_id}","activity_timeout":{activity_timeout_secs}}}"#);
    encode("pusher:connection_established", None, data, None)
}

#[derive(Serialize)]
struct ErrorData<'a> {
    code: Option<u16>,
    message: &'a str,
}

/// `pusher:error` with `code` (`None` for a non-fatal error) and a message.
pub fn error(code: Option<u16>, message: &str) -> Vec<u8> {
    encode("pusher:error", None, ErrorData { code, message }, None)
}

#[derive(Serialize)]
struct SubscriptionErrorData<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    error: &'a str,
    status: u16,
}

/// A channel-scoped `pusher:subscription_error`, which pusher-js and laravel-echo route to the
/// channel's `error` handlers.
pub fn subscription_error(channel: &str, kind: &str, error: &str, status: u16) -> Vec<u8> {
    encode(
        "pusher:subscription_error",
        Some(channel),
        SubscriptionErrorData {
            kind,
            error,
            status,
        },
        None,
    )
}

pub fn pong() -> Vec<u8> {
    br#"{"event":"pusher:pong","data":"{}"}"#.to_vec()
}

pub fn ping() -> Vec<u8> {
    br#"{"event":"pusher:ping","data":"{}"}"#.to_vec()
}

pub fn subscription_succeeded(channel: &str) -> Vec<u8> {
    encode(
        "pusher_internal:subscription_succeeded",
        Some(channel),
        "{}",
        None,
    )
}

/// Presence `subscription_succeeded` with `ids`, `hash` and `count`.
pub fn presence_subscription_succeeded(channel: &str, members: &[Member]) -> Vec<u8> {
    let mut ids = String::from("[");
    let mut hash = String::from("{");
    for (i, m) in members.iter().enumerate() {
        if i > 0 {
            ids.push(',');
            hash.push(',');
        }
        let id = json_string(&m.user_id);
        ids.push_str(&id);
        hash.push_str(&id);
        hash.push(':');
        hash.push_str(m.user_info.as_deref().unwrap_or("null"));
    }
    ids.push(']');
    hash.push('}');
    let data = format!(
        r#"{{"presence":{{"ids":{ids},"hash":{hash},"count":{}}}}}"#,
        members.len()
    );
    encode(
        "pusher_internal:subscription_succeeded",
        Some(channel),
        data,
        None,
    )
}

pub fn member_added(channel: &str, member: &Member) -> Vec<u8> {
    let data = match &member.user_info {
        Some(info) => format!(
            r#"{{"user_id":{},"user_info":{info}}}"#,
            json_string(&member.user_id)
        ),
        None => format!(r#"{{"user_id":{}}}"#, json_string(&member.user_id)),
    };
    encode("pusher_internal:member_added", Some(channel), data, None)
}

pub fn member_removed(channel: &str, user_id: &str) -> Vec<u8> {
    encode(
        "pusher_internal:member_removed",
        Some(channel),
        format!(r#"{{"user_id":{}}}"#, json_string(user_id)),
        None,
    )
}

/// An app event on a channel: from the HTTP API, or a client event (then with `user_id` on
/// presence channels).
pub fn channel_event(event: &str, channel: &str, data: &str, user_id: Option<&str>) -> Vec<u8> {
    encode(event, Some(channel), data, user_id)
}

pub fn cache_miss(channel: &str) -> Vec<u8> {
    encode("pusher:cache_miss", Some(channel), "{}", None)
}

/// A channel's stream position (history channels): the epoch names the stream, the offset
/// counts its events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Position {
    pub epoch: String,
    pub offset: u64,
}

/// `frame` (a JSON object) with a top-level `position` added:
/// `{…,"position":{"epoch":"E","offset":N}}`. pusher-js keeps only `event`, `channel`,
/// `data` and `user_id` of a frame, so stock clients see exactly what they saw without it;
/// the recovery plugin reads it from the raw frame. The epoch is Herald's own (letters and
/// digits), so it needs no escaping; the Redis publish script builds the same bytes.
pub fn with_position(frame: &[u8], epoch: &str, offset: u64) -> Vec<u8> {
    let body = frame.strip_suffix(b"}").unwrap_or(frame);
    let mut out = Vec::with_capacity(body.len() + epoch.len() + 48);
    out.extend_from_slice(body);
    out.extend_from_slice(br#","position":{"epoch":""#);
    out.extend_from_slice(epoch.as_bytes());
    out.extend_from_slice(br#"","offset":"#);
    out.extend_from_slice(offset.to_string().as_bytes());
    out.extend_from_slice(b"}}");
    out
}

/// The frame [`with_position`] was given, from what it returned: the event as a client that
/// did not ask for positions gets it. `None` when `frame` does not end with that position.
pub fn without_position(frame: &[u8], epoch: &str, offset: u64) -> Option<Vec<u8>> {
    let suffix = format!(r#","position":{{"epoch":"{epoch}","offset":{offset}}}}}"#);
    let body = frame.strip_suffix(suffix.as_bytes())?;
    let mut out = Vec::with_capacity(body.len() + 1);
    out.extend_from_slice(body);
    out.push(b'}');
    Some(out)
}

#[derive(Serialize)]
struct RecoveryData<'a> {
    recovered: bool,
    replayed: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

/// `herald:recovery` on a channel, sent only to a client that asked to resume it: whether
/// every missed event follows (`recovered`, `replayed` of them) or the client must refetch
/// its state (`reason`).
pub fn recovery(channel: &str, recovered: bool, replayed: usize, reason: Option<&str>) -> Vec<u8> {
    let data = serde_json::to_string(&RecoveryData {
        recovered,
        replayed,
        reason,
    })
    .unwrap_or_default();
    encode("herald:recovery", Some(channel), data, None)
}

#[derive(Serialize)]
struct SigninData<'a> {
    user_data: &'a str,
}

pub fn signin_success(user_data: &str) -> Vec<u8> {
    encode(
        "pusher:signin_success",
        None,
        SigninData { user_data },
        None,
    )
}

pub fn subscription_count(channel: &str, count: u64) -> Vec<u8> {
    encode(
        "pusher_internal:subscription_count",
        Some(channel),
        format!(r#"{{"subscription_count":{count}}}"#),
        None,
    )
}

#[derive(Serialize)]
struct WatchlistEvent<'a> {
    name: &'a str,
    user_ids: &'a [String],
}

#[derive(Serialize)]
struct WatchlistEvents<'a> {
    events: Vec<WatchlistEvent<'a>>,
}

/// `pusher_internal:watchlist_events` with the given online and offline user ids (empty lists
/// are left out).
pub fn watchlist_events(online: &[String], offline: &[String]) -> Vec<u8> {
    let mut events = Vec::new();
    if !online.is_empty() {
        events.push(WatchlistEvent {
            name: "online",
            user_ids: online,
        });
    }
    if !offline.is_empty() {
        events.push(WatchlistEvent {
            name: "offline",
            user_ids: offline,
        });
    }
    let data = serde_json::to_string(&WatchlistEvents { events }).unwrap_or_default();
    encode("pusher_internal:watchlist_events", None, data, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: Vec<u8>) -> String {
        String::from_utf8(v).expect("utf8")
    }

    #[test]
    fn double_encodes_data() {
        assert_eq!(
            s(connection_established("1.2".parse().expect("ok"), 120)),
            r#"{"event":"pusher:connection_established","data":"{\"socket_id\":\"1.2\",\"activity_timeout\":120}"}"#
        );
        assert_eq!(
            s(subscription_succeeded("my-channel")),
            r#"{"event":"pusher_internal:subscription_succeeded","channel":"my-channel","data":"{}"}"#
        );
        assert_eq!(
            s(channel_event(
                "client-x",
                "presence-y",
                "{\"a\":1}",
                Some("42")
            )),
            r#"{"event":"client-x","channel":"presence-y","data":"{\"a\":1}","user_id":"42"}"#
        );
    }

    #[test]
    fn error_data_is_an_object() {
        assert_eq!(
            s(error(Some(4001), "nope")),
            r#"{"event":"pusher:error","data":{"code":4001,"message":"nope"}}"#
        );
        assert_eq!(
            s(error(None, "x")),
            r#"{"event":"pusher:error","data":{"code":null,"message":"x"}}"#
        );
    }

    #[test]
    fn presence_payload_parses_as_pusher_js_expects() {
        let members = vec![
            Member {
                user_id: "1".into(),
                user_info: Some(r#"{"name":"A"}"#.into()),
            },
            Member {
                user_id: "2".into(),
                user_info: None,
            },
        ];
        let frame: serde_json::Value =
            serde_json::from_slice(&presence_subscription_succeeded("presence-a", &members))
                .expect("json");
        let data: serde_json::Value =
            serde_json::from_str(frame["data"].as_str().expect("string")).expect("json");
        assert_eq!(data["presence"]["count"], 2);
        assert_eq!(data["presence"]["ids"], serde_json::json!(["1", "2"]));
        assert_eq!(data["presence"]["hash"]["1"]["name"], "A");
        assert!(data["presence"]["hash"]["2"].is_null());
        let added: serde_json::Value =
            serde_json::from_slice(&member_added("presence-a", &members[0])).expect("json");
        let added: serde_json::Value =
            serde_json::from_str(added["data"].as_str().expect("string")).expect("json");
        assert_eq!(added["user_info"]["name"], "A");
    }

    #[test]
    fn positions_are_a_top_level_field_pusher_js_does_not_keep() {
        let framed = s(with_position(
            &channel_event("e", "orders.1", "{}", None),
            "Ab12",
            42,
        ));
        assert_eq!(
            framed,
            r#"{"event":"e","channel":"orders.1","data":"{}","position":{"epoch":"Ab12","offset":42}}"#
        );
        let v: serde_json::Value = serde_json::from_str(&framed).expect("json");
        assert_eq!(v["position"]["offset"], 42);
        assert_eq!(
            without_position(framed.as_bytes(), "Ab12", 42).map(s),
            Some(r#"{"event":"e","channel":"orders.1","data":"{}"}"#.to_owned())
        );
        assert_eq!(without_position(framed.as_bytes(), "Ab12", 4), None);
        assert_eq!(
            s(recovery("orders.1", false, 0, Some("epoch_changed"))),
            r#"{"event":"herald:recovery","channel":"orders.1","data":"{\"recovered\":false,\"replayed\":0,\"reason\":\"epoch_changed\"}"}"#
        );
    }

    #[test]
    fn signin_and_watchlist() {
        assert_eq!(
            s(signin_success(r#"{"id":"1"}"#)),
            r#"{"event":"pusher:signin_success","data":{"user_data":"{\"id\":\"1\"}"}}"#
        );
        let w = s(watchlist_events(&["1".into()], &[]));
        assert_eq!(
            w,
            r#"{"event":"pusher_internal:watchlist_events","data":"{\"events\":[{\"name\":\"online\",\"user_ids\":[\"1\"]}]}"}"#
        );
    }
}
