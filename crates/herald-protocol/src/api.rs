//! HTTP API request bodies and parameters (<https://pusher.com/docs/channels/library_auth_reference/rest-api/>), validated.

use serde::Deserialize;

use crate::{
    ChannelKind, ChannelName, ProtocolError, SocketId, MAX_EVENT_DATA_BYTES, MAX_EVENT_NAME_LEN,
};

/// Most channels one trigger may name.
pub const MAX_TRIGGER_CHANNELS: usize = 100;
/// Most events in one batch.
pub const MAX_BATCH_EVENTS: usize = 10;

/// The `info` attributes a caller asked for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InfoAttrs {
    pub user_count: bool,
    pub subscription_count: bool,
    pub cache: bool,
}

impl InfoAttrs {
    pub fn parse(list: Option<&str>) -> Result<Self, ProtocolError> {
        let mut attrs = InfoAttrs::default();
        for attr in list
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
        {
            match attr {
                "user_count" => attrs.user_count = true,
                "subscription_count" => attrs.subscription_count = true,
                "cache" => attrs.cache = true,
                other => {
                    return Err(ProtocolError::BadRequest(format!(
                        "Unknown info attribute {other:?}: expected user_count, subscription_count or cache"
                    )))
                }
            }
        }
        Ok(attrs)
    }

    pub fn any(self) -> bool {
        self.user_count || self.subscription_count || self.cache
    }

    /// Checks the attributes make sense for one channel (GET channel): `user_count` only on
    /// presence, `subscription_count` not on presence... is allowed by the service, `cache` only on cache channels.
    pub fn check_for(self, channel: &ChannelName) -> Result<(), ProtocolError> {
        if self.user_count && channel.kind() != ChannelKind::Presence {
            return Err(ProtocolError::BadRequest(format!(
                "info=user_count is only available for presence channels, not {channel}"
            )));
        }
        if self.cache && !channel.is_cache() {
            return Err(ProtocolError::BadRequest(format!(
                "info=cache is only available for cache channels, not {channel}"
            )));
        }
        Ok(())
    }
}

/// One validated event to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Publish {
    pub name: String,
    pub data: String,
    pub channels: Vec<ChannelName>,
    pub socket_id: Option<SocketId>,
    pub info: InfoAttrs,
}

#[derive(Deserialize)]
struct RawEvent {
    name: Option<String>,
    data: Option<simd_json::OwnedValue>,
    channel: Option<String>,
    channels: Option<Vec<String>>,
    socket_id: Option<String>,
    info: Option<String>,
}

#[derive(Deserialize)]
struct RawBatch {
    batch: Option<Vec<RawEvent>>,
}

fn bad(msg: impl Into<String>) -> ProtocolError {
    ProtocolError::BadRequest(msg.into())
}

fn parse_json<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ProtocolError> {
    crate::json::check(body).map_err(|e| bad(format!("Request body is not valid JSON: {e}")))?;
    let mut buf = body.to_vec();
    simd_json::serde::from_slice(&mut buf).map_err(|e| {
        bad(format!(
            "Request body is not valid JSON for this endpoint: {e}"
        ))
    })
}

impl RawEvent {
    fn validate(self, max_data_bytes: usize) -> Result<Publish, ProtocolError> {
        let name = self.name.ok_or_else(|| bad("Missing event name (name)"))?;
        if name.is_empty() || name.len() > MAX_EVENT_NAME_LEN {
            return Err(bad(format!(
                "Event name must be 1 to {MAX_EVENT_NAME_LEN} characters long"
            )));
        }
        let data = match self.data {
            Some(simd_json::OwnedValue::String(s)) => s,
            Some(_) => return Err(bad("Event data must be a string")),
            None => return Err(bad("Missing event data (data)")),
        };
        if data.len() > max_data_bytes {
            return Err(ProtocolError::PayloadTooLarge(data.len(), max_data_bytes));
        }
        let names = match (self.channels, self.channel) {
            (Some(list), _) => list,
            (None, Some(one)) => vec![one],
            (None, None) => return Err(bad("Missing channels: give channels (a list) or channel")),
        };
        if names.is_empty() {
            return Err(bad("channels must name at least one channel"));
        }
        if names.len() > MAX_TRIGGER_CHANNELS {
            return Err(bad(format!(
                "Too many channels: {} given, at most {MAX_TRIGGER_CHANNELS}",
                names.len()
            )));
        }
        let channels = names
            .iter()
            .map(|n| ChannelName::parse(n))
            .collect::<Result<Vec<_>, _>>()?;
        if channels.len() > 1 && channels.iter().any(|c| c.kind() == ChannelKind::Encrypted) {
            return Err(bad("Cannot trigger to several channels when one is an encrypted channel (private-encrypted-)"));
        }
        let socket_id = self
            .socket_id
            .filter(|s| !s.is_empty())
            .map(|s| s.parse::<SocketId>())
            .transpose()?;
        let info = InfoAttrs::parse(self.info.as_deref())?;
        Ok(Publish {
            name,
            data,
            channels,
            socket_id,
            info,
        })
    }
}

/// Parses the body of `POST /apps/{id}/events`.
pub fn parse_trigger(body: &[u8], max_data_bytes: usize) -> Result<Publish, ProtocolError> {
    parse_json::<RawEvent>(body)?.validate(max_data_bytes)
}

