//! Rotation schedules as Secrets Manager takes them (`rate(...)`, `cron(...)`)
//! and the rotation window, checked before any AWS call so the condition can
//! name the problem.

use std::time::Duration;

const HOUR: u64 = 3600;
/// Secrets Manager rotates at most every four hours.
const MIN_INTERVAL: Duration = Duration::from_secs(4 * HOUR);
const MAX_RATE_DAYS: u64 = 1000;

/// Validates `schedule` and `window`, returning the shortest interval
/// between rotations when it can be known.
pub fn validate(schedule: &str, window: Option<&str>) -> Result<Option<Duration>, String> {
    let interval = if let Some(inner) = strip(schedule, "rate(") {
        Some(rate(inner)?)
    } else if let Some(inner) = strip(schedule, "cron(") {
        cron(inner)?
    } else {
        return Err(format!(
            "rotation.schedule {schedule:?} must be rate(N hours|days) or cron(minutes hours day-of-month month day-of-week year)"
        ));
    };
    if let Some(window) = window {
        let hours =
            window_hours(window).ok_or_else(|| format!("rotation.window {window:?} must be 1h to 24h"))?;
        if let Some(interval) = interval
            && Duration::from_secs(hours * HOUR) >= interval
        {
            return Err(format!(
                "rotation.window {window} must be shorter than the time between rotations ({}h)",
                interval.as_secs() / HOUR
            ));
        }
    }
    Ok(interval)
}

/// Whether the rotation configuration AWS reports is the one the spec asks
/// for, compared normalised (spacing, `day`/`days`), so AWS's formatting never
/// causes a reconfigure on every convergence. A spec without a window takes
/// whatever default AWS applies.
pub fn same_rotation(
    spec: &crate::api::RotationSpec,
    enabled: bool,
    lambda_arn: Option<&str>,
    schedule: Option<&str>,
    window: Option<&str>,
) -> bool {
    enabled
        && lambda_arn == Some(spec.lambda_arn.as_str())
        && schedule.is_some_and(|s| normalise(s) == normalise(&spec.schedule))
        && spec
            .window
            .as_deref()
            .is_none_or(|w| window.and_then(window_hours) == window_hours(w))
}

fn normalise(schedule: &str) -> String {
    let words: Vec<&str> = schedule
        .trim()
        .split(|c: char| c.is_whitespace() || c == '(' || c == ')')
        .filter(|w| !w.is_empty())
        .map(|w| match w {
            "hour" => "hours",
            "day" => "days",
            w => w,
        })
        .collect();
    words.join(" ").to_ascii_lowercase()
}

/// A rotation window (`1h` to `24h`) in hours; `None` when out of range.
pub fn window_hours(window: &str) -> Option<u64> {
    window
        .strip_suffix('h')
        .and_then(|h| h.parse().ok())
        .filter(|h| (1..=24).contains(h))
}

fn strip<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    s.trim().strip_prefix(prefix)?.strip_suffix(')')
}

fn rate(inner: &str) -> Result<Duration, String> {
    let mut parts = inner.split_whitespace();
    let (Some(n), Some(unit), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!(
            "rotation.schedule rate({inner}) must be rate(N hours) or rate(N days)"
        ));
    };
    let n: u64 = n
        .parse()
        .map_err(|_| format!("rotation.schedule rate({inner}): {n:?} is not a whole number"))?;
    let hours = match unit {
        "hour" | "hours" => n,
        "day" | "days" => n.saturating_mul(24),
        _ => {
            return Err(format!(
                "rotation.schedule rate({inner}): the unit must be hours or days"
            ));
        }
    };
    if hours > MAX_RATE_DAYS * 24 {
        return Err(format!(
            "rotation.schedule rate({inner}): at most {MAX_RATE_DAYS} days"
        ));
    }
    let interval = Duration::from_secs(hours * HOUR);
    if interval < MIN_INTERVAL {
        return Err(format!(
            "rotation.schedule rate({inner}): Secrets Manager rotates at most every 4 hours"
        ));
    }
    Ok(interval)
}

