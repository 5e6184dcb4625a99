//! Cron schedules as etcdbrctl parses them (robfig/cron `ParseStandard`): five fields
//! (minute hour day-of-month month day-of-week, Sunday = 0), or a descriptor (`@hourly`,
//! `@daily`, `@midnight`, `@weekly`, `@monthly`, `@yearly`, `@annually`, `@every <duration>`).
//! Times are UTC.

use crate::duration::parse_go_duration;
use chrono::{DateTime, Utc};
use croner::Cron;
use std::time::Duration;

#[derive(Debug, Clone)]
pub(crate) enum Schedule {
    Cron(Box<Cron>),
    Every(Duration),
}

impl Schedule {
    pub(crate) fn parse(spec: &str) -> Result<Schedule, String> {
        let s = spec.trim();
        let bad = |why: String| format!("invalid cron schedule {spec:?}: {why}");
        if let Some(d) = s.strip_prefix("@every ") {
            let d = parse_go_duration(d.trim()).map_err(bad)?;
            if d < Duration::from_secs(1) {
                return Err(bad("@every needs at least 1s".into()));
            }
            return Ok(Schedule::Every(d));
        }
        let five = match s {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            _ if s.starts_with('@') => return Err(bad("unknown descriptor".into())),
            _ => s,
        };
        let fields = five.split_whitespace().count();
        if fields != 5 {
            return Err(bad(format!(
                "expected 5 fields (minute hour day-of-month month day-of-week), got {fields}"
            )));
        }
        let cron: Cron = five.parse().map_err(|e| bad(format!("{e}")))?;
        // reject schedules that never fire (e.g. 30 February)
        cron.find_next_occurrence(&Utc::now(), false)
            .map_err(|e| bad(format!("never fires: {e}")))?;
        Ok(Schedule::Cron(Box::new(cron)))
    }

    /// The first time strictly after `t`.
    pub(crate) fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Cron(cron) => cron.find_next_occurrence(&t, false).ok(),
            Schedule::Every(d) => chrono::Duration::from_std(*d).ok().map(|d| t + d),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn parses_standard_specs() {
        let t = Utc.with_ymd_and_hms(2026, 11, 21, 10, 17, 30).unwrap();
        let s = Schedule::parse("0 */1 * * *").unwrap();
        assert_eq!(
            s.next_after(t).unwrap(),
            Utc.with_ymd_and_hms(2026, 11, 21, 11, 0, 0).unwrap()
        );
        let s = Schedule::parse("*/1 * * * *").unwrap();
        assert_eq!(
            s.next_after(t).unwrap(),
            Utc.with_ymd_and_hms(2026, 11, 21, 10, 18, 0).unwrap()
        );
        let s = Schedule::parse("0 0 */3 * *").unwrap();
        assert_eq!(
            s.next_after(t).unwrap(),
            Utc.with_ymd_and_hms(2026, 11, 22, 0, 0, 0).unwrap()
        );
        // Sunday is 0 as in POSIX cron (2026-11-22 is a Sunday)
        let s = Schedule::parse("0 0 * * 0").unwrap();
        assert_eq!(
            s.next_after(t).unwrap(),
            Utc.with_ymd_and_hms(2026, 11, 22, 0, 0, 0).unwrap()
        );
        let s = Schedule::parse("@every 90s").unwrap();
        assert_eq!(s.next_after(t).unwrap(), t + chrono::Duration::seconds(90));
        assert!(Schedule::parse("@daily").is_ok());
        assert!(Schedule::parse("@hourly").is_ok());
    }

    #[test]
    fn rejects_bad_specs() {
        for bad in [
            "",
            "* * * *",
            "0 * * * * *",
            "61 * * * *",
            "a b c d e",
            "@sometimes",
            "@every 0s",
            "0 0 30 2 *",
        ] {
            assert!(Schedule::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
