//! HTTP API request authentication (<https://pusher.com/docs/channels/library_auth_reference/rest-api/#authentication>).
//!
//! The string to sign is `METHOD\nPATH\nQUERY` where QUERY is every query parameter except
//! `auth_signature`, keys lower-cased, sorted by key, joined as `key=value` with `&`, values
//! unescaped. `body_md5` is checked whenever present (also on GET, as pusher-http-python sends
//! it) and required when the body is not empty.

use md5::{Digest, Md5};

use crate::signature::{sign, verify_hex};
use crate::ProtocolError;

/// How far `auth_timestamp` may be from the server's clock, in seconds.
pub const MAX_TIMESTAMP_SKEW_SECS: u64 = 600;

/// A received API request, as far as signing is concerned. `query` holds decoded pairs.
#[derive(Debug, Clone, Copy)]
pub struct SignedRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a [(String, String)],
    pub body: &'a [u8],
}

fn param<'a>(query: &'a [(String, String)], name: &str) -> Option<&'a str> {
    query
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Hex MD5 of a body.
pub fn body_md5(body: &[u8]) -> String {
    hex::encode(Md5::digest(body))
}

/// The canonical string that is signed.
pub fn string_to_sign(method: &str, path: &str, query: &[(String, String)]) -> String {
    let mut pairs: Vec<(String, &str)> = query
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("auth_signature"))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str()))
        .collect();
    pairs.sort();
    let query: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!(
        "{}\n{}\n{}",
        method.to_ascii_uppercase(),
        path,
        query.join("&")
    )
}

/// Verifies a request signed with `app_key`/`secret`; `now` is the server's Unix time in seconds.
pub fn verify(
    req: &SignedRequest<'_>,
    app_key: &str,
    secret: &str,
    now: u64,
) -> Result<(), ProtocolError> {
    let unauth = |m: &str| ProtocolError::Unauthenticated(m.to_owned());
    let key = param(req.query, "auth_key").ok_or_else(|| unauth("Missing auth_key parameter"))?;
    if key != app_key {
        return Err(unauth("Invalid auth_key: it does not belong to this app"));
    }
    let ts = param(req.query, "auth_timestamp")
        .ok_or_else(|| unauth("Missing auth_timestamp parameter"))?;
    let given: u64 = ts
        .parse()
        .map_err(|_| unauth("auth_timestamp must be a Unix time in seconds"))?;
    if given.abs_diff(now) > MAX_TIMESTAMP_SKEW_SECS {
        return Err(ProtocolError::TimestampExpired { given, now });
    }
    if let Some(v) = param(req.query, "auth_version") {
        if v != "1.0" {
            return Err(unauth("Unsupported auth_version: only 1.0 is supported"));
        }
    }
    match param(req.query, "body_md5") {
        Some(md5) if md5 != body_md5(req.body) => {
            return Err(unauth(
                "body_md5 does not match the MD5 of the request body",
            ));
        }
        None if !req.body.is_empty() => {
            return Err(unauth(
                "Missing body_md5 parameter for a request with a body",
            ))
        }
        _ => {}
    }
    let signature = param(req.query, "auth_signature")
        .ok_or_else(|| unauth("Missing auth_signature parameter"))?;
    let to_sign = string_to_sign(req.method, req.path, req.query);
    if !verify_hex(secret, to_sign.as_bytes(), signature) {
        return Err(ProtocolError::Unauthenticated(format!(
            "Invalid signature: Expected HMAC SHA256 hex digest of {to_sign:?}, but got {signature}"
        )));
    }
    Ok(())
}

