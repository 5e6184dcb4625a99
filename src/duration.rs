//! Durations in Go's `time.ParseDuration` syntax ("30s", "15m", "1h30m", "1.5h", "300ms"), so
//! that flag values and config files written for etcdbrctl keep working.

use std::time::Duration;

/// Parses a Go duration. Negative durations become zero: every duration flag of etcdbrctl treats
/// values below a threshold as "disabled", so clamping keeps the meaning.
pub(crate) fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let orig = s;
    let s = s.trim();
    if s.is_empty() {
        return Err(format!("invalid duration {orig:?}: empty"));
    }
    let (neg, mut rest) = match s.as_bytes()[0] {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(format!("invalid duration {orig:?}"));
    }
    let mut total_ns: f64 = 0.0;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let num = &rest[..num_end];
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return Err(format!("invalid duration {orig:?}"));
        }
        let value: f64 = num
            .parse()
            .map_err(|_| format!("invalid duration {orig:?}"))?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_end];
        let mult: f64 = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "" => return Err(format!("invalid duration {orig:?}: missing unit")),
            other => return Err(format!("invalid duration {orig:?}: unknown unit {other:?}")),
        };
        total_ns += value * mult;
        rest = &rest[unit_end..];
    }
    if !total_ns.is_finite() || total_ns > u64::MAX as f64 {
        return Err(format!("invalid duration {orig:?}: out of range"));
    }
    if neg {
        return Ok(Duration::ZERO);
    }
    Ok(Duration::from_nanos(total_ns.round() as u64))
}

/// Formats a duration the way Go prints it ("15m0s", "20s", "1h0m0s", "500ms"): the tests
/// check that parsing reads Go's own output back.
#[cfg(test)]
fn format_go_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns == 0 {
        return "0s".into();
    }
    if ns < 1_000_000_000 {
        return if ns.is_multiple_of(1_000_000) {
            format!("{}ms", ns / 1_000_000)
        } else if ns.is_multiple_of(1000) {
            format!("{}µs", ns / 1000)
        } else {
            format!("{ns}ns")
        };
    }
    let secs = d.as_secs();
    let frac = d.subsec_nanos();
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    let sec_str = if frac == 0 {
        format!("{s}s")
    } else {
        let f = format!("{:09}", frac);
        format!("{s}.{}s", f.trim_end_matches('0'))
    };
    if h > 0 {
        format!("{h}h{m}m{sec_str}")
    } else if m > 0 {
        format!("{m}m{sec_str}")
    } else {
        sec_str
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_syntax() {
        assert_eq!(parse_go_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_go_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(
            parse_go_duration("15m0s").unwrap(),
            Duration::from_secs(900)
        );
        assert_eq!(
            parse_go_duration("1h30m").unwrap(),
            Duration::from_secs(5400)
        );
        assert_eq!(
            parse_go_duration("1.5h").unwrap(),
            Duration::from_secs(5400)
        );
        assert_eq!(
            parse_go_duration("300ms").unwrap(),
            Duration::from_millis(300)
        );
        assert_eq!(parse_go_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_go_duration("0s").unwrap(), Duration::ZERO);
        assert_eq!(parse_go_duration("-1s").unwrap(), Duration::ZERO);
        assert!(parse_go_duration("").is_err());
        assert!(parse_go_duration("10").is_err());
        assert!(parse_go_duration("10x").is_err());
        assert!(parse_go_duration("s").is_err());
        assert!(parse_go_duration("1..2s").is_err());
    }

    #[test]
    fn formats_like_go() {
        assert_eq!(format_go_duration(Duration::from_secs(900)), "15m0s");
        assert_eq!(format_go_duration(Duration::from_secs(20)), "20s");
        assert_eq!(format_go_duration(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(format_go_duration(Duration::from_millis(500)), "500ms");
        assert_eq!(format_go_duration(Duration::ZERO), "0s");
    }
}
