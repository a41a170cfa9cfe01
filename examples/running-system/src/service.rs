//! The simulated service an instance runs: a request-processing service whose throughput,
//! latency and memory follow from four genes, measured with a little noise.
//!
//! | gene          | effect                                                                  |
//! |---------------|-------------------------------------------------------------------------|
//! | `workers`     | more throughput (saturating) and less queueing, more CPU contention      |
//! | `batch_size`  | more throughput (saturating), longer tail latency                       |
//! | `cache_mb`    | a higher hit rate: more throughput, shorter batches to wait on          |
//! | `compression` | `none`, `lz4` or `zstd`: less network time for a little CPU per request |
//!
//! Memory grows with the cache and with every worker's batch in flight; past the host's limit
//! the service crashes, and the measurement fails instead of scoring. Missing genes take the
//! values of `dna.json`.

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::dna::Genes;

/// Resident memory with no cache and nothing in flight.
const BASE_MEMORY_MB: f64 = 48.0;
/// Memory per request of a batch in flight, per worker.
const MB_PER_REQUEST: f64 = 0.25;
/// The most requests per second the service could ever serve.
const PEAK_RPS: f64 = 2000.0;
/// Relative spread of one measurement around the model (uniform, +/-).
const NOISE: f64 = 0.02;
/// How long a measurement waits for the service before it gives up.
const MEASUREMENT_TIMEOUT_S: u32 = 30;

/// The host the service runs on, and how often a measurement times out on it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimulatedService {
    /// The host's memory: a configuration that needs more crashes the service.
    pub memory_limit_mb: f64,
    /// Chance (0..1) that a measurement gets no answer in time, whatever the genes.
    pub timeout_rate: f64,
}

impl Default for SimulatedService {
    fn default() -> Self {
        Self {
            memory_limit_mb: 1024.0,
            timeout_rate: 0.0,
        }
    }
}

/// A successful measurement: the fitness and the numbers it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Measured {
    pub score: f64,
    pub metrics: BTreeMap<String, f64>,
}

/// A failed measurement: why, and what was observed before it failed.
#[derive(Debug, Clone, PartialEq)]
pub struct Failed {
    pub error: String,
    pub metrics: BTreeMap<String, f64>,
}

/// The configuration the genes describe, with the defaults for missing ones.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Config {
    workers: f64,
    batch_size: f64,
    cache_mb: f64,
    /// Throughput gain and added latency of the compression codec.
    codec: (f64, f64),
}

impl Config {
    fn from_genes(genes: &Genes) -> Self {
        let number = |name: &str, default: f64| {
            genes
                .get(name)
                .and_then(Value::as_f64)
                .unwrap_or(default)
                .max(0.0)
        };
        let codec = match genes.get("compression").and_then(Value::as_str) {
            Some("lz4") => (1.12, 0.5),
            Some("zstd") => (1.18, 2.0),
            _ => (1.0, 0.0),
        };
        Self {
            workers: number("workers", 4.0).max(1.0),
            batch_size: number("batch_size", 16.0).max(1.0),
            cache_mb: number("cache_mb", 64.0),
            codec,
        }
    }

    fn memory_mb(&self) -> f64 {
        BASE_MEMORY_MB + self.cache_mb + self.workers * self.batch_size * MB_PER_REQUEST
    }

    fn hit_rate(&self) -> f64 {
        self.cache_mb / (self.cache_mb + 128.0)
    }

    fn throughput_rps(&self) -> f64 {
        let (gain, _) = self.codec;
        PEAK_RPS * self.workers / (self.workers + 8.0) * self.batch_size / (self.batch_size + 24.0)
            * (0.7 + 0.3 * self.hit_rate())
            * gain
    }

    fn p99_latency_ms(&self) -> f64 {
        let (_, added) = self.codec;
        4.0 + 0.35 * self.batch_size * (1.0 - 0.5 * self.hit_rate())
            + 40.0 / self.workers
            + 0.15 * self.workers
            + added
    }
}

impl SimulatedService {
    /// Runs the service on `genes` and measures it. `seed` fixes the noise and the timeouts, so
    /// the same measurement gives the same answer.
    pub fn measure(&self, genes: &Genes, seed: [u8; 32]) -> Result<Measured, Failed> {
        let config = Config::from_genes(genes);
        let memory = config.memory_mb();
        let mut metrics = BTreeMap::from([("memory_mb".to_owned(), round(memory))]);
        if memory > self.memory_limit_mb {
            return Err(Failed {
                error: format!(
                    "service crashed: out of memory ({memory:.0} MB needed, {:.0} MB available)",
                    self.memory_limit_mb
                ),
                metrics,
            });
        }
        let mut rng = ChaCha8Rng::from_seed(seed);
        if rng.random::<f64>() < self.timeout_rate {
            return Err(Failed {
                error: format!("measurement timed out after {MEASUREMENT_TIMEOUT_S} s"),
                metrics,
            });
        }
        let mut noisy = |value: f64| value * (1.0 + rng.random_range(-NOISE..=NOISE));
        let throughput = noisy(config.throughput_rps());
        let p99 = noisy(config.p99_latency_ms());
        metrics.insert("throughput_rps".into(), round(throughput));
        metrics.insert("p99_latency_ms".into(), round(p99));
        Ok(Measured {
            // Goodput: throughput discounted by tail latency, in hundreds of requests a second.
            score: round(throughput / (1.0 + p99 / 50.0) / 100.0),
            metrics,
        })
    }
}

/// The seed of one measurement: a hash of what identifies it.
pub fn measurement_seed(parts: &[&str]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    hasher.finalize().into()
}

/// Four decimals: enough for a fitness, and stable in JSON.
fn round(value: f64) -> f64 {
    (value * 10_000.0).round() / 10_000.0
}
