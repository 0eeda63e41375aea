//! Go-style durations (`90s`, `1m`, `1h30m`, `500ms`), as Kubernetes users write them.
//!
//! Every value comes from a tenant's spec, so parsing is checked arithmetic on
//! whole milliseconds and refuses anything over [`MAX`]: no input can panic
//! or overflow later computations (`Duration * n`, `Instant + d`).

use std::time::Duration;

/// The longest duration rotor accepts anywhere (a year). Fields have their
/// own, smaller caps; this one only keeps arithmetic on parsed values safe.
pub const MAX: Duration = Duration::from_secs(366 * 24 * 3600);

/// Parses a Go-style duration; `None` when malformed, zero or over [`MAX`].
/// Fractions are allowed down to the millisecond (`1.5s`).
pub fn parse(s: &str) -> Option<Duration> {
    let mut rest = s.trim();
    if rest.is_empty() || rest.len() > 64 {
        return None;
    }
    let mut total_ms: u64 = 0;
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let (number, tail) = rest.split_at(num_end);
        let unit_end = tail.find(|c: char| c.is_ascii_digit()).unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_end);
        let unit_ms: u64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => return None,
        };
        total_ms = total_ms.checked_add(scaled(number, unit_ms)?)?;
        rest = tail;
    }
    let total = Duration::from_millis(total_ms);
    (total_ms > 0 && total <= MAX).then_some(total)
}

/// `number` (digits, at most one `.`) times `unit_ms`, in whole milliseconds.
fn scaled(number: &str, unit_ms: u64) -> Option<u64> {
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && frac.is_empty() || frac.contains('.') {
        return None;
    }
    let whole: u64 = if whole.is_empty() { 0 } else { whole.parse().ok()? };
    let mut ms = whole.checked_mul(unit_ms)?;
    // Fraction digits past the millisecond are dropped.
    let mut scale = unit_ms;
    for digit in frac.bytes() {
        scale /= 10;
        if scale == 0 {
            break;
        }
        ms = ms.checked_add(u64::from(digit - b'0') * scale)?;
    }
    Some(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        assert_eq!(parse("1m"), Some(Duration::from_secs(60)));
        assert_eq!(parse("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse(".5h"), Some(Duration::from_secs(1800)));
        assert_eq!(parse("8784h"), Some(MAX));
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "m", "1", "1d", "-1s", "1m x", "0s", "1.2.3s", ".s", "1.s5"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Any input: a duration within (0, MAX], or None; never a panic.
        #[test]
        fn any_input_is_bounded_or_refused(
            s in "[0-9.]{0,25}(ms|s|m|h|d|)([0-9.]{0,25}(ms|s|m|h)){0,3}|.{0,40}"
        ) {
            if let Some(d) = parse(&s) {
                proptest::prop_assert!(!d.is_zero() && d <= MAX);
            }
        }
    }

    #[test]
    fn huge_numbers_are_refused_not_panics() {
        for huge in [
            "20000000000000000000s",
            "4000000000000000000s",
            "18446744073709551615ms",
            "99999999999999999999999999h",
            "8785h",
            "1000000000000000h1s",
        ] {
            assert_eq!(parse(huge), None, "{huge}");
        }
    }
}
