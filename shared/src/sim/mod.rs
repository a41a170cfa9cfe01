//! Simulated systems that play the running system for `evolve demo`, the tests and the benches.
//!
//! Each one implements the [`Evaluator`] port with a closed-form fitness landscape: the built-in
//! demo service and three benchmark landscapes (interacting genes, a 4-d Rosenbrock valley, a
//! slope ending at a cliff). They are deterministic; noise, when wanted, comes from a seed.

mod baseline;
mod compare;
pub mod noisy;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;

use async_trait::async_trait;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::bus::Bus;
use crate::domain::{
    DnaFile, FitnessScore, GeneSchema, GeneSpec, GeneValue, Genes, MetricName, SystemId,
};
use crate::evaluator::{EvalError, Evaluator};
use crate::local::{InitError, init_system};
use crate::stages::Deps;
use crate::store::SystemSettings;

pub use baseline::SafeRandomSearch;
pub use compare::{CompareError, Comparison, RunResult, compare_on, run_pipeline};

/// Which closed-form landscape a simulated system evaluates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Landscape {
    /// The demo service: threads, batching, cache, timeout, compression, prefetch.
    Demo,
    /// Genes whose best values depend on each other.
    Interacting,
    /// The 4-d Rosenbrock function, negated.
    Rosenbrock4,
    /// A smooth slope toward an edge beyond which the workload fails.
    Cliff,
}

impl Landscape {
    /// The three benchmark landscapes the engine is measured on.
    pub const BENCHMARKS: [Landscape; 3] = [Self::Interacting, Self::Rosenbrock4, Self::Cliff];

    pub fn name(self) -> &'static str {
        match self {
            Self::Demo => "demo",
            Self::Interacting => "interacting",
            Self::Rosenbrock4 => "rosenbrock4",
            Self::Cliff => "cliff",
        }
    }

    /// A fresh, noise-free system on this landscape at its documented starting point.
    pub fn system(self) -> SimSystem {
        let text = match self {
            Self::Demo => DEMO_DNA,
            Self::Interacting => INTERACTING_DNA,
            Self::Rosenbrock4 => ROSENBROCK_DNA,
            Self::Cliff => CLIFF_DNA,
        };
        let (system_id, schema, start) =
            DnaFile::parse(text).expect("the built-in DNA files are valid");
        SimSystem {
            landscape: self,
            system_id,
            schema,
            start,
            noise: None,
            service: None,
        }
    }
}

impl fmt::Display for Landscape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The built-in simulated service of `evolve demo`.
///
/// Throughput grows with worker threads (up to contention), batch size (amortisation) and cache
/// size (hit ratio), but threads x batch buffers and the cache share 3 GiB of memory: past it
/// the workload dies with "out of memory". The best settings sit right at that edge, so a greedy
/// search will hit it. The timeout trades errors against held resources, compression trades
/// bandwidth against CPU (zstd stops paying with many threads), and prefetch only helps a large
/// cache. The starting point is about a tenth of the best throughput.
pub fn demo_system() -> SimSystem {
    Landscape::Demo.system()
}

/// Three genes chained by their optima (best `b` = 10 - `a`, best `c` = 4 `b`) and a bool that
/// pays only once `a` is past 5: a greedy one-gene-at-a-time search zigzags.
///
/// Steps are small (0.25 for `a` and `b`) so that the optimum (7, 3, 12) is about one 30-step
/// budget away even for a perfect search: a benchmark whose optimum is within easy reach only
/// says that both searches reach it.
pub fn interacting() -> SimSystem {
    Landscape::Interacting.system()
}

/// Fitness = -Rosenbrock(x) over four genes in [-3, 3], starting at (-2, 2, -2, 2), far from the
/// optimum (1, 1, 1, 1) at the end of a curved valley.
///
/// The max_step is 0.1, so walking `x1` from -2 to 1 takes a perfect search the whole 30-step
/// budget. With 0.5, any search, random included, removes over 95% of the initial 4,400 within
/// the budget, and the comparison of gains says nothing.
pub fn rosenbrock4() -> SimSystem {
    Landscape::Rosenbrock4.system()
}

/// Fitness rises along 2x + y (with a mild penalty on x far from y) toward the edge x + y = 120,
/// beyond which the workload fails; the optimum lies on that edge.
pub fn cliff() -> SimSystem {
    Landscape::Cliff.system()
}

/// Memory available to the demo service, in MB.
pub const DEMO_MEMORY_MB: f64 = 3072.0;

