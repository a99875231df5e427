//! Call identity: Stream's `type:id` pair, validated once at the edge.

use std::fmt;

/// Longest call type or id Stream accepts.
pub const MAX_PART_LEN: usize = 64;

/// A validated Stream call id (`type` and `id` each `[a-z0-9_-]{1,64}`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CallId {
    kind: String,
    id: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{what} must be 1 to {MAX_PART_LEN} characters of [a-z0-9_-]")]
pub struct InvalidCallId {
    pub what: &'static str,
}

fn valid_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_PART_LEN
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

impl CallId {
    pub fn new(kind: &str, id: &str) -> Result<Self, InvalidCallId> {
        if !valid_part(kind) {
            return Err(InvalidCallId { what: "call type" });
        }
        if !valid_part(id) {
            return Err(InvalidCallId { what: "call id" });
        }
        Ok(Self {
            kind: kind.to_owned(),
            id: id.to_owned(),
        })
    }

    /// Parses Stream's `type:id` form.
    pub fn from_cid(cid: &str) -> Result<Self, InvalidCallId> {
        let (kind, id) = cid
            .split_once(':')
            .ok_or(InvalidCallId { what: "call cid" })?;
        Self::new(kind, id)
    }

    pub fn kind(&self) -> &str {
        &self.kind
    }

    pub fn id(&self) -> &str {
        &self.id
    }
}

/// Formats as Stream's `cid` (`type:id`).
impl fmt::Display for CallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_stream_ids_and_rejects_the_rest() {
        assert!(CallId::new("livestream", "abc_1-2").is_ok());
        assert!(CallId::new("Livestream", "abc").is_err());
        assert!(CallId::new("livestream", "").is_err());
        assert!(CallId::new("livestream", &"a".repeat(65)).is_err());
        assert!(CallId::new("livestream", "a.b").is_err());
        assert_eq!(
            CallId::from_cid("default:x").unwrap().to_string(),
            "default:x"
        );
        assert!(CallId::from_cid("nocolon").is_err());
    }
}
