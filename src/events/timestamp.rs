//! Stream's timestamps, in every form Stream sends them.
//!
//! Stream's server SDKs are generated from its OpenAPI spec: the Python one reads every time as integer Unix
//! nanoseconds, and the Go one reads a JSON string as RFC 3339 first and falls back to integer nanoseconds. So a
//! `created_at` may be `"2026-11-26T10:00:00.123456789Z"`, `1795687200123456789`, or `"1795687200123456789"`.
//! All three become the same [`OffsetDateTime`], so ordering rules hold across forms.

use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Reads a time Stream sent: RFC 3339 text, integer Unix nanoseconds, or those nanoseconds as a string of digits.
/// `None` for anything else (including a number out of `OffsetDateTime`'s range).
pub fn parse(value: &Value) -> Option<OffsetDateTime> {
    match value {
        Value::String(text) => parse_text(text),
        Value::Number(number) => {
            let nanos = number
                .as_i64()
                .map(i128::from)
                .or_else(|| number.as_u64().map(i128::from))?;
            from_unix_nanos(nanos)
        }
        _ => None,
    }
}

/// RFC 3339, or a string of digits (optionally signed) read as Unix nanoseconds.
pub fn parse_text(text: &str) -> Option<OffsetDateTime> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        return from_unix_nanos(text.parse().ok()?);
    }
    OffsetDateTime::parse(text, &Rfc3339).ok()
}

fn from_unix_nanos(nanos: i128) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()
}

/// A time as integer Unix nanoseconds, the form the official SDKs' generated models parse.
pub fn unix_nanos(at: OffsetDateTime) -> i128 {
    at.unix_timestamp_nanos()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_three_forms_of_one_instant_are_equal() {
        let text = parse(&json!("2026-11-26T10:00:00.123456789Z")).unwrap();
        let nanos = unix_nanos(text);
        assert_eq!(parse(&json!(nanos as i64)), Some(text));
        assert_eq!(parse(&json!(nanos.to_string())), Some(text));
        assert_eq!(text.nanosecond(), 123_456_789);
        // With an offset, the same instant.
        assert_eq!(
            parse(&json!("2026-11-26T11:00:00.123456789+01:00")),
            Some(text)
        );
    }

    #[test]
    fn ordering_holds_across_forms() {
        let earlier = parse(&json!("2026-11-26T10:00:00Z")).unwrap();
        let later = parse(&json!(unix_nanos(earlier) as i64 + 1)).unwrap();
        assert!(later > earlier);
    }

    #[test]
    fn anything_else_is_not_a_time() {
        for value in [
            json!("yesterday"),
            json!(""),
            json!("-"),
            json!(1.5),
            json!(true),
            json!(null),
            json!({"t": 1}),
            json!("99999999999999999999999999999999999999"),
        ] {
            assert_eq!(parse(&value), None, "{value}");
        }
        // u64::MAX nanoseconds is in the year 2554: still a time.
        assert!(parse(&json!(u64::MAX)).is_some());
    }
}