const DEMO_DNA: &str = r#"{
  "system_id": "demo-service",
  "genes": {
    "worker_threads": {"type": "int", "value": 4, "min": 1, "max": 64, "max_step": 4,
                       "risk_weight": 0.4, "description": "request worker threads"},
    "batch_size":     {"type": "int", "value": 8, "min": 1, "max": 256, "max_step": 16,
                       "risk_weight": 0.4, "description": "requests per batch; buffers take 1 MB per thread and request"},
    "cache_size_mb":  {"type": "int", "value": 256, "min": 64, "max": 4096, "max_step": 256,
                       "risk_weight": 0.3, "description": "in-process LRU size"},
    "timeout_s":      {"type": "float", "value": 0.15, "min": 0.05, "max": 5.0, "max_step": 0.1,
                       "risk_weight": 0.5, "description": "backend call timeout"},
    "compression":    {"type": "choice", "value": "none", "choices": ["none", "lz4", "zstd"],
                       "risk_weight": 0.3},
    "prefetch":       {"type": "bool", "value": false, "risk_weight": 0.2},
    "region":         {"type": "choice", "value": "eu-west-1", "choices": ["eu-west-1"],
                       "frozen": true}
  }
}"#;

const INTERACTING_DNA: &str = r#"{
  "system_id": "bench-interacting",
  "genes": {
    "a":     {"type": "float", "value": 1.0, "min": 0.0, "max": 10.0, "max_step": 0.25},
    "b":     {"type": "float", "value": 1.0, "min": 0.0, "max": 10.0, "max_step": 0.25},
    "c":     {"type": "int", "value": 4, "min": 0, "max": 40, "max_step": 1},
    "boost": {"type": "bool", "value": false}
  }
}"#;

const ROSENBROCK_DNA: &str = r#"{
  "system_id": "bench-rosenbrock4",
  "genes": {
    "x1": {"type": "float", "value": -2.0, "min": -3.0, "max": 3.0, "max_step": 0.1},
    "x2": {"type": "float", "value": 2.0, "min": -3.0, "max": 3.0, "max_step": 0.1},
    "x3": {"type": "float", "value": -2.0, "min": -3.0, "max": 3.0, "max_step": 0.1},
    "x4": {"type": "float", "value": 2.0, "min": -3.0, "max": 3.0, "max_step": 0.1}
  }
}"#;

const CLIFF_DNA: &str = r#"{
  "system_id": "bench-cliff",
  "genes": {
    "x": {"type": "float", "value": 10.0, "min": 0.0, "max": 100.0, "max_step": 5.0},
    "y": {"type": "float", "value": 10.0, "min": 0.0, "max": 100.0, "max_step": 5.0}
  }
}"#;

/// Multiplicative measurement noise from a seeded stream.
#[derive(Debug)]
struct Noise {
    relative: f64,
    rng: Mutex<ChaCha8Rng>,
}

/// A simulated system: a gene schema, a starting point and a landscape to evaluate.
#[derive(Debug)]
pub struct SimSystem {
    landscape: Landscape,
    system_id: SystemId,
    schema: GeneSchema,
    start: Genes,
    noise: Option<Noise>,
    service: Option<Service>,
}

/// A service whose reports drift with the load of the hour and spike now and then (see
/// [`noisy::NoisyService`]), read off the clock the run keeps.
struct Service {
    noisy: noisy::NoisyService,
    clock: std::sync::Arc<dyn crate::clock::Clock>,
    rng: Mutex<ChaCha8Rng>,
}

impl fmt::Debug for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Service")
            .field("noisy", &self.noisy)
            .finish_non_exhaustive()
    }
}

impl SimSystem {
    pub fn landscape(&self) -> Landscape {
        self.landscape
    }

    pub fn system_id(&self) -> &SystemId {
        &self.system_id
    }

    pub fn schema(&self) -> &GeneSchema {
        &self.schema
    }

    pub fn start(&self) -> &Genes {
        &self.start
    }

    /// The DNA as `(system id, schema, starting genes)`.
    pub fn dna(&self) -> (SystemId, GeneSchema, Genes) {
        (
            self.system_id.clone(),
            self.schema.clone(),
            self.start.clone(),
        )
    }

    /// Creates this system at generation 0 in the store behind `deps`, measured once per
    /// generation: a simulated measurement is exact or carries seeded noise, so further samples
    /// would add cost and no information.
    pub async fn init_in(&self, deps: &Deps, bus: &dyn Bus) -> Result<(), InitError> {
        let settings = SystemSettings {
            samples_required: 1,
            ..SystemSettings::default()
        };
        self.init_with(deps, bus, settings).await
    }

    /// Creates this system at generation 0 with `settings`.
    pub async fn init_with(
        &self,
        deps: &Deps,
        bus: &dyn Bus,
        settings: SystemSettings,
    ) -> Result<(), InitError> {
        let (system_id, schema, genes) = self.dna();
        init_system(deps, bus, &system_id, schema, genes, settings).await
    }

