//! Messages a client sends over the WebSocket, decoded with simd-json.
//!
//! `data` is accepted as a JSON object or as a JSON string holding an object (pusher-js sends it as a string; other clients as an object).
//! Client-event data is kept as the string the other clients will receive: a string is passed
//! through verbatim, anything else is re-serialised once.

use serde::Deserialize;
use simd_json::prelude::*;
use simd_json::OwnedValue;

use crate::server::Position;
use crate::{ChannelName, ProtocolError, MAX_EVENT_NAME_LEN};

/// A resume request on a subscribe: the position the client last saw, or why the one it sent
/// cannot be used (the subscribe still goes ahead, without recovery).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    At(Position),
    Invalid(String),
}

/// Longest epoch accepted in a resume request (Herald's are 16 characters).
pub const MAX_EPOCH_LEN: usize = 64;

impl Resume {
    fn parse(value: &OwnedValue) -> Resume {
        let epoch = value.get("epoch").and_then(|e| e.as_str());
        let offset = value.get("offset").and_then(|o| o.as_u64());
        match (epoch, offset) {
            (Some(e), Some(offset))
                if !e.is_empty()
                    && e.len() <= MAX_EPOCH_LEN
                    && e.bytes().all(|b| b.is_ascii_alphanumeric()) =>
            {
                Resume::At(Position {
                    epoch: e.to_owned(),
                    offset,
                })
            }
            _ => Resume::Invalid(
                "position must be {\"epoch\": letters and digits, \"offset\": a non-negative integer}"
                    .into(),
            ),
        }
    }
}

/// A decoded client frame.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMessage {
    Ping,
    Pong,
    Subscribe {
        channel: ChannelName,
        auth: Option<String>,
        channel_data: Option<String>,
        /// Where a returning client left off (sent by the recovery plugin).
        position: Option<Resume>,
    },
    Unsubscribe {
        channel: ChannelName,
    },
    Signin {
        auth: String,
        user_data: String,
    },
    ClientEvent {
        event: String,
        channel: ChannelName,
        data: String,
    },
    /// `herald:positions`: the client (the recovery plugin) wants the stream position of
    /// history channels' events. Stock clients never send it, and get frames without positions.
    WantsPositions,
}

#[derive(Deserialize)]
struct Envelope {
    event: String,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    data: Option<OwnedValue>,
}

impl ClientMessage {
    /// Decodes one text frame. simd-json parses in place, so the buffer is scratch afterwards.
    pub fn decode(frame: &mut [u8]) -> Result<Self, ProtocolError> {
        crate::json::check(frame)?;
        let value = simd_json::to_owned_value(frame)
            .map_err(|e| ProtocolError::InvalidJson(e.to_string()))?;
        if !value.is_object() {
            return Err(ProtocolError::InvalidMessage(
                "a frame must be a JSON object".into(),
            ));
        }
        let envelope: Envelope = simd_json::serde::from_owned_value(value)
            .map_err(|e| ProtocolError::InvalidMessage(e.to_string()))?;
        let Envelope {
            event,
            channel,
            data,
        } = envelope;
        if event.len() > MAX_EVENT_NAME_LEN {
            return Err(ProtocolError::InvalidEventName(format!(
                "event name is {} characters long, over the limit of {MAX_EVENT_NAME_LEN}",
                event.len()
            )));
        }
        match event.as_str() {
            "pusher:ping" => Ok(ClientMessage::Ping),
            "pusher:pong" => Ok(ClientMessage::Pong),
            "pusher:subscribe" => {
                let data = object_data(data, &event)?;
                Ok(ClientMessage::Subscribe {
                    channel: ChannelName::parse(&required_str(&data, "channel", &event)?)?,
                    auth: optional_str(&data, "auth", &event)?.filter(|a| !a.is_empty()),
                    channel_data: optional_str(&data, "channel_data", &event)?,
                    position: data
                        .get("position")
                        .filter(|p| !p.is_null())
                        .map(Resume::parse),
                })
            }
            "pusher:unsubscribe" => {
                let data = object_data(data, &event)?;
                Ok(ClientMessage::Unsubscribe {
                    channel: ChannelName::parse(&required_str(&data, "channel", &event)?)?,
                })
            }
            "pusher:signin" => {
                let data = object_data(data, &event)?;
                Ok(ClientMessage::Signin {
                    auth: required_str(&data, "auth", &event)?,
                    user_data: required_str(&data, "user_data", &event)?,
                })
            }
            "herald:positions" => Ok(ClientMessage::WantsPositions),
            e if e.starts_with("pusher:")
                || e.starts_with("pusher_internal:")
                || e.starts_with("herald:") =>
            {
                Err(ProtocolError::UnknownEvent(format!(
                    "{e} is not an event a client may send"
                )))
            }
            e if e.starts_with("client-") => {
                let channel = channel.ok_or_else(|| {
                    ProtocolError::InvalidMessage(format!("client event {e} names no channel"))
                })?;
                let channel = ChannelName::parse(&channel)?;
                let data = match data {
                    None | Some(OwnedValue::Static(simd_json::StaticNode::Null)) => "{}".to_owned(),
                    Some(OwnedValue::String(s)) => s,
                    Some(other) => simd_json::to_string(&other).map_err(|err| {
                        ProtocolError::InvalidMessage(format!("client event data: {err}"))
                    })?,
                };
                Ok(ClientMessage::ClientEvent {
                    event,
                    channel,
                    data,
                })
            }
            e => Err(ProtocolError::ClientEventRejected(format!(
                "event names sent by clients must start with client- (got {e:?})"
            ))),
        }
    }
}

