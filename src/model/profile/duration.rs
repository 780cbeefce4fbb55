//! Time spans as profiles and plans write them: `90d`, `2y`, `1h30m`; positive, whole
//! seconds, printed back in the same units.

use super::de::deserialize_from_scalar_text;
use crate::diag::yaml::with_help;
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::Serialize;
use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

/// A positive span of time written as a sequence of `<number><unit>` parts, units
/// `y` (365 days), `d`, `h`, `m` (minutes) and `s`: `90d`, `2y`, `1h30m`. Whole seconds.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(into = "String")]
pub struct Duration {
    seconds: u64,
}

const MINUTE: u64 = 60;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;
const YEAR: u64 = 365 * DAY;
/// The longest span any setting takes: AKS Engine's longest validity is the front-proxy
/// pair's 262824 days (~720 years). Longer spans cannot be used: a certificate's end date
/// stops at year 9999 (RFC 5280 GeneralizedTime) and a gate's deadline at what a monotonic
/// clock holds, so they would fail at apply time instead of here.
const MAX_YEARS: u64 = 1000;

impl Duration {
    /// A duration of `seconds`; `None` for zero, which no setting accepts.
    pub fn from_secs(seconds: u64) -> Option<Self> {
        (seconds > 0).then_some(Self { seconds })
    }
    pub const fn seconds(n: u64) -> Self {
        Self { seconds: n }
    }
    pub const fn minutes(n: u64) -> Self {
        Self { seconds: n * MINUTE }
    }
    pub const fn days(n: u64) -> Self {
        Self { seconds: n * DAY }
    }
    pub const fn years(n: u64) -> Self {
        Self { seconds: n * YEAR }
    }
    pub fn as_secs(self) -> u64 {
        self.seconds
    }
    pub fn as_std(self) -> std::time::Duration {
        std::time::Duration::from_secs(self.seconds)
    }
    /// For arithmetic with `time::OffsetDateTime` (validity windows).
    pub fn as_time(self) -> time::Duration {
        time::Duration::seconds(i64::try_from(self.seconds).unwrap_or(i64::MAX))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.seconds;
        if rest == 0 {
            return f.write_str("0s");
        }
        for (unit, size) in [("y", YEAR), ("d", DAY), ("h", HOUR), ("m", MINUTE), ("s", 1)] {
            if rest >= size {
                write!(f, "{}{unit}", rest / size)?;
                rest %= size;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Duration({self})")
    }
}

impl FromStr for Duration {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let spelled = text.trim();
        let units_help = "write a positive number followed by a unit: y (365 days), d, h, m (minutes) or s, e.g. `90d`, `2y`, `1h30m`";
        if spelled.starts_with('-') {
            return Err(with_help(format!("negative duration `{spelled}`: a time span must be positive"), units_help));
        }
        if spelled.is_empty() {
            return Err(with_help("empty duration", units_help));
        }
        let mut seconds: u64 = 0;
        let mut digits = String::new();
        let mut saw_part = false;
        for c in spelled.chars() {
            if c.is_ascii_digit() {
                digits.push(c);
                continue;
            }
            if c.is_whitespace() && digits.is_empty() {
                continue;
            }
            let size = match c {
                'y' => YEAR,
                'd' => DAY,
                'h' => HOUR,
                'm' => MINUTE,
                's' => 1,
                _ => {
                    return Err(with_help(format!("`{spelled}` is not a duration (unexpected `{c}`)"), units_help));
                }
            };
            if digits.is_empty() {
                return Err(with_help(format!("`{spelled}` is not a duration (unit `{c}` has no number)"), units_help));
            }
            let part = digits
                .parse::<u64>()
                .ok()
                .and_then(|n| n.checked_mul(size))
                .and_then(|n| n.checked_add(seconds));
            seconds = part.ok_or_else(|| with_help(format!("duration `{spelled}` is too large"), units_help))?;
            digits.clear();
            saw_part = true;
        }
        if !digits.is_empty() || !saw_part {
            return Err(with_help(format!("`{spelled}` has no unit"), units_help));
        }
        if seconds > MAX_YEARS * YEAR {
            return Err(with_help(format!("duration `{spelled}` is too large: at most {MAX_YEARS}y"), units_help));
        }
        if seconds == 0 {
            return Err(with_help(
                format!("zero duration `{spelled}`: a time span must be positive"),
                units_help,
            ));
        }
        Ok(Self { seconds })
    }
}

impl TryFrom<String> for Duration {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<Duration> for String {
    fn from(d: Duration) -> String {
        d.to_string()
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A positive span of time: number-unit parts with units y (365 days), d, h, m (minutes), s; e.g. `90d`, `2y`, `1h30m`.",
            "type": "string",
            "pattern": "^([0-9]+[ydhms])+$"
        })
    }
}

deserialize_from_scalar_text!(Duration, "a duration such as `90d`, `2y` or `10m`");


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_print_canonically() {
        let cases = [("90d", 90 * DAY), ("2y", 2 * YEAR), ("1h30m", HOUR + 30 * MINUTE), ("5s", 5), ("24h", DAY)];
        for (text, seconds) in cases {
            let d: Duration = text.parse().unwrap();
            assert_eq!(d.as_secs(), seconds, "{text}");
        }
        assert_eq!(Duration::days(400).to_string(), "1y35d");
        assert_eq!("24h".parse::<Duration>().unwrap().to_string(), "1d");
    }

    #[test]
    fn durations_reject_nonsense() {
        for bad in ["-3d", "0d", "0s", "", "d", "10", "3w", "1y-2d", "99999999999999999999y", "1000y1s"] {
            assert!(bad.parse::<Duration>().is_err(), "{bad} should be rejected");
        }
    }
}
