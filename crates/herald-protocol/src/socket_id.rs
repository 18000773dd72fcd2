//! Socket ids: two unsigned decimal integers joined by a dot (`^\d+\.\d+$`).

use std::fmt;
use std::str::FromStr;

use rand::Rng;

use crate::ProtocolError;

/// A connection's id, unique within a cluster with overwhelming probability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SocketId {
    high: u64,
    low: u64,
}

impl SocketId {
    /// A fresh id from the caller's random number generator (no hidden global state).
    pub fn generate(rng: &mut impl Rng) -> Self {
        SocketId {
            high: rng.random_range(1..=9_999_999_999),
            low: rng.random_range(1..=9_999_999_999),
        }
    }

    pub fn from_parts(high: u64, low: u64) -> Self {
        SocketId { high, low }
    }

    /// A compact form for hashing and bus messages.
    pub fn as_u128(self) -> u128 {
        ((self.high as u128) << 64) | self.low as u128
    }

    pub fn from_u128(v: u128) -> Self {
        SocketId {
            high: (v >> 64) as u64,
            low: v as u64,
        }
    }
}

impl fmt::Display for SocketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.high, self.low)
    }
}

impl FromStr for SocketId {
    type Err = ProtocolError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ProtocolError::InvalidSocketId(s.chars().take(64).collect());
        let (a, b) = s.split_once('.').ok_or_else(bad)?;
        let digits =
            |p: &str| !p.is_empty() && p.len() <= 20 && p.bytes().all(|c| c.is_ascii_digit());
        if !digits(a) || !digits(b) {
            return Err(bad());
        }
        Ok(SocketId {
            high: a.parse().map_err(|_| bad())?,
            low: b.parse().map_err(|_| bad())?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display_round_trip() {
        let id: SocketId = "123.456".parse().expect("valid");
        assert_eq!(id.to_string(), "123.456");
        assert_eq!(SocketId::from_u128(id.as_u128()), id);
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "1",
            "1.",
            ".1",
            "1.2.3",
            "a.1",
            "1.b",
            "-1.2",
            "1 .2",
            "1.2 ",
            "99999999999999999999999.1",
        ] {
            assert!(
                bad.parse::<SocketId>().is_err(),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn generated_ids_match_the_sdk_pattern() {
        let mut rng = rand::rng();
        for _ in 0..1000 {
            let s = SocketId::generate(&mut rng).to_string();
            let (a, b) = s.split_once('.').expect("dot");
            assert!(a.bytes().all(|c| c.is_ascii_digit()) && b.bytes().all(|c| c.is_ascii_digit()));
            assert_eq!(s.parse::<SocketId>().expect("parses").to_string(), s);
        }
    }
}
