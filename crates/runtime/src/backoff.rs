//! Retry delays for every reconnecting loop of the proxies: the config
//! stream, certificate requests and the node agent handoff.
//!
//! Exponential with full jitter (the `backon` crate): after a controller
//! restart a thousand proxies must not come back in lockstep, and a loop
//! that got through for a while starts again from the shortest delay.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// The delays of one retrying loop.
#[derive(Debug)]
pub struct Backoff {
    builder: ExponentialBuilder,
    delays: ExponentialBackoff,
    max: Duration,
}

impl Backoff {
    /// Delays from about `min` (plus jitter) doubling up to about `max`
    /// (plus jitter), for ever.
    pub fn new(min: Duration, max: Duration) -> Self {
        let builder = ExponentialBuilder::default()
            .with_min_delay(min)
            .with_max_delay(max)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times();
        Backoff {
            delays: builder.build(),
            builder,
            max,
        }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        // Never `None` without a maximum number of attempts; the longest
        // delay all the same rather than a spin.
        self.delays.next().unwrap_or(self.max)
    }

    /// The attempt succeeded (or lasted): start again from the shortest delay.
    pub fn reset(&mut self) {
        self.delays = self.builder.build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_are_jittered_and_reset() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(5));
        let mut b = Backoff::new(min, max);
        let first: Vec<Duration> = (0..12).map(|_| b.next_delay()).collect();
        for d in &first {
            assert!(
                *d >= min && *d <= max * 2,
                "{d:?} outside [{min:?}, 2×{max:?}]"
            );
        }
        assert!(first[11] >= max, "the delay reached the cap: {first:?}");
        b.reset();
        assert!(
            b.next_delay() <= min * 2,
            "reset starts from the shortest delay"
        );
        // Two proxies that failed at the same moment wait different times.
        let mut other = Backoff::new(min, max);
        let theirs: Vec<Duration> = (0..12).map(|_| other.next_delay()).collect();
        assert_ne!(first, theirs, "no jitter: proxies would retry in lockstep");
    }
}
