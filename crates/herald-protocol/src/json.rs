//! Bounds on JSON that comes from the network, checked before any parser sees it.
//!
//! simd-json and serde build values recursively, one stack frame per level of nesting, so a
//! few kilobytes of `[[[[…` would overflow a worker thread's stack and abort the whole process.
//! Every parse of untrusted JSON in Herald first passes [`check_depth`], a single pass over the
//! bytes with a counter and no recursion.

use crate::ProtocolError;

/// Deepest nesting of arrays and objects accepted anywhere (client frames, `data` given as a
/// JSON string, API bodies, `channel_data`, `user_data`). Pusher messages nest two or three
/// levels; application data rarely more than ten.
pub const MAX_DEPTH: usize = 64;

/// Checks that `text` nests arrays and objects at most `max` levels deep. Brackets inside
/// strings (and escaped quotes) do not count. Malformed JSON is left for the parser to
/// report; only the depth is judged here.
pub fn check_depth(text: &[u8], max: usize) -> Result<(), ProtocolError> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in text {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return Err(ProtocolError::InvalidJson(format!(
                        "nested more than {max} levels deep"
                    )));
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// [`check_depth`] with [`MAX_DEPTH`].
pub fn check(text: &[u8]) -> Result<(), ProtocolError> {
    check_depth(text, MAX_DEPTH)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(n: usize) -> String {
        format!("{}{}", "[".repeat(n), "]".repeat(n))
    }

    #[test]
    fn depth_is_counted_outside_strings_only() {
        assert!(check_depth(nested(64).as_bytes(), 64).is_ok());
        assert!(check_depth(nested(65).as_bytes(), 64).is_err());
        assert!(check_depth(br#"{"a":{"b":[1,{"c":2}]}}"#, 4).is_ok());
        assert!(check_depth(br#"{"a":{"b":[1,{"c":2}]}}"#, 3).is_err());
        // Brackets in strings, and escaped quotes that do not end the string.
        let s = format!(r#"{{"a":"{}\"{}"}}"#, "[".repeat(500), "{".repeat(500));
        assert!(check_depth(s.as_bytes(), 1).is_ok());
        // Sequential (not nested) containers do not add up.
        let flat = "[],".repeat(10_000);
        assert!(check_depth(format!("[{flat}[]]").as_bytes(), 2).is_ok());
    }

    #[test]
    fn unbalanced_input_is_left_to_the_parser() {
        assert!(check_depth(b"]]]]]]", 1).is_ok());
        assert!(check_depth(b"[[[", 3).is_ok());
        assert!(check_depth(b"[[[[", 3).is_err());
    }

    #[test]
    fn a_megabyte_of_brackets_is_refused_without_recursion() {
        let err = check(nested(500_000).as_bytes()).expect_err("too deep");
        assert!(err.to_string().contains("nested more than 64"), "{err}");
    }
}
