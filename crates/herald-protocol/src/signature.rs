//! WebSocket-side signatures (<https://pusher.com/docs/channels/library_auth_reference/auth-signatures/>): private and presence channel authorisation and
//! user sign-in. All are lowercase hex HMAC-SHA256 keyed with the app secret, sent as
//! `<app_key>:<hex>`, and compared in constant time.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::{ProtocolError, SocketId};

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &str) -> HmacSha256 {
    // HMAC accepts keys of any length, so this cannot fail.
    #[allow(clippy::expect_used)]
    HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length")
}

/// Lowercase hex HMAC-SHA256 of `input` keyed with `secret`.
pub fn sign(secret: &str, input: &[u8]) -> String {
    let mut m = mac(secret);
    m.update(input);
    hex::encode(m.finalize().into_bytes())
}

/// Checks a hex signature in constant time.
pub fn verify_hex(secret: &str, input: &[u8], signature_hex: &str) -> bool {
    let Ok(sig) = hex::decode(signature_hex) else {
        return false;
    };
    let mut m = mac(secret);
    m.update(input);
    m.verify_slice(&sig).is_ok()
}

/// The string signed to authorise a channel subscription.
pub fn channel_auth_input(
    socket_id: SocketId,
    channel: &str,
    channel_data: Option<&str>,
) -> String {
    match channel_data {
        Some(data) => format!("{socket_id}:{channel}:{data}"),
        None => format!("{socket_id}:{channel}"),
    }
}

/// The string signed to authenticate a user (`pusher:signin`).
pub fn user_auth_input(socket_id: SocketId, user_data: &str) -> String {
    format!("{socket_id}::user::{user_data}")
}

/// Verifies an `auth` field (`<app_key>:<hex>`) against `input`.
pub fn verify_auth(
    app_key: &str,
    secret: &str,
    input: &str,
    auth: &str,
) -> Result<(), ProtocolError> {
    let invalid = || ProtocolError::InvalidSignature {
        expected_input: input.to_owned(),
        got: auth.chars().take(200).collect(),
    };
    let (key, sig) = auth.split_once(':').ok_or_else(invalid)?;
    if key != app_key || !verify_hex(secret, input.as_bytes(), sig) {
        return Err(invalid());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "278d425bdf160c739803";
    const SECRET: &str = "7ad3773142a6692b25b8";

    fn sid() -> SocketId {
        "1234.1234".parse().expect("valid")
    }

    #[test]
    fn fact_sheet_vectors() {
        let vectors = [
            (
                channel_auth_input(sid(), "private-foobar", None),
                "58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4",
            ),
            (
                channel_auth_input(
                    sid(),
                    "presence-foobar",
                    Some(r#"{"user_id":10,"user_info":{"name":"Mr. Channels"}}"#),
                ),
                "31935e7d86dba64c2a90aed31fdc61869f9b22ba9d8863bba239c03ca481bc80",
            ),
            (
                user_auth_input(sid(), r#"{"id":"12345"}"#),
                "4708d583dada6a56435fb8bc611c77c359a31eebde13337c16ab43aa6de336ba",
            ),
        ];
        for (input, expected) in vectors {
            assert_eq!(sign(SECRET, input.as_bytes()), expected, "{input}");
            verify_auth(KEY, SECRET, &input, &format!("{KEY}:{expected}")).expect("verifies");
        }
    }

    #[test]
    fn rejects_foreign_and_malformed_signatures() {
        let input = channel_auth_input(sid(), "private-foobar", None);
        let good = sign(SECRET, input.as_bytes());
        // Wrong key part, wrong secret, other socket, not hex, no colon, truncated.
        let other_socket = sign(
            SECRET,
            channel_auth_input("1.1".parse().expect("valid"), "private-foobar", None).as_bytes(),
        );
        let bad = [
            format!("otherkey:{good}"),
            format!("{KEY}:{}", sign("other-secret", input.as_bytes())),
            format!("{KEY}:{other_socket}"),
            format!("{KEY}:zz{}", &good[2..]),
            good.clone(),
            format!("{KEY}:{}", &good[..10]),
            String::new(),
        ];
        for auth in bad {
            let err = verify_auth(KEY, SECRET, &input, &auth).expect_err(&auth);
            assert!(err.to_string().starts_with("Invalid signature: Expected HMAC SHA256 hex digest of 1234.1234:private-foobar"), "{err}");
        }
    }
}
