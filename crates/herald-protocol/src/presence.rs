//! Presence `channel_data` and sign-in `user_data` (<https://pusher.com/docs/channels/library_auth_reference/auth-signatures/>).

use simd_json::prelude::*;
use simd_json::OwnedValue;

use crate::ProtocolError;

/// Longest presence `user_id` (docs: 128 characters).
pub const MAX_USER_ID_LEN: usize = 128;

/// One presence member. `user_info` is kept as the JSON text to send on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub user_id: String,
    pub user_info: Option<String>,
}

fn parse_object(
    text: &str,
    what: fn(String) -> ProtocolError,
) -> Result<OwnedValue, ProtocolError> {
    crate::json::check(text.as_bytes()).map_err(|e| what(e.to_string()))?;
    let mut bytes = text.as_bytes().to_vec();
    let value =
        simd_json::to_owned_value(&mut bytes).map_err(|e| what(format!("not JSON: {e}")))?;
    if !value.is_object() {
        return Err(what("must be a JSON object".into()));
    }
    Ok(value)
}

fn user_info(
    value: &OwnedValue,
    max_bytes: usize,
    what: fn(String) -> ProtocolError,
) -> Result<Option<String>, ProtocolError> {
    match value.get("user_info") {
        None => Ok(None),
        Some(v) if v.is_null() => Ok(None),
        Some(v) => {
            let text = simd_json::to_string(v).map_err(|e| what(e.to_string()))?;
            if text.len() > max_bytes {
                return Err(ProtocolError::UserInfoTooLarge(text.len(), max_bytes));
            }
            Ok(Some(text))
        }
    }
}

fn check_user_id(id: &str, what: fn(String) -> ProtocolError) -> Result<(), ProtocolError> {
    if id.is_empty() {
        return Err(what("user id is empty".into()));
    }
    if id.chars().count() > MAX_USER_ID_LEN {
        return Err(what(format!(
            "user id is over {MAX_USER_ID_LEN} characters"
        )));
    }
    Ok(())
}

/// Parses presence `channel_data`: `{"user_id": <string|number>, "user_info": <any>}`.
pub fn parse_channel_data(text: &str, max_user_info_bytes: usize) -> Result<Member, ProtocolError> {
    let what = ProtocolError::InvalidChannelData;
    let value = parse_object(text, what)?;
    let user_id = match value.get("user_id") {
        Some(v) if v.is_str() => v.as_str().unwrap_or_default().to_owned(),
        Some(v) if v.is_number() => simd_json::to_string(v).map_err(|e| what(e.to_string()))?,
        _ => return Err(what("user_id must be a string or a number".into())),
    };
    check_user_id(&user_id, what)?;
    Ok(Member {
        user_id,
        user_info: user_info(&value, max_user_info_bytes, what)?,
    })
}

/// Sign-in `user_data`: `id` (non-empty string), optional `user_info` and `watchlist`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserData {
    pub id: String,
    pub user_info: Option<String>,
    pub watchlist: Vec<String>,
}

pub fn parse_user_data(text: &str, max_user_info_bytes: usize) -> Result<UserData, ProtocolError> {
    let what = ProtocolError::InvalidUserData;
    let value = parse_object(text, what)?;
    let id = match value.get("id") {
        Some(v) if v.is_str() => v.as_str().unwrap_or_default().to_owned(),
        _ => return Err(what("id must be a non-empty string".into())),
    };
    check_user_id(&id, what)?;
    crate::ChannelName::server_to_user(&id)
        .map_err(|_| what("id has characters outside A-Z a-z 0-9 _ - = @ , . ;".into()))?;
    let watchlist = match value.get("watchlist") {
        None => Vec::new(),
        Some(v) if v.is_null() => Vec::new(),
        Some(v) => v
            .as_array()
            .ok_or_else(|| what("watchlist must be an array of user ids".into()))?
            .iter()
            .map(|id| {
                id.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| what("watchlist entries must be strings".into()))
            })
            .collect::<Result<_, _>>()?,
    };
    Ok(UserData {
        id,
        user_info: user_info(&value, max_user_info_bytes, what)?,
        watchlist,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_data_with_string_or_number_ids() {
        let m =
            parse_channel_data(r#"{"user_id":"7","user_info":{"name":"A"}}"#, 1024).expect("ok");
        assert_eq!(
            m,
            Member {
                user_id: "7".into(),
                user_info: Some(r#"{"name":"A"}"#.into())
            }
        );
        let m = parse_channel_data(r#"{"user_id":10}"#, 1024).expect("ok");
        assert_eq!(
            m,
            Member {
                user_id: "10".into(),
                user_info: None
            }
        );
    }

    #[test]
    fn channel_data_errors() {
        for bad in [
            "",
            "[]",
            "{}",
            r#"{"user_id":""}"#,
            r#"{"user_id":true}"#,
            r#"{"user_id":null}"#,
        ] {
            assert!(parse_channel_data(bad, 1024).is_err(), "{bad}");
        }
        let long_id = format!(r#"{{"user_id":"{}"}}"#, "x".repeat(129));
        assert!(parse_channel_data(&long_id, 1024).is_err());
        let big = format!(r#"{{"user_id":"1","user_info":"{}"}}"#, "x".repeat(1100));
        assert!(matches!(
            parse_channel_data(&big, 1024),
            Err(ProtocolError::UserInfoTooLarge(..))
        ));
    }

    #[test]
    fn deep_channel_data_and_user_data_are_refused() {
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let cd = format!(r#"{{"user_id":"1","user_info":{deep}}}"#);
        assert!(matches!(
            parse_channel_data(&cd, 1 << 20),
            Err(ProtocolError::InvalidChannelData(m)) if m.contains("nested more than")
        ));
        let ud = format!(r#"{{"id":"1","watchlist":{deep}}}"#);
        assert!(matches!(
            parse_user_data(&ud, 1 << 20),
            Err(ProtocolError::InvalidUserData(m)) if m.contains("nested more than")
        ));
    }

    #[test]
    fn user_data() {
        let u = parse_user_data(
            r#"{"id":"12345","user_info":{"n":1},"watchlist":["1","2"]}"#,
            1024,
        )
        .expect("ok");
        assert_eq!(u.id, "12345");
        assert_eq!(u.user_info.as_deref(), Some(r#"{"n":1}"#));
        assert_eq!(u.watchlist, vec!["1", "2"]);
        for bad in [
            r#"{"id":12}"#,
            r#"{"id":""}"#,
            r#"{"name":"x"}"#,
            r#"{"id":"a b"}"#,
            r#"{"id":"1","watchlist":"x"}"#,
        ] {
            assert!(parse_user_data(bad, 1024).is_err(), "{bad}");
        }
    }
}
