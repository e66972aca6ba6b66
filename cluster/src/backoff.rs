//! How long to wait before each restart (exponential, capped).

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
}