/// Signs a request as the Pusher server SDKs do and returns its query string (values
/// percent-encoded). For clients of the API: tests and the load tool.
pub fn signed_query(
    app_key: &str,
    secret: &str,
    method: &str,
    path: &str,
    params: &[(&str, &str)],
    body: &[u8],
    timestamp: u64,
) -> String {
    let mut query: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    query.push(("auth_key".into(), app_key.into()));
    query.push(("auth_timestamp".into(), timestamp.to_string()));
    query.push(("auth_version".into(), "1.0".into()));
    if !body.is_empty() {
        query.push(("body_md5".into(), body_md5(body)));
    }
    let signature = sign(secret, string_to_sign(method, path, &query).as_bytes());
    query.push(("auth_signature".into(), signature));
    query
        .iter()
        .map(|(k, v)| format!("{k}={}", percent_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn percent_encode(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "278d425bdf160c739803";
    const SECRET: &str = "7ad3773142a6692b25b8";
    const BODY: &str = r#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn doc_query(sig: &str) -> Vec<(String, String)> {
        q(&[
            ("auth_key", KEY),
            ("auth_timestamp", "1353088179"),
            ("auth_version", "1.0"),
            ("body_md5", "ec365a775a4cd0599faeb73354201b6f"),
            ("auth_signature", sig),
        ])
    }

    const DOC_SIG: &str = "da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c";

    #[test]
    fn fact_sheet_vector() {
        assert_eq!(
            body_md5(BODY.as_bytes()),
            "ec365a775a4cd0599faeb73354201b6f"
        );
        let query = doc_query(DOC_SIG);
        assert_eq!(
            string_to_sign("POST", "/apps/3/events", &query),
            "POST\n/apps/3/events\nauth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0&body_md5=ec365a775a4cd0599faeb73354201b6f"
        );
        let req = SignedRequest {
            method: "POST",
            path: "/apps/3/events",
            query: &query,
            body: BODY.as_bytes(),
        };
        verify(&req, KEY, SECRET, 1353088179 + 599).expect("valid");
    }

    #[test]
    fn rejects_bad_requests() {
        let good = doc_query(DOC_SIG);
        let body = BODY.as_bytes();
        let now = 1353088179;
        let check = |query: &[(String, String)], body: &[u8], now: u64, path: &str| {
            verify(
                &SignedRequest {
                    method: "POST",
                    path,
                    query,
                    body,
                },
                KEY,
                SECRET,
                now,
            )
        };
        // Expired both ways.
        assert!(matches!(
            check(&good, body, now + 601, "/apps/3/events"),
            Err(ProtocolError::TimestampExpired { .. })
        ));
        assert!(matches!(
            check(&good, body, now - 601, "/apps/3/events"),
            Err(ProtocolError::TimestampExpired { .. })
        ));
        // Other path, other body, tampered signature, foreign secret.
        assert!(check(&good, body, now, "/apps/4/events").is_err());
        assert!(check(&good, b"{}", now, "/apps/3/events").is_err());
        assert!(check(
            &doc_query(&DOC_SIG.replace('d', "e")),
            body,
            now,
            "/apps/3/events"
        )
        .is_err());
        let foreign = sign(
            "other",
            string_to_sign("POST", "/apps/3/events", &good).as_bytes(),
        );
        assert!(check(&doc_query(&foreign), body, now, "/apps/3/events").is_err());
        // A body without body_md5.
        let no_md5: Vec<_> = good
            .iter()
            .filter(|(k, _)| k != "body_md5")
            .cloned()
            .collect();
        assert!(check(&no_md5, body, now, "/apps/3/events").is_err());
        // Wrong key.
        let mut other_key = good.clone();
        other_key[0].1 = "nope".into();
        assert_eq!(
            check(&other_key, body, now, "/apps/3/events")
                .unwrap_err()
                .http_status(),
            401
        );
    }

    #[test]
    fn get_with_body_md5_of_empty_body_verifies() {
        // pusher-http-python signs body_md5 on GET as well.
        let params = [
            ("info", "user_count,subscription_count"),
            ("body_md5", "d41d8cd98f00b204e9800998ecf8427e"),
        ];
        let qs = signed_query(
            KEY,
            SECRET,
            "GET",
            "/apps/3/channels/presence-a",
            &params,
            b"",
            1000,
        );
        let query: Vec<(String, String)> = qs
            .split('&')
            .map(|kv| {
                let (k, v) = kv.split_once('=').expect("pair");
                (k.to_string(), v.replace("%2C", ","))
            })
            .collect();
        let req = SignedRequest {
            method: "GET",
            path: "/apps/3/channels/presence-a",
            query: &query,
            body: b"",
        };
        verify(&req, KEY, SECRET, 1000).expect("valid");
    }
}
