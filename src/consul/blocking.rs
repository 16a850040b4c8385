//! The pure parts of a blocking-query loop: the index rules (reference §2),
//! the backoff after errors, and the rate limit that keeps a loop whose
//! answers come back at once from spinning.

use std::time::Duration;

use tokio::time::Instant;

//------------ BlockingIndex --------------------------------------------------

/// How the index moved with an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexMove {
    /// The answer's index is above the one sent.
    Forward,
    /// The answer carries the index sent (a timeout, or a change that did
    /// not move the index).
    Same,
    /// The answer's index is below the one sent: the loop restarts from 0
    /// (snapshot restore, stale follower, …).
    Reset,
}

/// The `index` a blocking loop sends next, kept by Consul's client rules.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockingIndex {
    /// The index to send; 0 makes a non-blocking read.
    current: u64,
}

impl BlockingIndex {
    /// A fresh loop: the first read does not block.
    pub const fn new() -> Self {
        Self { current: 0 }
    }

    /// The index to send with the next request.
    pub const fn get(self) -> u64 {
        self.current
    }

    /// Makes the next read a non-blocking one (after an error: the data is
    /// confirmed at once when Consul answers again, rather than after a
    /// whole blocking wait).
    pub fn restart(&mut self) {
        self.current = 0;
    }

    /// Takes the `X-Consul-Index` of the answer to a request sent with
    /// [`get`](Self::get) (0 when the header was missing). An index lower
    /// than the one sent resets the loop to 0; otherwise the index is kept,
    /// and never below 1 once an answer came.
    pub fn advance(&mut self, returned: u64) -> IndexMove {
        let sent = self.current;
        if returned < sent {
            self.current = 0;
            IndexMove::Reset
        } else {
            self.current = returned.max(1);
            if self.current > sent {
                IndexMove::Forward
            } else {
                IndexMove::Same
            }
        }
    }
}

//------------ Backoff --------------------------------------------------------

/// The first backoff step after an error.
pub const DEFAULT_BACKOFF_MIN: Duration = Duration::from_millis(50);
/// The longest backoff after repeated errors.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Exponential backoff with full jitter: the n-th delay in a streak is
/// drawn uniformly from `[0, min(max, min * 2^n)]`.
#[derive(Clone, Debug)]
pub struct Backoff {
    /// The first ceiling.
    min: Duration,
    /// The largest ceiling.
    max: Duration,
    /// Errors so far in this streak.
    attempt: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(DEFAULT_BACKOFF_MIN, DEFAULT_BACKOFF_MAX)
    }
}

impl Backoff {
    /// A backoff whose ceiling starts at `min` and doubles up to `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            attempt: 0,
        }
    }

    /// The ceiling of the next delay.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.min.saturating_mul(factor).min(self.max)
    }

    /// The delay before the next retry; each call raises the ceiling.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(fastrand::u64(0..=nanos))
    }

    /// Ends the streak: the next error starts from `min` again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

//------------ RateLimit ------------------------------------------------------

/// Requests a loop may send at once before the limit applies.
pub const DEFAULT_RATE_BURST: u32 = 5;
/// The spacing of requests once the burst is used up (10 a second): a
/// service whose index changes all the time is read at that pace, which
/// still keeps its updates well under a second old.
pub const DEFAULT_RATE_INTERVAL: Duration = Duration::from_millis(100);

/// A token bucket on the requests of one loop (reference §2 rule 3): a
/// blocking read normally waits, so the bucket stays full; only answers
/// that come back at once (churn, a broken proxy) meet the limit.
#[derive(Clone, Debug)]
pub struct RateLimit {
    /// Bucket size.
    burst: u32,
    /// Time to earn one token.
    interval: Duration,
    /// The instant the bucket was (or will be) empty, counting spent
    /// tokens: the tokens at time `t` are `(t - empty_at) / interval`, at
    /// most `burst`. Spending one moves it forward by `interval`.
    empty_at: Option<Instant>,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self::new(DEFAULT_RATE_BURST, DEFAULT_RATE_INTERVAL)
    }
}