    /// The DNA as a DNA file, as `evolve init --dna FILE` reads it.
    pub fn dna_json(&self) -> String {
        let file = DnaFile::from_parts(&self.system_id, &self.schema, &self.start);
        serde_json::to_string_pretty(&file).unwrap_or_default()
    }

    /// Adds measurement noise: each score is multiplied by `1 + relative * z`, with `z` roughly
    /// standard normal drawn from a stream seeded by `seed`.
    #[must_use]
    pub fn with_noise(mut self, seed: u64, relative: f64) -> Self {
        self.noise = Some(Noise {
            relative: relative.abs(),
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
        });
        self
    }

    /// Starts from other genes (benchmarks vary the start per seed).
    #[must_use]
    pub fn with_start(mut self, start: Genes) -> Self {
        self.start = start;
        self
    }

    /// Moves each non-frozen numeric gene of the start by up to half its max_step, drawn from
    /// `seed`, so a benchmark over many seeds does not hinge on one trajectory.
    #[must_use]
    pub fn with_jittered_start(mut self, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_5eed_5eed_5eed);
        for (name, def) in &self.schema {
            if def.frozen {
                continue;
            }
            let (Some((lo, hi)), Some(x)) = (
                def.spec.range(),
                self.start.get(name).and_then(GeneValue::as_f64),
            ) else {
                continue;
            };
            let reach = def.spec.max_step().unwrap_or((hi - lo) / 8.0) * 0.5;
            let shift: f64 = rng.random_range(-1.0..=1.0) * reach;
            let moved = (x + shift).clamp(lo, hi);
            let value = match def.spec {
                GeneSpec::Int { .. } => GeneValue::Int(moved.round() as i64),
                _ => GeneValue::Float(moved),
            };
            self.start.insert(name.clone(), value);
        }
        self
    }

    /// Measures through a noisy service: the score drifts with the time of day on `clock` and
    /// falls in spikes, when latency (`p99_ms`) multiplies.
    #[must_use]
    pub fn with_service(
        mut self,
        noisy: noisy::NoisyService,
        clock: std::sync::Arc<dyn crate::clock::Clock>,
        seed: u64,
    ) -> Self {
        self.service = Some(Service {
            noisy,
            clock,
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
        });
        self
    }

    /// The settings the noisy demo judges by: three samples a window, a canary on a fifth of
    /// the instances baked for five minutes, and guardrails on latency and errors.
    pub fn judged_settings() -> SystemSettings {
        let rails = [
            "p99_ms <= 90",
            "p99_ms <= parent * 1.6",
            "error_rate <= 0.2",
        ];
        SystemSettings {
            samples_required: 3,
            constraints: Box::new(crate::domain::Constraints {
                guardrails: rails
                    .iter()
                    .filter_map(|r| crate::domain::Guardrail::parse(r).ok())
                    .collect(),
                canary_share: Some(0.2),
                canary_bake_seconds: Some(300),
                ..crate::domain::Constraints::default()
            }),
            ..SystemSettings::default()
        }
    }

    /// Measures `genes` once.
    pub fn measure(&self, genes: &Genes) -> Result<FitnessScore, EvalError> {
        let (mut score, mut metrics) = match self.landscape {
            Landscape::Demo => demo_fitness(genes)?,
            Landscape::Interacting => interacting_fitness(genes)?,
            Landscape::Rosenbrock4 => rosenbrock_fitness(genes)?,
            Landscape::Cliff => cliff_fitness(genes)?,
        };
        if let Some(service) = &self.service {
            let mut rng = service
                .rng
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let at_s = f64::from(chrono::Timelike::num_seconds_from_midnight(
                &service.clock.now(),
            ));
            let (value, spiked) = service.noisy.sample(score, at_s, &mut *rng);
            score = value;
            if spiked {
                if let Some(p99) = metrics.get_mut("p99_ms") {
                    *p99 *= service.noisy.spike_factor;
                }
            }
        }
        let score = match &self.noise {
            Some(noise) => {
                let mut rng = noise
                    .rng
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                // Irwin-Hall: the sum of 12 uniforms minus 6 is close to a standard normal.
                let z: f64 = (0..12).map(|_| rng.random::<f64>()).sum::<f64>() - 6.0;
                score + noise.relative * score.abs() * z
            }
            None => score,
        };
        let metrics = metrics
            .into_iter()
            .filter_map(|(name, value)| MetricName::parse(name).ok().map(|n| (n, value)))
            .collect();
        Ok(FitnessScore { score, metrics })
    }
}

#[async_trait]
impl Evaluator for SimSystem {
    async fn evaluate(&self, genes: &Genes) -> Result<FitnessScore, EvalError> {
        self.measure(genes)
    }
}