/// Parses the body of `POST /apps/{id}/batch_events`: each item names one `channel`.
pub fn parse_batch(body: &[u8], max_data_bytes: usize) -> Result<Vec<Publish>, ProtocolError> {
    let raw: RawBatch = parse_json(body)?;
    let items = raw
        .batch
        .ok_or_else(|| bad("Missing batch: the body must be {\"batch\": [...]}"))?;
    if items.len() > MAX_BATCH_EVENTS {
        return Err(bad(format!(
            "Batch too large: {} events given, at most {MAX_BATCH_EVENTS}",
            items.len()
        )));
    }
    items
        .into_iter()
        .map(|e| e.validate(max_data_bytes))
        .collect()
}

/// The default data limit, exported for configuration defaults.
pub const DEFAULT_MAX_DATA_BYTES: usize = MAX_EVENT_DATA_BYTES;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_with_channels_or_channel() {
        let p = parse_trigger(br#"{"name":"e","data":"{\"a\":1}","channels":["a","presence-b"],"socket_id":"1.2","info":"user_count"}"#, 10240)
            .expect("ok");
        assert_eq!(p.channels.len(), 2);
        assert_eq!(p.socket_id, Some("1.2".parse().expect("ok")));
        assert!(p.info.user_count);
        let p = parse_trigger(br#"{"name":"e","data":"x","channel":"a"}"#, 10240).expect("ok");
        assert_eq!(p.channels[0].as_str(), "a");
        assert!(parse_trigger(
            br##"{"name":"e","data":"x","channel":"#server-to-user-7"}"##,
            10240
        )
        .is_ok());
    }

    #[test]
    fn trigger_errors_map_to_statuses() {
        let too_big = format!(
            r#"{{"name":"e","data":"{}","channel":"a"}}"#,
            "x".repeat(10241)
        );
        assert_eq!(
            parse_trigger(too_big.as_bytes(), 10240)
                .unwrap_err()
                .http_status(),
            413
        );
        let many: Vec<String> = (0..101).map(|i| format!("\"c{i}\"")).collect();
        let many = format!(
            r#"{{"name":"e","data":"x","channels":[{}]}}"#,
            many.join(",")
        );
        assert_eq!(
            parse_trigger(many.as_bytes(), 10240)
                .unwrap_err()
                .http_status(),
            400
        );
        for body in [
            "nope",
            r#"{"data":"x","channel":"a"}"#,
            r#"{"name":"e","channel":"a"}"#,
            r#"{"name":"e","data":{"a":1},"channel":"a"}"#,
            r#"{"name":"e","data":"x"}"#,
            r#"{"name":"e","data":"x","channels":[]}"#,
            r#"{"name":"e","data":"x","channel":"a b"}"#,
            r#"{"name":"e","data":"x","channel":"a","socket_id":"x"}"#,
            r#"{"name":"e","data":"x","channel":"a","info":"bogus"}"#,
            r#"{"name":"e","data":"x","channels":["private-encrypted-a","b"]}"#,
            r#"{"name":"e","data":"x","channels":"a"}"#,
        ] {
            assert_eq!(
                parse_trigger(body.as_bytes(), 10240)
                    .unwrap_err()
                    .http_status(),
                400,
                "{body}"
            );
        }
        let long_name = format!(
            r#"{{"name":"{}","data":"x","channel":"a"}}"#,
            "e".repeat(201)
        );
        assert_eq!(
            parse_trigger(long_name.as_bytes(), 10240)
                .unwrap_err()
                .http_status(),
            400
        );
    }

    #[test]
    fn deeply_nested_bodies_are_a_400_not_a_crash() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let trigger = format!(r#"{{"name":"e","data":{deep},"channel":"a"}}"#);
        let batch = format!(r#"{{"batch":[{{"name":"e","data":"x","channel":"a","x":{deep}}}]}}"#);
        for err in [
            parse_trigger(trigger.as_bytes(), 10240).expect_err("too deep"),
            parse_batch(batch.as_bytes(), 10240).expect_err("too deep"),
        ] {
            assert_eq!(err.http_status(), 400);
            assert!(err.to_string().contains("nested more than"), "{err}");
        }
    }

    #[test]
    fn batch_limits() {
        let item = r#"{"name":"e","data":"x","channel":"a"}"#;
        let ok = format!(r#"{{"batch":[{}]}}"#, [item; 10].join(","));
        assert_eq!(parse_batch(ok.as_bytes(), 10240).expect("ok").len(), 10);
        let over = format!(r#"{{"batch":[{}]}}"#, [item; 11].join(","));
        assert_eq!(
            parse_batch(over.as_bytes(), 10240)
                .unwrap_err()
                .http_status(),
            400
        );
        assert_eq!(parse_batch(b"{}", 10240).unwrap_err().http_status(), 400);
    }

    #[test]
    fn info_attrs_per_channel() {
        let presence = ChannelName::parse("presence-a").expect("ok");
        let public = ChannelName::parse("a").expect("ok");
        let uc = InfoAttrs::parse(Some("user_count")).expect("ok");
        assert!(uc.check_for(&presence).is_ok());
        assert_eq!(uc.check_for(&public).unwrap_err().http_status(), 400);
        assert!(InfoAttrs::parse(Some("cache"))
            .expect("ok")
            .check_for(&public)
            .is_err());
        assert!(InfoAttrs::parse(Some("subscription_count,user_count"))
            .expect("ok")
            .any());
    }
}