impl RateLimit {
    /// A bucket of `burst` tokens, one earned every `interval`.
    pub fn new(burst: u32, interval: Duration) -> Self {
        Self {
            burst: burst.max(1),
            interval,
            empty_at: None,
        }
    }

    /// Spends a token for a request sent at `now`; returns how long to
    /// wait before sending it (zero while tokens remain).
    pub fn take(&mut self, now: Instant) -> Duration {
        let window = self.interval.saturating_mul(self.burst);
        // Where `empty_at` stands when the bucket is full at `now`.
        let full = now.checked_sub(window).unwrap_or(now);
        let empty_at = self.empty_at.map_or(full, |at| at.max(full));
        let next = empty_at + self.interval;
        self.empty_at = Some(next);
        next.saturating_duration_since(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_follows_consul_client_rules() {
        let mut index = BlockingIndex::new();
        assert_eq!(index.get(), 0, "the first read does not block");
        assert_eq!(index.advance(42), IndexMove::Forward);
        assert_eq!(index.get(), 42);
        assert_eq!(index.advance(42), IndexMove::Same);
        assert_eq!(index.advance(50), IndexMove::Forward);
        assert_eq!(index.get(), 50);
        // Backwards: restart with a non-blocking read.
        assert_eq!(index.advance(7), IndexMove::Reset);
        assert_eq!(index.get(), 0);
        // 0 (or a missing header) after an answer is kept as 1.
        assert_eq!(index.advance(0), IndexMove::Forward);
        assert_eq!(index.get(), 1);
        assert_eq!(index.advance(1), IndexMove::Same);
        // Missing header while blocking on a real index: reset, then 1.
        assert_eq!(index.advance(90), IndexMove::Forward);
        assert_eq!(index.advance(0), IndexMove::Reset);
        assert_eq!(index.advance(0), IndexMove::Forward);
        assert_eq!(index.get(), 1);
    }

    #[test]
    fn backoff_doubles_to_its_cap_with_full_jitter() {
        let mut b = Backoff::new(Duration::from_millis(50), Duration::from_secs(10));
        let ceilings: Vec<u64> = (0..12)
            .map(|_| {
                let ceiling = b.ceiling();
                let delay = b.next_delay();
                assert!(delay <= ceiling, "{delay:?} above {ceiling:?}");
                u64::try_from(ceiling.as_millis()).unwrap()
            })
            .collect();
        assert_eq!(
            ceilings,
            [
                50, 100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000, 10_000
            ]
        );
        for _ in 0..100 {
            b.next_delay();
        }
        assert_eq!(
            b.ceiling(),
            Duration::from_secs(10),
            "no overflow after many errors"
        );
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(50));
        // Full jitter: the delays spread over the range, not all at the cap.
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(1));
        let delays: Vec<Duration> = (0..200).map(|_| b.next_delay()).collect();
        assert!(delays.iter().any(|d| *d < Duration::from_millis(500)));
        assert!(delays.iter().any(|d| *d > Duration::from_millis(500)));
    }

    #[test]
    fn rate_limit_allows_a_burst_then_spaces_requests() {
        let interval = Duration::from_millis(100);
        let mut limit = RateLimit::new(3, interval);
        let start = Instant::now();
        let waits: Vec<Duration> = (0..5).map(|_| limit.take(start)).collect();
        assert_eq!(
            waits,
            [
                Duration::ZERO,
                Duration::ZERO,
                Duration::ZERO,
                interval,
                interval * 2
            ]
        );
        // After a long quiet spell (a blocking read) the bucket is full again.
        let later = start + Duration::from_secs(60);
        assert_eq!(limit.take(later), Duration::ZERO);
        assert_eq!(limit.take(later), Duration::ZERO);
        assert_eq!(limit.take(later), Duration::ZERO);
        assert_eq!(limit.take(later), interval);
    }
}