type Measured = (f64, BTreeMap<&'static str, f64>);

fn num(genes: &Genes, name: &str) -> Result<f64, EvalError> {
    genes
        .get(name)
        .and_then(GeneValue::as_f64)
        .ok_or_else(|| EvalError::Workload(format!("gene {name} is missing or not numeric")))
}

fn flag(genes: &Genes, name: &str) -> Result<bool, EvalError> {
    match genes.get(name) {
        Some(GeneValue::Bool(b)) => Ok(*b),
        _ => Err(EvalError::Workload(format!(
            "gene {name} is missing or not a bool"
        ))),
    }
}

fn choice<'a>(genes: &'a Genes, name: &str) -> Result<&'a str, EvalError> {
    match genes.get(name) {
        Some(GeneValue::Choice(c)) => Ok(c.as_str()),
        _ => Err(EvalError::Workload(format!(
            "gene {name} is missing or not a choice"
        ))),
    }
}

fn demo_fitness(genes: &Genes) -> Result<Measured, EvalError> {
    let threads = num(genes, "worker_threads")?;
    let batch = num(genes, "batch_size")?;
    let cache = num(genes, "cache_size_mb")?;
    let timeout = num(genes, "timeout_s")?;
    let compression = choice(genes, "compression")?;
    let prefetch = flag(genes, "prefetch")?;

    let buffers = match compression {
        "zstd" => 96.0,
        "lz4" => 48.0,
        _ => 0.0,
    };
    let memory = 256.0 + threads * batch + cache + buffers;
    if memory > DEMO_MEMORY_MB {
        return Err(EvalError::Workload(format!(
            "out of memory: {memory:.0} MB needed, {DEMO_MEMORY_MB:.0} MB available"
        )));
    }
    // Contention: useful parallelism peaks at 24 threads.
    let parallel = threads / (1.0 + (threads / 24.0).powi(2));
    let amortised = batch / (batch + 12.0);
    let mut hit = 0.9 * (1.0 - (-cache / 1024.0).exp());
    if prefetch {
        hit = if cache >= 1024.0 {
            hit + 0.05
        } else {
            hit - 0.02
        };
    }
    let hit = hit.clamp(0.0, 0.99);
    let service = 1.0 / (0.2 * hit + (1.0 - hit));
    let codec = match compression {
        "lz4" => 1.10,
        "zstd" if threads <= 16.0 => 1.18,
        "zstd" => 1.02,
        _ => 1.0,
    };
    let throughput = 40.0 * parallel * amortised * service * codec;
    let p99_ms = 15.0 + 1.5 * batch + 40.0 * (1.0 - hit) + 0.02 * (threads - 16.0).max(0.0).powi(2);
    let error_rate = 0.5 * (-(timeout * 1000.0) / (1.5 * p99_ms)).exp() + 0.001;
    let held = (1.0 - timeout / 20.0).max(0.0);
    let score = throughput * (1.0 - error_rate) * held;
    let metrics = BTreeMap::from([
        ("throughput_rps", throughput),
        ("p99_ms", p99_ms),
        ("error_rate", error_rate),
        ("memory_mb", memory),
        ("cache_hit_ratio", hit),
    ]);
    Ok((score, metrics))
}

fn interacting_fitness(genes: &Genes) -> Result<Measured, EvalError> {
    let a = num(genes, "a")?;
    let b = num(genes, "b")?;
    let c = num(genes, "c")?;
    let boost = flag(genes, "boost")?;
    let bonus = if boost { 1.5 * (a - 5.0) } else { 0.0 };
    let score =
        100.0 - (a - 7.0).powi(2) - 2.0 * (b - (10.0 - a)).powi(2) - 0.05 * (c - 4.0 * b).powi(2)
            + bonus;
    Ok((score, BTreeMap::from([("boost_bonus", bonus)])))
}

fn rosenbrock_fitness(genes: &Genes) -> Result<Measured, EvalError> {
    let x = [
        num(genes, "x1")?,
        num(genes, "x2")?,
        num(genes, "x3")?,
        num(genes, "x4")?,
    ];
    let value: f64 = x
        .windows(2)
        .map(|w| 100.0 * (w[1] - w[0] * w[0]).powi(2) + (1.0 - w[0]).powi(2))
        .sum();
    Ok((-value, BTreeMap::from([("rosenbrock", value)])))
}

/// Where the cliff's workload fails: x + y above this.
pub const CLIFF_EDGE: f64 = 120.0;

fn cliff_fitness(genes: &Genes) -> Result<Measured, EvalError> {
    let x = num(genes, "x")?;
    let y = num(genes, "y")?;
    let load = x + y;
    if load > CLIFF_EDGE {
        return Err(EvalError::Workload(format!(
            "overload: x + y = {load:.2} is past {CLIFF_EDGE}"
        )));
    }
    let score = 2.0 * x + y - 0.01 * (x - y).powi(2);
    Ok((score, BTreeMap::from([("load", load)])))
}

#[cfg(test)]
mod tests;
