//! Why an input record was refused: a small fixed set of reason codes (DLQ headers, the
//! `error_code` metric label) and one sentence a person can act on.

use std::fmt;

/// The kind of problem that sent a record to the dead-letter topic. The set is fixed and small on
/// purpose: it is a metric label and a header value that alerting and replay tooling match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Zero bytes, or only whitespace.
    Empty,
    /// Longer than `max_record_bytes`.
    TooLarge,
    /// A JSON record (or a protobuf string field) that is not UTF-8.
    InvalidUtf8,
    /// A JSON syntax error.
    NotJson,
    /// The JSON ends before the object does: the record was cut off.
    Truncated,
    /// Arrays or objects nested deeper than the decoder's recursion limit.
    TooDeep,
    /// A known field holds a value of the wrong JSON type, or the record is not a JSON object.
    WrongType,
    /// A required field is absent, null or empty.
    MissingField,
    /// A time or date that does not parse.
    BadTimestamp,
    /// `type` (or the protobuf `body`) is not one of the four event types.
    UnknownType,
    /// An enumerated field (action, direction, outcome, kind) holds an unknown value.
    UnknownEnum,
    /// A number that is NaN or infinite, or too large to represent.
    NonFinite,
    /// A finite number outside its allowed range.
    OutOfRange,
    /// An id longer than `max_id_bytes`.
    FieldTooLong,
    /// Bytes that are neither JSON nor a valid protobuf `rapport.v1.Event`.
    BadProtobuf,
    /// A Confluent Schema Registry frame that is cut short or malformed.
    BadFraming,
}

impl Reason {
    /// Every reason, in declaration order (for pre-registering metric label values).
    pub const ALL: [Reason; 16] = [
        Reason::Empty,
        Reason::TooLarge,
        Reason::InvalidUtf8,
        Reason::NotJson,
        Reason::Truncated,
        Reason::TooDeep,
        Reason::WrongType,
        Reason::MissingField,
        Reason::BadTimestamp,
        Reason::UnknownType,
        Reason::UnknownEnum,
        Reason::NonFinite,
        Reason::OutOfRange,
        Reason::FieldTooLong,
        Reason::BadProtobuf,
        Reason::BadFraming,
    ];

    /// The stable snake_case code used in DLQ headers and metric labels.
    pub fn code(self) -> &'static str {
        match self {
            Reason::Empty => "empty",
            Reason::TooLarge => "too_large",
            Reason::InvalidUtf8 => "invalid_utf8",
            Reason::NotJson => "not_json",
            Reason::Truncated => "truncated",
            Reason::TooDeep => "too_deep",
            Reason::WrongType => "wrong_type",
            Reason::MissingField => "missing_field",
            Reason::BadTimestamp => "bad_timestamp",
            Reason::UnknownType => "unknown_type",
            Reason::UnknownEnum => "unknown_enum",
            Reason::NonFinite => "non_finite",
            Reason::OutOfRange => "out_of_range",
            Reason::FieldTooLong => "field_too_long",
            Reason::BadProtobuf => "bad_protobuf",
            Reason::BadFraming => "bad_framing",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A refused record: bad input, to be counted and sent to the dead-letter topic, never retried.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct Rejection {
    pub reason: Reason,
    /// One sentence naming the field and what to fix.
    pub detail: String,
}

impl Rejection {
    pub fn new(reason: Reason, detail: impl Into<String>) -> Rejection {
        Rejection {
            reason,
            detail: detail.into(),
        }
    }
}

/// At most this many bytes of an offending value are quoted back in a detail sentence, so a
/// megabyte of junk does not become a megabyte of DLQ header.
const QUOTE_MAX_BYTES: usize = 64;

/// Quotes a value for a detail sentence: JSON-style escapes, cut to a bounded length.
pub(crate) fn quote(s: &str) -> String {
    if s.len() <= QUOTE_MAX_BYTES {
        return format!("{s:?}");
    }
    let mut end = QUOTE_MAX_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn codes_are_unique_snake_case_and_complete() {
        let codes: HashSet<&str> = Reason::ALL.iter().map(|r| r.code()).collect();
        assert_eq!(codes.len(), Reason::ALL.len());
        for c in codes {
            assert!(
                c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{c}"
            );
        }
        assert_eq!(Reason::BadFraming.code(), "bad_framing");
        assert_eq!(Reason::InvalidUtf8.to_string(), "invalid_utf8");
    }

    #[test]
    fn display_gives_code_and_sentence() {
        let r = Rejection::new(Reason::Empty, "The record is empty.");
        assert_eq!(r.to_string(), "empty: The record is empty.");
        let _: &dyn std::error::Error = &r;
    }

    #[test]
    fn quote_bounds_long_values_on_char_boundaries() {
        assert_eq!(quote("yesterday"), "\"yesterday\"");
        let long = "é".repeat(100);
        let q = quote(&long);
        assert!(q.len() < 80, "{q}");
        assert!(q.ends_with('…'));
    }
}