/// `data` of a `pusher:` event: an object, or a string that holds one.
fn object_data(data: Option<OwnedValue>, event: &str) -> Result<OwnedValue, ProtocolError> {
    let value = match data {
        Some(OwnedValue::String(s)) => {
            let mut bytes = s.into_bytes();
            crate::json::check(&bytes)?;
            simd_json::to_owned_value(&mut bytes).map_err(|e| {
                ProtocolError::InvalidMessage(format!(
                    "{event} data is a string that is not JSON: {e}"
                ))
            })?
        }
        Some(v) => v,
        None => {
            return Err(ProtocolError::InvalidMessage(format!(
                "{event} needs a data object"
            )))
        }
    };
    if value.is_object() {
        Ok(value)
    } else {
        Err(ProtocolError::InvalidMessage(format!(
            "{event} data must be an object"
        )))
    }
}

fn optional_str(
    data: &OwnedValue,
    field: &str,
    event: &str,
) -> Result<Option<String>, ProtocolError> {
    match data.get(field) {
        None => Ok(None),
        Some(v) if v.is_null() => Ok(None),
        Some(v) => v.as_str().map(|s| Some(s.to_owned())).ok_or_else(|| {
            ProtocolError::InvalidMessage(format!("{event} field {field} must be a string"))
        }),
    }
}

