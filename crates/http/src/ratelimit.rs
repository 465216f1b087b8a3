//! Token-bucket rate limits, per key (user id or client IP), in memory.
//!
//! Each process limits what it serves; behind a load balancer a client's requests spread
//! over processes, so operators size the buckets per process (Synapse's workers do the same).

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use ganglion_core::{Error, ErrorKind, config::RateLimit};

/// Buckets with more keys than this are swept of full (idle) buckets.
const SWEEP_AT: usize = 100_000;

/// One limit applied to many keys.
#[derive(Debug)]
pub struct RateLimiter {
    limit: Option<RateLimit>,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    /// A limiter; `None` allows everything (rate limits switched off).
    pub fn new(limit: Option<RateLimit>) -> RateLimiter {
        RateLimiter {
            limit,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `key`, or fails with `M_LIMIT_EXCEEDED` and how long to wait.
    pub fn check(&self, key: &str) -> Result<(), Error> {
        self.check_at(key, Instant::now())
    }

    fn check_at(&self, key: &str, now: Instant) -> Result<(), Error> {
        let Some(limit) = self.limit else {
            return Ok(());
        };
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() > SWEEP_AT {
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * limit.per_second < limit.burst
            });
        }
        let (tokens, at) = buckets.entry(key.to_owned()).or_insert((limit.burst, now));
        *tokens =
            (*tokens + now.duration_since(*at).as_secs_f64() * limit.per_second).min(limit.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            let wait = Duration::from_secs_f64((1.0 - *tokens) / limit.per_second);
            Err(Error::new(
                ErrorKind::LimitExceeded {
                    retry_after: Some(wait),
                },
                "too many requests",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_a_burst_then_refuses_then_refills() {
        let rl = RateLimiter::new(Some(RateLimit {
            per_second: 1.0,
            burst: 3.0,
        }));
        let t0 = Instant::now();
        for _ in 0..3 {
            rl.check_at("u", t0).expect("within burst");
        }
        let err = rl.check_at("u", t0).expect_err("burst exhausted");
        match err.kind {
            ErrorKind::LimitExceeded {
                retry_after: Some(d),
            } => assert!(d <= Duration::from_secs(1) && d > Duration::ZERO),
            other => panic!("unexpected {other:?}"),
        }
        rl.check_at("other", t0).expect("keys are independent");
        rl.check_at("u", t0 + Duration::from_millis(1100))
            .expect("refilled");
    }

    #[test]
    fn disabled_allows_everything() {
        let rl = RateLimiter::new(None);
        for _ in 0..1000 {
            rl.check("u").expect("unlimited");
        }
    }
}
