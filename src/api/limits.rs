//! What protects the service from slow, greedy and hostile clients: the deadlines for a request's
//! head and body, the cap on open connections, and the optional per-token rate limit of the stats
//! request. The command line's syntax for them (`--rate-limit 50/s`) is config's business; app
//! turns the flags into these.

use std::{fmt, num::NonZeroU32, time::Duration};

use governor::Quota;

/// Default of [`Limits::header_read_timeout`].
const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default of [`Limits::body_read_timeout`].
const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default of [`Limits::max_connections`].
const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// What protects the service from slow, greedy and hostile clients. The defaults suit a service
/// that faces client integrations directly or through a load balancer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// How long a client has to send a request's head (request line and headers). It is also
    /// how long an idle keep-alive connection stays open: hyper starts the clock whenever it
    /// waits for a next head, so an idle connection cannot hold a slot for ever.
    pub header_read_timeout: Duration,
    /// How long a client has, once the head has arrived, to send the whole body.
    pub body_read_timeout: Duration,
    /// Connections served at once. Further clients wait in the listen backlog until a slot
    /// frees, rather than being refused: nobody gets an error for arriving in a burst.
    pub max_connections: usize,
    /// Per-token limit of the stats request; `None` (the default) leaves it off.
    pub rate_limit: Option<RateLimit>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            body_read_timeout: DEFAULT_BODY_READ_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            rate_limit: None,
        }
    }
}

/// A per-token rate: `requests` per `period`, with bursts of up to `burst` requests. A token over
/// it gets 429 with `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests per period.
    pub requests: NonZeroU32,
    /// The period.
    pub period: Duration,
    /// Requests a token may send at once after a quiet spell.
    pub burst: NonZeroU32,
}

impl RateLimit {
    /// `requests` per `period`, with a burst of one period's worth (50 per second lets a token
    /// send 50 at once, then one every 20 ms).
    pub fn new(requests: NonZeroU32, period: Duration) -> Self {
        Self {
            requests,
            period,
            burst: requests,
        }
    }

    /// The same rate with another burst size.
    pub fn with_burst(self, burst: NonZeroU32) -> Self {
        Self { burst, ..self }
    }

    /// The limiter's quota: one request every `period / requests`, `burst` at once.
    pub(super) fn quota(self) -> Quota {
        // A period too short to share out in whole nanoseconds (more than a billion requests a
        // second; the command line allows at most a million) gives no interval: per second then.
        let interval = self.period / self.requests.get();
        Quota::with_period(interval)
            .unwrap_or_else(|| Quota::per_second(self.requests))
            .allow_burst(self.burst)
    }
}

/// `50/s (burst 50)`, as the server's start-up log line shows it.
impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.period.as_secs() {
            60 => "min",
            3600 => "h",
            _ => "s",
        };
        write!(f, "{}/{unit} (burst {})", self.requests, self.burst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nonzero(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).expect("non-zero")
    }

    #[test]
    fn a_rate_bursts_one_period_worth_unless_told_otherwise() {
        let limit = RateLimit::new(nonzero(50), Duration::from_secs(1));
        assert_eq!(limit.burst.get(), 50);
        assert_eq!(limit.to_string(), "50/s (burst 50)");
        let limit = RateLimit::new(nonzero(3000), Duration::from_secs(60)).with_burst(nonzero(10));
        assert_eq!((limit.requests.get(), limit.burst.get()), (3000, 10));
        assert_eq!(limit.to_string(), "3000/min (burst 10)");
        assert_eq!(
            RateLimit::new(nonzero(1), Duration::from_secs(3600)).to_string(),
            "1/h (burst 1)"
        );
    }

    #[test]
    fn quotas_share_the_period_out_and_keep_the_burst() {
        let quota = RateLimit::new(nonzero(50), Duration::from_secs(1)).quota();
        assert_eq!(quota.replenish_interval(), Duration::from_millis(20));
        assert_eq!(quota.burst_size().get(), 50);
        // Too many per second for a whole-nanosecond interval: still a quota, not a panic.
        let quota = RateLimit::new(nonzero(u32::MAX), Duration::from_secs(1)).quota();
        assert_eq!(quota.burst_size().get(), u32::MAX);
    }

    #[test]
    fn limits_default_to_ten_second_deadlines_1024_connections_and_no_rate_limit() {
        let defaults = Limits::default();
        assert_eq!(defaults.header_read_timeout, Duration::from_secs(10));
        assert_eq!(defaults.body_read_timeout, Duration::from_secs(10));
        assert_eq!(defaults.max_connections, 1024);
        assert_eq!(defaults.rate_limit, None, "rate limiting is off by default");
    }
}
