//! `--rate`: spaces records evenly in time, as a token bucket that holds at most a tenth of a
//! second of records. Waits shorter than 10 ms are not taken: the records go out at once and
//! the wait adds up until it is worth sleeping, so a high rate sends small bursts 10 ms apart
//! instead of spinning on sub-millisecond waits (which neither a sleep nor the producer's poll
//! can keep, and which kept a core busy).
//!
//! It is pure scheduling logic ([`Pacer::delay`] takes the current instant and says how long to
//! wait), so tests drive it with made-up instants; the caller does the waiting (polling the
//! producer meanwhile). Records are scheduled against a running due time rather than by
//! sleeping a fixed interval each, so sleep overshoot does not lower the rate, and the small
//! bucket keeps a stall (a slow broker, a paused terminal) from turning into a long burst.

use std::time::{Duration, Instant};

/// The shortest wait worth sleeping for: at 20,000 records/s, bursts of 200 records 10 ms
/// apart cost ingest 0.12 cores where waits of 50 us each took a whole one.
const MIN_WAIT: Duration = Duration::from_millis(10);

/// Schedules records at a steady rate.
#[derive(Clone, Debug)]
pub struct Pacer {
    /// Time between two records.
    interval: Duration,
    /// Most time a stalled sender may make up with a burst.
    max_lag: Duration,
    /// When the next record is due; `None` before the first.
    due: Option<Instant>,
}

impl Pacer {
    /// A pacer for `rate` records per second (`rate` > 0).
    pub fn new(rate: f64) -> Pacer {
        let interval = Duration::from_secs_f64(1.0 / rate);
        // A tenth of a second's worth of records, and at least one.
        let max_lag = Duration::from_millis(100).max(interval);
        Pacer {
            interval,
            max_lag,
            due: None,
        }
    }

    /// How long to wait, from `now`, before sending one more record; counts the record as
    /// sent at its due time.
    pub fn delay(&mut self, now: Instant) -> Duration {
        let due = match self.due {
            None => now,
            // Behind by more than the bucket holds: forget the excess.
            Some(due) if now.saturating_duration_since(due) > self.max_lag => now - self.max_lag,
            Some(due) => due,
        };
        self.due = Some(due + self.interval);
        let wait = due.saturating_duration_since(now);
        if wait < MIN_WAIT {
            Duration::ZERO
        } else {
            wait
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spaces_records_evenly() {
        let t0 = Instant::now();
        let mut pacer = Pacer::new(10.0);
        assert_eq!(pacer.delay(t0), Duration::ZERO);
        assert_eq!(pacer.delay(t0), Duration::from_millis(100));
        // The caller waited; the next is due 100 ms later.
        assert_eq!(
            pacer.delay(t0 + Duration::from_millis(100)),
            Duration::from_millis(100)
        );
        // Arriving late: no wait, and the schedule continues from the due time.
        assert_eq!(pacer.delay(t0 + Duration::from_millis(350)), Duration::ZERO);
        assert_eq!(
            pacer.delay(t0 + Duration::from_millis(350)),
            Duration::from_millis(50)
        );
    }

    #[test]
    fn a_high_rate_waits_in_steps_worth_sleeping() {
        // 20,000 records/s: one every 50 us. The first 200 go at once, then 10 ms is waited.
        let t0 = Instant::now();
        let mut pacer = Pacer::new(20_000.0);
        for _ in 0..200 {
            assert_eq!(pacer.delay(t0), Duration::ZERO);
        }
        assert_eq!(pacer.delay(t0), MIN_WAIT);
        // Over a second of such waits, the rate holds.
        let mut now = t0 + MIN_WAIT;
        let mut sent = 201;
        while now < t0 + Duration::from_secs(1) {
            now += pacer.delay(now);
            sent += 1;
        }
        assert!((19_990..=20_210).contains(&sent), "{sent}");
    }

    #[test]
    fn keeps_the_average_rate_despite_oversleeping() {
        let t0 = Instant::now();
        let mut pacer = Pacer::new(1000.0);
        let mut now = t0;
        for _ in 0..10_000 {
            let wait = pacer.delay(now);
            // Every wait overshoots by 30 us, as sleep does.
            if !wait.is_zero() {
                now += wait + Duration::from_micros(30);
            }
        }
        let elapsed = (now - t0).as_secs_f64();
        assert!((9.9..=10.05).contains(&elapsed), "{elapsed}");
    }

    #[test]
    fn a_stall_allows_only_a_small_burst() {
        let t0 = Instant::now();
        let mut pacer = Pacer::new(1000.0);
        pacer.delay(t0);
        let later = t0 + Duration::from_secs(5);
        let burst = (0..1000)
            .take_while(|_| pacer.delay(later).is_zero())
            .count();
        // 100 ms of records at 1000/s, and the 10 ms not worth a wait, give or take one.
        assert!((109..=112).contains(&burst), "{burst}");
    }

    #[test]
    fn slow_rates_wait_seconds() {
        let t0 = Instant::now();
        let mut pacer = Pacer::new(0.5);
        assert_eq!(pacer.delay(t0), Duration::ZERO);
        assert_eq!(pacer.delay(t0), Duration::from_secs(2));
    }
}