fn required_str(data: &OwnedValue, field: &str, event: &str) -> Result<String, ProtocolError> {
    optional_str(data, field, event)?.ok_or_else(|| {
        ProtocolError::InvalidMessage(format!("{event} needs a string field {field}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(s: &str) -> Result<ClientMessage, ProtocolError> {
        ClientMessage::decode(&mut s.as_bytes().to_vec())
    }

    #[test]
    fn decodes_what_pusher_js_sends() {
        assert_eq!(
            decode(r#"{"event":"pusher:ping","data":{}}"#),
            Ok(ClientMessage::Ping)
        );
        assert_eq!(
            decode(r#"{"event":"pusher:pong","data":{}}"#),
            Ok(ClientMessage::Pong)
        );
        assert_eq!(
            decode(r#"{"event":"pusher:subscribe","data":{"channel":"my-channel","auth":""}}"#),
            Ok(ClientMessage::Subscribe {
                channel: ChannelName::parse("my-channel").expect("ok"),
                auth: None,
                channel_data: None,
                position: None
            })
        );
        let presence = r#"{"event":"pusher:subscribe","data":{"auth":"k:abc","channel_data":"{\"user_id\":\"1\"}","channel":"presence-x"}}"#;
        assert_eq!(
            decode(presence),
            Ok(ClientMessage::Subscribe {
                channel: ChannelName::parse("presence-x").expect("ok"),
                auth: Some("k:abc".into()),
                channel_data: Some(r#"{"user_id":"1"}"#.into()),
                position: None
            })
        );
        assert_eq!(
            decode(
                r#"{"event":"pusher:signin","data":{"auth":"k:abc","user_data":"{\"id\":\"1\"}"}}"#
            ),
            Ok(ClientMessage::Signin {
                auth: "k:abc".into(),
                user_data: r#"{"id":"1"}"#.into()
            })
        );
        assert_eq!(
            decode(r#"{"event":"pusher:unsubscribe","data":{"channel":"private-x"}}"#),
            Ok(ClientMessage::Unsubscribe {
                channel: ChannelName::parse("private-x").expect("ok")
            })
        );
    }

    #[test]
    fn subscribe_may_carry_a_resume_position() {
        let ok = decode(
            r#"{"event":"pusher:subscribe","data":{"channel":"orders.1","position":{"epoch":"Ab12","offset":7}}}"#,
        );
        assert!(matches!(
            ok,
            Ok(ClientMessage::Subscribe { position: Some(Resume::At(Position { ref epoch, offset: 7 })), .. }) if epoch == "Ab12"
        ));
        for bad in [
            r#"{"epoch":"Ab12","offset":-1}"#,
            r#"{"epoch":"Ab12"}"#,
            r#"{"epoch":"a-b","offset":1}"#,
            r#"{"epoch":"","offset":1}"#,
            r#""Ab12:7""#,
        ] {
            let frame = format!(
                r#"{{"event":"pusher:subscribe","data":{{"channel":"orders.1","position":{bad}}}}}"#
            );
            assert!(
                matches!(
                    decode(&frame),
                    Ok(ClientMessage::Subscribe {
                        position: Some(Resume::Invalid(_)),
                        ..
                    })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn accepts_data_as_a_json_string() {
        assert_eq!(
            decode(r#"{"event":"pusher:subscribe","data":"{\"channel\":\"a\"}"}"#),
            Ok(ClientMessage::Subscribe {
                channel: ChannelName::parse("a").expect("ok"),
                auth: None,
                channel_data: None,
                position: None
            })
        );
    }

    #[test]
    fn client_event_data_becomes_a_string() {
        let ClientMessage::ClientEvent { data, event, .. } =
            decode(r#"{"event":"client-typing","channel":"private-x","data":{"a":1}}"#)
                .expect("ok")
        else {
            panic!("not a client event")
        };
        assert_eq!(event, "client-typing");
        assert_eq!(data, r#"{"a":1}"#);
        let ClientMessage::ClientEvent { data, .. } =
            decode(r#"{"event":"client-typing","channel":"private-x","data":"raw"}"#).expect("ok")
        else {
            panic!("not a client event")
        };
        assert_eq!(data, "raw");
    }

    /// Each of these aborted the process with a stack overflow before depth was bounded.
    #[test]
    fn deep_nesting_is_refused_not_recursed_into() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        let string_data = serde_json::to_string(&format!(r#"{{"channel":{}}}"#, deep(5000)))
            .expect("json string");
        let cases = [
            format!(r#"{{"event":"pusher:ping","data":{}}}"#, deep(5000)),
            format!(
                r#"{{"event":"pusher:ping","x":{},"data":{{}}}}"#,
                deep(100_000)
            ),
            format!(r#"{{"event":"pusher:subscribe","data":{string_data}}}"#),
            format!(
                r#"{{"event":"client-x","channel":"private-a","data":{}}}"#,
                deep(5000)
            ),
        ];
        for case in cases {
            let err = decode(&case).expect_err("too deep");
            assert!(err.to_string().contains("nested more than"), "{err}");
            assert_eq!(err.ws_code(), None, "the connection stays open");
        }
        // Ordinary nesting in client events still passes.
        let ok = format!(
            r#"{{"event":"client-x","channel":"private-a","data":{{"a":{}}}}}"#,
            deep(60)
        );
        assert!(decode(&ok).is_ok());
    }

    #[test]
    fn rejects_bad_input_with_clear_errors() {
        let cases: &[(&str, &str)] = &[
            ("{not json", "Invalid JSON"),
            ("[]", "Invalid"),
            (r#"{"data":{}}"#, "Invalid message format"),
            (r#"{"event":5}"#, "Invalid message format"),
            (r#"{"event":"pusher:subscribe"}"#, "needs a data object"),
            (
                r#"{"event":"pusher:subscribe","data":{"channel":5}}"#,
                "must be a string",
            ),
            (r#"{"event":"pusher:subscribe","data":"nope"}"#, "not JSON"),
            (
                r#"{"event":"pusher:subscribe","data":[1]}"#,
                "must be an object",
            ),
            (
                r#"{"event":"pusher:subscribe","data":{"channel":"a b"}}"#,
                "Invalid channel name",
            ),
            (r#"{"event":"pusher:bogus","data":{}}"#, "Unsupported event"),
            (
                r#"{"event":"pusher_internal:member_added","data":{}}"#,
                "Unsupported event",
            ),
            (r#"{"event":"client-x","data":{}}"#, "names no channel"),
            (
                r#"{"event":"hello","channel":"private-a","data":{}}"#,
                "must start with client-",
            ),
        ];
        for (input, expected) in cases {
            let err = decode(input).expect_err(input);
            assert!(err.to_string().contains(expected), "{input}: {err}");
        }
        let long = format!(
            r#"{{"event":"client-{}","channel":"private-a","data":{{}}}}"#,
            "x".repeat(200)
        );
        assert!(matches!(
            decode(&long),
            Err(ProtocolError::InvalidEventName(_))
        ));
        let long_channel = format!(
            r#"{{"event":"pusher:subscribe","data":{{"channel":"{}"}}}}"#,
            "x".repeat(201)
        );
        assert!(matches!(
            decode(&long_channel),
            Err(ProtocolError::InvalidChannelName(_))
        ));
    }
}
