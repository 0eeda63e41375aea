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
        let hours: u64 = window
            .strip_suffix('h')
            .and_then(|h| h.parse().ok())
            .filter(|h| (1..=24).contains(h))
            .ok_or_else(|| format!("rotation.window {window:?} must be 1h to 24h"))?;
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
    let interval = match unit {
        "hour" | "hours" => Duration::from_secs(n * HOUR),
        "day" | "days" if n <= MAX_RATE_DAYS => Duration::from_secs(n * 24 * HOUR),
        "day" | "days" => {
            return Err(format!(
                "rotation.schedule rate({inner}): at most {MAX_RATE_DAYS} days"
            ));
        }
        _ => {
            return Err(format!(
                "rotation.schedule rate({inner}): the unit must be hours or days"
            ));
        }
    };
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
    if let Some(step) = hours
        .strip_prefix("*/")
        .or_else(|| hours.split_once('/').map(|(_, s)| s))
    {
        let step: u64 = step
            .parse()
            .map_err(|_| format!("rotation.schedule cron({inner}): bad hours step {step:?}"))?;
        if step < 4 {
            return too_often();
        }
        return Ok(Some(Duration::from_secs(step * HOUR)));
    }
    if hours.contains(',') {
        let mut hs: Vec<u64> = hours
            .split(',')
            .map(|h| {
                h.parse()
                    .map_err(|_| format!("rotation.schedule cron({inner}): bad hour {h:?}"))
            })
            .collect::<Result<_, _>>()?;
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
        ];
        for (schedule, window, needle) in cases {
            let err = validate(schedule, window).expect_err(schedule);
            assert!(err.contains(needle), "{schedule} {window:?}: {err}");
        }
    }
}
