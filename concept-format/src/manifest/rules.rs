//! The value rules of spec §4 (rule 10 of §6): each field's allowed values, checked after
//! extraction by [`super::Manifest::validate`]

use toml::Value;

use crate::error::quote;
use crate::{FormatError, MAX_D, MAX_K, MAX_VOCAB};

pub(super) fn is_slug(s: &str, allowed: impl Fn(char) -> bool) -> bool {
    (1..=64).contains(&s.len()) && s.chars().all(allowed)
}

pub(super) fn check_name(name: &str) -> Result<(), FormatError> {
    if is_slug(name, |c| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-'
    }) {
        Ok(())
    } else {
        Err(FormatError::InvalidName { found: quote(name) })
    }
}

/// `<` + 1 to 64 characters from `A-Z a-z 0-9 _ -` + `>`
fn is_identifier(s: &str) -> bool {
    s.strip_prefix('<')
        .and_then(|s| s.strip_suffix('>'))
        .is_some_and(|inner| is_slug(inner, |c| c.is_ascii_alphanumeric() || c == '_' || c == '-'))
}

pub(super) fn check_identifier(field: &str, s: &str) -> Result<(), FormatError> {
    if is_identifier(s) {
        Ok(())
    } else {
        Err(FormatError::InvalidField {
            field: field.to_owned(),
            expected: "`<` + 1 to 64 characters from `A-Z`, `a-z`, `0-9`, `_`, `-` + `>`"
                .to_owned(),
            found: quote(s),
        })
    }
}

/// Free text: 1 to `max` characters, no control characters
pub(super) fn check_text(field: &str, s: &str, max: usize) -> Result<(), FormatError> {
    let count = s.chars().count();
    if count == 0 || count > max || s.chars().any(char::is_control) {
        Err(FormatError::InvalidField {
            field: field.to_owned(),
            expected: format!("1 to {max} characters without control characters"),
            found: quote(s),
        })
    } else {
        Ok(())
    }
}

/// An id token: 1 to 128 characters from `A-Z a-z 0-9 . _ / -`
pub(super) fn check_token(field: &str, s: &str) -> Result<(), FormatError> {
    let ok = (1..=128).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '-'));
    if ok {
        Ok(())
    } else {
        Err(FormatError::InvalidField {
            field: field.to_owned(),
            expected: "1 to 128 characters from `A-Z`, `a-z`, `0-9`, `.`, `_`, `/`, `-`".to_owned(),
            found: quote(s),
        })
    }
}

pub(super) fn check_sha256(field: &str, s: &str) -> Result<(), FormatError> {
    if s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        Err(FormatError::InvalidField {
            field: field.to_owned(),
            expected: "64 lowercase hex digits (a sha256)".to_owned(),
            found: quote(s),
        })
    }
}

/// The dimensions and their ranges `1..=max`, by dotted path (spec §4: `k`, `d`, the base
/// model's sizes); out of range they are [`FormatError::DimensionOutOfRange`], whether read
/// negative (rule 9) or validated (rule 10)
const DIMENSIONS: [(&str, u64); 4] = [
    ("k", MAX_K as u64),
    ("d", MAX_D as u64),
    ("base_model.hidden_size", MAX_D as u64),
    ("base_model.vocab_size", MAX_VOCAB),
];

/// The range's upper end when `path` is a dimension
pub(super) fn dimension_max(path: &str) -> Option<u64> {
    DIMENSIONS
        .iter()
        .find(|(p, _)| *p == path)
        .map(|&(_, max)| max)
}

pub(super) fn dimension_out_of_range(path: &str, max: u64, found: i128) -> FormatError {
    FormatError::DimensionOutOfRange {
        what: format!("manifest field `{path}`"),
        min: 1,
        max,
        found,
    }
}

pub(super) fn check_dimension(path: &str, value: u64) -> Result<(), FormatError> {
    match dimension_max(path) {
        Some(max) if !(1..=max).contains(&value) => {
            Err(dimension_out_of_range(path, max, i128::from(value)))
        }
        _ => Ok(()),
    }
}