/// AWS cron: six fields. Returns the interval when the hours field makes it
/// obvious (`*/N`, a list); checks the four-hour minimum where it can.
fn cron(inner: &str) -> Result<Option<Duration>, String> {
    let fields: Vec<&str> = inner.split_whitespace().collect();
    if fields.len() != 6 {
        return Err(format!(
            "rotation.schedule cron({inner}) needs 6 fields (minutes hours day-of-month month day-of-week year), has {}",
            fields.len()
        ));
    }
    let (minutes, hours) = (fields[0], fields[1]);
    if minutes.parse::<u8>().map_or(true, |m| m > 59) {
        return Err(format!(
            "rotation.schedule cron({inner}): minutes must be one number from 0 to 59 \
             (Secrets Manager rotates at most every 4 hours)"
        ));
    }
    let too_often = || {
        Err(format!(
            "rotation.schedule cron({inner}): hours {hours:?} rotates more often than every 4 hours"
        ))
    };
    if hours == "*" {
        return too_often();
    }
    let hour = |h: &str| -> Result<u64, String> {
        h.parse().ok().filter(|h| *h <= 23).ok_or_else(|| {
            format!("rotation.schedule cron({inner}): hour {h:?} is not a number from 0 to 23")
        })
    };
    if let Some((start, step)) = hours.split_once('/') {
        if start != "*" {
            hour(start)?;
        }
        let step: u64 = step
            .parse()
            .ok()
            .filter(|s| (1..=23).contains(s))
            .ok_or_else(|| format!("rotation.schedule cron({inner}): hours step {step:?} must be 1 to 23"))?;
        if step < 4 {
            return too_often();
        }
        return Ok(Some(Duration::from_secs(step * HOUR)));
    }
    if hours.contains(',') {
        let mut hs: Vec<u64> = hours.split(',').map(hour).collect::<Result<_, _>>()?;
        hs.sort_unstable();
        let wrap = hs[0] + 24 - hs[hs.len() - 1];
        let gap = hs
            .windows(2)
            .map(|w| w[1] - w[0])
            .chain([wrap])
            .min()
            .unwrap_or(24);
        if gap < 4 {
            return too_often();
        }
        return Ok(Some(Duration::from_secs(gap * HOUR)));
    }
    if hours.contains('-') {
        return too_often();
    }
    hour(hours)?;
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_schedules() {
        assert_eq!(
            validate("rate(7 days)", Some("2h")),
            Ok(Some(Duration::from_secs(7 * 24 * HOUR)))
        );
        assert_eq!(validate("rate(4 hours)", Some("3h")), Ok(Some(MIN_INTERVAL)));
        assert_eq!(validate("cron(0 16 1,15 * ? *)", Some("4h")), Ok(None));
        assert_eq!(
            validate("cron(0 */6 * * ? *)", Some("5h")),
            Ok(Some(Duration::from_secs(6 * HOUR)))
        );
        assert_eq!(
            validate("cron(30 0,12 * * ? *)", None),
            Ok(Some(Duration::from_secs(12 * HOUR)))
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Any schedule and window: Ok with an interval of at least four
        /// hours, or an error naming the field; never a panic.
        #[test]
        fn any_schedule_is_checked_or_refused(
            schedule in "rate\\( ?[0-9]{0,22} ?(hours?|days?|weeks|) ?\\)|cron\\(([0-9*/,?L#-]{0,25} ){0,7}\\)|.{0,30}",
            window in proptest::option::of("[0-9]{0,22}h?"),
        ) {
            match validate(&schedule, window.as_deref()) {
                Ok(Some(interval)) => proptest::prop_assert!(interval >= MIN_INTERVAL),
                Ok(None) => {}
                Err(e) => proptest::prop_assert!(e.contains("rotation.")),
            }
        }
    }

    #[test]
    fn rotation_compares_normalised() {
        let spec: crate::api::RotationSpec = serde_json::from_value(serde_json::json!({
            "lambdaArn": "arn:aws:lambda:us-east-1:123456789012:function:f",
            "schedule": "rate(1 day)",
            "window": "2h",
        }))
        .unwrap();
        let arn = Some("arn:aws:lambda:us-east-1:123456789012:function:f");
        assert!(same_rotation(&spec, true, arn, Some("rate(1 days)"), Some("2h")));
        assert!(same_rotation(
            &spec,
            true,
            arn,
            Some(" rate( 1  day ) "),
            Some("2h")
        ));
        assert!(!same_rotation(&spec, true, arn, Some("rate(2 days)"), Some("2h")));
        assert!(!same_rotation(&spec, true, arn, Some("rate(1 day)"), Some("3h")));
        assert!(!same_rotation(&spec, false, arn, Some("rate(1 day)"), Some("2h")));
        assert!(!same_rotation(&spec, true, None, Some("rate(1 day)"), Some("2h")));
        let no_window = crate::api::RotationSpec { window: None, ..spec };
        assert!(same_rotation(
            &no_window,
            true,
            arn,
            Some("rate(1 day)"),
            Some("24h")
        ));
        assert!(same_rotation(&no_window, true, arn, Some("rate(1 day)"), None));
    }

    #[test]
    fn bad_schedules_name_the_problem() {
        let cases = [
            ("rate(1 hour)", None, "every 4 hours"),
            ("rate(2 weeks)", None, "hours or days"),
            ("rate(1001 days)", None, "at most 1000"),
            ("rate(x days)", None, "whole number"),
            ("every day", None, "must be rate"),
            ("cron(0 16 * *)", None, "6 fields"),
            ("cron(* 16 * * ? *)", None, "minutes"),
            ("cron(0 * * * ? *)", None, "more often"),
            ("cron(0 */2 * * ? *)", None, "more often"),
            ("cron(0 1,3 * * ? *)", None, "more often"),
            ("rate(4 hours)", Some("4h"), "shorter than"),
            ("cron(0 */6 * * ? *)", Some("6h"), "shorter than"),
            ("rate(1 day)", Some("25h"), "1h to 24h"),
            // Numbers that once overflowed or underflowed.
            ("rate(18446744073709551615 hours)", None, "at most 1000"),
            ("rate(768614336404564651 days)", None, "at most 1000"),
            ("cron(0 1,30 * * ? *)", None, "0 to 23"),
            ("cron(0 99 * * ? *)", None, "0 to 23"),
            ("cron(0 */0 * * ? *)", None, "1 to 23"),
            ("cron(0 30/6 * * ? *)", None, "0 to 23"),
            ("cron(0 */99999999999999999999 * * ? *)", None, "1 to 23"),
            ("rate(1 day)", Some("99999999999999999999h"), "1h to 24h"),
        ];
        for (schedule, window, needle) in cases {
            let err = validate(schedule, window).expect_err(schedule);
            assert!(err.contains(needle), "{schedule} {window:?}: {err}");
        }
    }
}
