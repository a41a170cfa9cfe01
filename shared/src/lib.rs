//! The evolution suite's shared crate: domain, ports, stages, pipeline, local engine, adapters.

pub mod bus;
pub mod clock;
pub mod consumer;
pub mod cost;
pub mod domain;
pub mod engine;
pub mod evaluator;
pub mod lambda;
pub mod llm;
pub mod local;
pub mod notify;
pub mod pipeline;
pub mod security;
#[cfg(feature = "sqlite")]
pub mod sim;
pub mod stages;
pub mod stats;
pub mod store;
pub mod telemetry;
pub mod topology;
#[cfg(feature = "bedrock")]
pub mod worker;