pub(super) fn check_float(
    field: &str,
    x: f64,
    expected: &str,
    ok: impl Fn(f64) -> bool,
) -> Result<(), FormatError> {
    if x.is_finite() && ok(x) {
        Ok(())
    } else {
        Err(FormatError::InvalidField {
            field: field.to_owned(),
            expected: expected.to_owned(),
            found: x.to_string(),
        })
    }
}

/// `[ext]` may hold any TOML except non-finite floats (they would break round-trip equality)
pub(super) fn check_ext_floats(path: &str, v: &Value) -> Result<(), FormatError> {
    match v {
        Value::Float(f) if !f.is_finite() => Err(FormatError::InvalidField {
            field: path.to_owned(),
            expected: "a finite float".to_owned(),
            found: f.to_string(),
        }),
        Value::Table(t) => t
            .iter()
            .try_for_each(|(k, v)| check_ext_floats(&format!("{path}.{}", k.escape_debug()), v)),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .try_for_each(|(i, v)| check_ext_floats(&format!("{path}[{i}]"), v)),
        _ => Ok(()),
    }
}

/// Checks an RFC 3339 §5.6 `date-time` (spec §4.5) with the TOML parser's own date-time
/// reader, which validates every part (month, day for the month and leap year, hour, minute,
/// second up to 60, fraction, offset); what TOML allows beyond RFC 3339 is refused here:
/// a space for `T`, missing seconds, a missing offset, a date or a time alone.
pub(super) fn check_rfc3339(field: &str, s: &str) -> Result<(), FormatError> {
    rfc3339_error(s).map_or(Ok(()), |reason| {
        Err(FormatError::InvalidTimestamp {
            field: field.to_owned(),
            reason,
            found: quote(s),
        })
    })
}

fn rfc3339_error(s: &str) -> Option<String> {
    let datetime: toml::value::Datetime = match s.parse() {
        Ok(d) => d,
        Err(e) => return Some(e.to_string()),
    };
    let b = s.as_bytes();
    if datetime.date.is_none() || datetime.time.is_none() {
        Some("expected a date and a time".to_owned())
    } else if !matches!(b.get(10), Some(b'T' | b't')) {
        Some("expected `T` between date and time".to_owned())
    } else if b.get(16) != Some(&b':') {
        Some("expected seconds (HH:MM:SS)".to_owned())
    } else if datetime.offset.is_none() {
        Some("expected an offset (`Z`, `+HH:MM` or `-HH:MM`)".to_owned())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_accepts_valid_date_times() {
        for ok in [
            "2025-05-03T12:00:00Z",
            "2024-02-29T23:59:60.123456789+05:30",
            "1999-12-31t00:00:00z",
            "2025-05-03T12:00:00-00:00",
        ] {
            assert_eq!(rfc3339_error(ok), None, "{ok}");
        }
    }

    #[test]
    fn rfc3339_rejects_malformed_date_times() {
        for (bad, reason) in [
            ("2025-05-03", "expected a date and a time"),
            ("12:00:00", "expected a date and a time"),
            ("2025-05-03 12:00:00Z", "expected `T` between date and time"),
            ("2023-02-29T12:00:00Z", "expected day between 01 and 28"),
            ("2025-13-01T12:00:00Z", "expected month between 01 and 12"),
            ("2025-05-03T24:00:00Z", "expected hour between 00 and 23"),
            ("2025-05-03T12:00Z", "expected seconds (HH:MM:SS)"),
            ("2025-05-03T12:00:00", "expected an offset"),
            ("2025-05-03T12:00:00.Z", "nanosecond"),
            ("2025-05-03T12:00:00+5:30", "two-digit hour"),
            ("2025-05-03T12:00:00+24:00", "hours between 00 and 23"),
            ("2025/05/03T12:00:00Z", "invalid"),
            ("2025-05-03T12:00:00Zjunk", "invalid"),
            (" 2025-05-03T12:00:00Z", "invalid"),
        ] {
            let got = rfc3339_error(bad);
            assert!(
                got.as_deref().is_some_and(|r| r.contains(reason)),
                "{bad}: {got:?} lacks {reason:?}"
            );
        }
    }
}
