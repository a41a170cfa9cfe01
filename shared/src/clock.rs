//! Time and randomness ports, so tests and the demo control both.

use std::sync::Mutex;

use chrono::{DateTime, Duration, Utc};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> DateTime<Utc>;
}

/// Wall-clock time.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that moves only when told to: the demo's simulated time and the tests' virtual time.
#[derive(Debug)]
pub struct SimClock {
    now: Mutex<DateTime<Utc>>,
}

impl SimClock {
    pub fn new(start: DateTime<Utc>) -> Self {
        Self {
            now: Mutex::new(start),
        }
    }

    pub fn advance(&self, by: Duration) {
        let mut now = self
            .now
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *now += by;
    }

    /// Moves to `to` if that is later; time never runs backwards.
    pub fn advance_to(&self, to: DateTime<Utc>) {
        let mut now = self
            .now
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if to > *now {
            *now = to;
        }
    }
}

impl Clock for SimClock {
    fn now(&self) -> DateTime<Utc> {
        *self
            .now
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Waiting, through a port: real sleeps in production, a clock jump under simulated time, so
/// backoff and the five-second fallback budget are testable without waiting.
#[async_trait::async_trait]
pub trait Sleeper: Send + Sync + std::fmt::Debug {
    async fn sleep(&self, duration: std::time::Duration);
}

#[async_trait::async_trait]
impl Sleeper for SystemClock {
    async fn sleep(&self, duration: std::time::Duration) {
        tokio::time::sleep(duration).await;
    }
}

#[async_trait::async_trait]
impl Sleeper for SimClock {
    async fn sleep(&self, duration: std::time::Duration) {
        self.advance(Duration::from_std(duration).unwrap_or_else(|_| Duration::days(1)));
    }
}

/// A source of random numbers (retry jitter, the demo's noise).
pub trait Random: Send + Sync + std::fmt::Debug {
    fn next_u64(&self) -> u64;

    /// Uniform in [0, 1).
    fn next_f64(&self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A seeded ChaCha8 stream: the same seed gives the same numbers.
#[derive(Debug)]
pub struct SeededRandom {
    rng: Mutex<ChaCha8Rng>,
}

impl SeededRandom {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
        }
    }

    /// Seeded from the operating system, for production jitter.
    pub fn from_os() -> Self {
        Self {
            rng: Mutex::new(ChaCha8Rng::from_os_rng()),
        }
    }
}

impl Random for SeededRandom {
    fn next_u64(&self) -> u64 {
        self.rng
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .next_u64()
    }
}
