//! Units the settings are written in: durations for humans (`90s`, `9h`, `3d`) and IP
//! networks in CIDR notation, plus [`Invalid`], the one shape every settings section uses to
//! say which of its keys is wrong and why; and [`excerpt`], the one way bad input is quoted
//! in a message. Nothing here knows any section.

use std::{fmt, net::IpAddr, time::Duration};

use serde::{de, Deserialize, Deserializer};

/// A setting that types alone cannot check: its dotted key and the problem, for
/// [`crate::config`] to locate in the file or the `--set` argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    pub key: String,
    pub message: String,
}

impl Invalid {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Invalid {
            key: key.into(),
            message: message.into(),
        }
    }

    /// The same problem, its key prefixed by the section the caller keeps it in.
    pub fn within(self, section: &str) -> Self {
        Invalid {
            key: if self.key.is_empty() {
                section.to_string()
            } else {
                format!("{section}.{}", self.key)
            },
            message: self.message,
        }
    }
}

/// Checks that each named duration is longer than zero.
pub fn require_positive(durations: &[(&str, HumanDuration)]) -> Result<(), Invalid> {
    for (key, d) in durations {
        if d.0.is_zero() {
            return Err(Invalid::new(
                *key,
                format!("must be longer than 0 ({DURATION_HINT})"),
            ));
        }
    }
    Ok(())
}

/// Checks that each named severity is 0-10.
pub fn require_severity(severities: &[(&str, u8)]) -> Result<(), Invalid> {
    for (key, sev) in severities {
        if *sev > 10 {
            return Err(Invalid::new(
                *key,
                format!("{sev} is out of range: severity is 0-10"),
            ));
        }
    }
    Ok(())
}

/// Checks that each named rate is a finite number of bytes per second, at least 0.
pub fn require_rate(rates: &[(&str, f64)]) -> Result<(), Invalid> {
    for (key, v) in rates {
        if !(v.is_finite() && *v >= 0.0) {
            return Err(Invalid::new(
                *key,
                "must be a number of bytes per second >= 0",
            ));
        }
    }
    Ok(())
}

/// Checks that each named score is within 0-1.
pub fn require_unit(scores: &[(&str, f64)]) -> Result<(), Invalid> {
    for (key, v) in scores {
        if !(0.0..=1.0).contains(v) {
            return Err(Invalid::new(*key, format!("{v} is out of range: 0-1")));
        }
    }
    Ok(())
}

/// A duration written for humans: `90s`, `15m`, `9h`, `3d`, `1h 30m`; always with a unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub const fn secs(s: u64) -> Self {
        HumanDuration(Duration::from_secs(s))
    }

    pub fn as_nanos(self) -> u64 {
        self.0.as_nanos().min(u64::MAX as u128) as u64
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

pub const DURATION_HINT: &str = "a duration such as 90s, 15m, 9h or 3d";

/// The longest duration any setting takes: 100 years. Longer ones are slips (a number of
/// milliseconds typed as seconds, "584 billion years") whose arithmetic would saturate.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 86_400);

/// `d` when within [`MAX_DURATION`], else the error for `written`.
fn bounded<E: de::Error>(d: Duration, written: &dyn fmt::Display) -> Result<HumanDuration, E> {
    if d > MAX_DURATION {
        return Err(E::custom(format!(
            "duration {written} is longer than the 100 years any setting takes: expected {DURATION_HINT}"
        )));
    }
    Ok(HumanDuration(d))
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(DURATION_HINT)
            }
            // A bare number is refused rather than read as seconds: `timeout = 5` meant as
            // minutes (or milliseconds) would silently be something else, and a unit costs
            // one letter.
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<HumanDuration, E> {
                Err(E::custom(format!(
                    "{v} has no unit: write {v}s, {v}m, {v}h or {v}d ({DURATION_HINT})"
                )))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<HumanDuration, E> {
                Err(E::custom(format!(
                    "{v} has no unit: write {v}s, {v}m, {v}h or {v}d ({DURATION_HINT})"
                )))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<HumanDuration, E> {
                Err(E::custom(format!(
                    "{v} has no unit: write a duration such as {v}s ({DURATION_HINT})"
                )))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<HumanDuration, E> {
                let d = humantime::parse_duration(v.trim()).map_err(|e| {
                    E::custom(format!(
                        "invalid duration {} ({e}): expected {DURATION_HINT}",
                        excerpt(v)
                    ))
                })?;
                bounded(d, &excerpt(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// An IP network in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`, or a bare address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| {
            format!("{s:?} is not an IP address or CIDR (e.g. 10.0.0.0/8, 2001:db8::/32)")
        })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: prefix length must be 0..={max}"))?,
        };
        Ok(Cidr { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        fn bits(ip: IpAddr) -> (u128, u8) {
            match ip {
                IpAddr::V4(v4) => (u32::from(v4) as u128, 32),
                IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                    Some(v4) => (u32::from(v4) as u128, 32),
                    None => (u128::from(v6), 128),
                },
            }
        }
        let (net, width) = bits(self.addr);
        let (ip, ip_width) = bits(ip);
        if width != ip_width {
            return false;
        }
        let shift = width - self.prefix;
        shift >= width || (net >> shift) == (ip >> shift)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Cidr::parse(&s).map_err(de::Error::custom)
    }
}

/// Longest excerpt of bad input a message quotes, in characters.
pub const EXCERPT_CHARS: usize = 60;

/// A short, escaped quote of untrusted input for a log line or an error: at most
/// [`EXCERPT_CHARS`] characters, control and invisible characters escaped (`escape_debug`),
/// and the size of what was left out. A 15 MB feed line, or a line with terminal escapes,
/// never reaches the log whole.
pub fn excerpt(s: &str) -> String {
    let mut out = String::from("\"");
    for (taken, (i, c)) in s.char_indices().enumerate() {
        if taken == EXCERPT_CHARS {
            out.push_str(&format!("\"... ({} more bytes)", s.len() - i));
            return out;
        }
        out.extend(c.escape_debug());
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpt_is_short_and_escaped() {
        assert_eq!(excerpt("0.0.0.0/0"), "\"0.0.0.0/0\"");
        assert_eq!(excerpt("a\u{1b}[2Jb\u{202e}"), "\"a\\u{1b}[2Jb\\u{202e}\"");
        let long = "x".repeat(1_000_000);
        let e = excerpt(&long);
        assert!(
            e.len() < 100 && e.ends_with(&format!("({} more bytes)", 1_000_000 - EXCERPT_CHARS)),
            "{e}"
        );
    }

    #[test]
    fn cidr_matching() {
        let c = Cidr::parse("192.168.2.0/24").expect("cidr");
        assert!(c.contains("192.168.2.21".parse().expect("ip")));
        assert!(!c.contains("192.168.3.1".parse().expect("ip")));
        assert!(c.contains("::ffff:192.168.2.9".parse().expect("ip")));
        assert!(Cidr::parse("0.0.0.0/0")
            .expect("any")
            .contains("8.8.8.8".parse().expect("ip")));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
    }
}
