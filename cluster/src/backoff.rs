//! How long to wait before each restart (exponential, capped), and the duration syntax of the
//! command line (`500ms`, `1s`, `2m`, a bare number of seconds).

use std::time::Duration;

/// Delays between restarts: `initial`, `2 x initial`, `4 x initial`, ... never above `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The wait before restart number `restart` (1-based: the first restart waits `initial`).
    pub fn delay(&self, restart: u32) -> Duration {
        let doublings = restart.saturating_sub(1).min(31);
        self.initial
            .checked_mul(1 << doublings)
            .unwrap_or(Duration::MAX)
            .min(self.max)
    }
}

/// Parses `250ms`, `1s`, `1.5s`, `2m`, `1h` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (e.g. 500ms, 1s, 2m)"))?;
    let scale = match unit.trim() {
        "ms" => 1e-3,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?} (use ms, s, m or h)"
            ));
        }
    };
    Duration::try_from_secs_f64(value * scale).map_err(|e| format!("{text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_the_initial_delay_up_to_the_cap() {
        let b = Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(30),
        };
        let secs: Vec<u64> = (1..=8).map(|r| b.delay(r).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(b.delay(0), Duration::from_secs(1));
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn zero_initial_means_restart_at_once() {
        let b = Backoff {
            initial: Duration::ZERO,
            max: Duration::from_secs(30),
        };
        assert_eq!(b.delay(5), Duration::ZERO);
    }

    #[test]
    fn huge_delays_saturate_at_the_cap() {
        let b = Backoff {
            initial: Duration::from_secs(u64::MAX / 2),
            max: Duration::from_secs(60),
        };
        assert_eq!(b.delay(3), Duration::from_secs(60));
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        for bad in ["", "s", "1d", "-1s", "1.2.3s", "fast"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
