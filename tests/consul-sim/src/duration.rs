//! Go's `time.ParseDuration`, which Consul uses for `?wait=`, `?max_stale=`,
//! prepared-query `DNS.TTL` (reference §2, §5.2) and check intervals, and
//! Go's `Duration.String`, with which the agent writes check intervals
//! into the catalog.

use std::time::Duration;

/// A parsed Go duration: nanoseconds, possibly negative, as Go's `int64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct GoDuration(pub i64);

impl GoDuration {
    /// The duration if it is positive; `None` for zero or negative values.
    pub fn positive(self) -> Option<Duration> {
        u64::try_from(self.0)
            .ok()
            .filter(|n| *n > 0)
            .map(Duration::from_nanos)
    }
}

/// Parses `s` with Go's rules: an optional sign, then one or more
/// `<decimal><unit>` pairs (`ns`, `us`, `µs`, `μs`, `ms`, `s`, `m`, `h`);
/// `"0"` alone needs no unit. Returns Go's error text on failure.
pub fn parse_go_duration(s: &str) -> Result<GoDuration, String> {
    let invalid = || format!("time: invalid duration \"{s}\"");
    let (negative, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Ok(GoDuration(0));
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_part, after) = rest.split_at(int_len);
        let (frac_part, after) = match after.strip_prefix('.') {
            Some(a) => {
                let n = a.bytes().take_while(u8::is_ascii_digit).count();
                a.split_at(n)
            }
            None => ("", after),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(invalid());
        }
        let unit_len = after
            .char_indices()
            .find(|(_, c)| *c == '.' || c.is_ascii_digit())
            .map_or(after.len(), |(i, _)| i);
        let (unit, after) = after.split_at(unit_len);
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(format!("time: missing unit in duration \"{s}\"")),
            other => {
                return Err(format!(
                    "time: unknown unit \"{other}\" in duration \"{s}\""
                ));
            }
        };
        let int: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| invalid())?
        };
        let mut value = int.checked_mul(scale).ok_or_else(invalid)?;
        // Fractional digits beyond nanosecond precision are dropped, as Go does.
        let mut frac_scale = scale;
        for digit in frac_part.bytes() {
            frac_scale /= 10;
            value += u128::from(digit - b'0') * frac_scale;
        }
        total = total.checked_add(value).ok_or_else(invalid)?;
        if total > i64::MAX as u128 + u128::from(negative) {
            return Err(invalid());
        }
        rest = after;
    }
    let nanos = if negative {
        -(total as i128)
    } else {
        total as i128
    };
    Ok(GoDuration(nanos as i64))
}

/// Formats `nanos` as Go's `time.Duration.String` does: `0s`, `1.5µs`,
/// `300ms`, `10s`, `1m30s`, `1h0m0s`, `-2s`.
pub fn format_go_duration(nanos: i64) -> String {
    /// `fmtFrac`: the fraction of `v / 10^prec` without trailing zeros
    /// (nothing at all for a zero fraction), and `v / 10^prec`.
    fn frac(mut v: u64, prec: u32) -> (String, u64) {
        let mut digits = Vec::new();
        let mut print = false;
        for _ in 0..prec {
            let digit = v % 10;
            print = print || digit != 0;
            if print {
                digits.push(char::from(b'0' + digit as u8));
            }
            v /= 10;
        }
        if !print {
            return (String::new(), v);
        }
        digits.push('.');
        (digits.into_iter().rev().collect(), v)
    }
    let neg = nanos < 0;
    let u = nanos.unsigned_abs();
    let mut out = if u < 1_000_000_000 {
        let (unit, prec) = match u {
            0 => return "0s".to_owned(),
            1..=999 => ("ns", 0),
            1_000..=999_999 => ("\u{b5}s", 3),
            _ => ("ms", 6),
        };
        let (fraction, whole) = frac(u, prec);
        format!("{whole}{fraction}{unit}")
    } else {
        let (fraction, seconds) = frac(u, 9);
        let (minutes, hours) = (seconds / 60, seconds / 3600);
        match (hours, minutes) {
            (0, 0) => format!("{seconds}{fraction}s"),
            (0, m) => format!("{m}m{}{fraction}s", seconds % 60),
            (h, m) => format!("{h}h{}m{}{fraction}s", m % 60, seconds % 60),
        }
    };
    if neg {
        out.insert(0, '-');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_forms() {
        let cases = [
            ("0", 0),
            ("10s", 10_000_000_000),
            ("5m", 300_000_000_000),
            ("1m30s", 90_000_000_000),
            ("1.5h", 5_400_000_000_000),
            ("300ms", 300_000_000),
            ("2us", 2_000),
            ("2µs", 2_000),
            ("2μs", 2_000),
            ("7ns", 7),
            (".5s", 500_000_000),
            ("-5s", -5_000_000_000),
            ("+1h", 3_600_000_000_000),
        ];
        for (text, nanos) in cases {
            assert_eq!(parse_go_duration(text), Ok(GoDuration(nanos)), "{text}");
        }
    }

    #[test]
    fn rejects_what_go_rejects() {
        for text in [
            "",
            "5",
            "s",
            "1x",
            "1.s.",
            "-",
            "10 s",
            "1e3s",
            "9999999999h",
        ] {
            assert!(parse_go_duration(text).is_err(), "{text:?} should fail");
        }
    }

    #[test]
    fn formats_as_go_does() {
        let cases = [
            (0, "0s"),
            (1, "1ns"),
            (1_500, "1.5\u{b5}s"),
            (300_000_000, "300ms"),
            (1_500_000_000, "1.5s"),
            (10_000_000_000, "10s"),
            (60_000_000_000, "1m0s"),
            (90_000_000_000, "1m30s"),
            (3_600_000_000_000, "1h0m0s"),
            (3_661_500_000_000, "1h1m1.5s"),
            (-2_000_000_000, "-2s"),
            (i64::MIN, "-2562047h47m16.854775808s"),
        ];
        for (nanos, text) in cases {
            assert_eq!(format_go_duration(nanos), text, "{nanos}");
        }
    }
}
