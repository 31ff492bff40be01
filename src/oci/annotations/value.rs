//! Parsers for annotation values, with the words used when a value is rejected.

/// Values Go's `strconv.ParseBool` accepts.
pub(super) const BOOL_ACCEPTED: &str =
    "accepted: true, false, 1, 0, t, f, T, F, TRUE, FALSE, True, False";

/// A boolean the way Go's `strconv.ParseBool` reads it.
pub(super) fn parse_bool(value: &str) -> Option<bool> {
    match value {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// A decimal u32 the way Go's `strconv.ParseUint(value, 10, 32)` reads it: digits only (no sign,
/// no spaces), at most `u32::MAX`.
pub(super) fn parse_u32(value: &str) -> Option<u32> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

/// Words for a SHA-512 digest.
pub(super) const SHA512_ACCEPTED: &str = "accepted: a SHA-512 digest, 128 hexadecimal digits";

/// `value` is a hexadecimal SHA-512 digest.
pub(super) fn is_sha512(value: &str) -> bool {
    value.len() == 128 && value.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bools() {
        for t in ["1", "t", "T", "true", "TRUE", "True"] {
            assert_eq!(parse_bool(t), Some(true));
        }
        for f in ["0", "f", "F", "false", "FALSE", "False"] {
            assert_eq!(parse_bool(f), Some(false));
        }
        for bad in ["", "yes", "tRUE", " true", "2"] {
            assert_eq!(parse_bool(bad), None);
        }
    }

    #[test]
    fn u32s() {
        assert_eq!(parse_u32("0"), Some(0));
        assert_eq!(parse_u32("007"), Some(7));
        assert_eq!(parse_u32("4294967295"), Some(u32::MAX));
        for bad in ["", "4294967296", "-1", "+1", " 1", "1.0", "0x10", "1_000"] {
            assert_eq!(parse_u32(bad), None, "{bad}");
        }
    }

    #[test]
    fn sha512() {
        assert!(is_sha512(&"aB".repeat(64)));
        assert!(!is_sha512(&"a".repeat(127)));
        assert!(!is_sha512(&"g".repeat(128)));
    }
}
