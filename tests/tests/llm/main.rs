//! The Bedrock adapter's contract (docs/architecture.md, "The LLM layer"), proven through the real
//! `aws-sdk-bedrockruntime` client against the project's Converse stub, with the in-memory store
//! as ledger and control state and a simulated clock as clock and sleeper:
//!
//! - `roles`: each role turns a structured answer into its typed result, on every output kind;
//! - `healing`: the error table, read off the stub's request log;
//! - `circuit`: the per-model breaker;
//! - `deadline`: the local engine answers within five (virtual) seconds of the first failure, and
//!   a pipeline cycle completes on it;
//! - `batch`: under throttling, one decide request covers a plan's remaining proposals;
//! - `budget`: refusals, the critical reserve, threshold crossings, the paused mode;
//! - `ledger`: the ledger equals an independent recomputation to the nano-USD;
//! - `cache`: the response cache reuses validated answers for identical requests, for nothing;
//! - `checkpoint`: a checkpointed answer is parsed instead of paid for again;
//! - `parser`: no bytes or JSON make the parser panic;
//! - `priority`: under throttling, low-priority calls give way at once, critical ones retry;
//! - `security`: access denied is a security alert, answered locally without another request.

mod batch;
mod budget;
mod cache;
mod catalog;
mod checkpoint;
mod circuit;
mod coherence;
mod deadline;
mod fixture;
mod healing;
mod ledger;
mod parser;
mod priority;
mod requests;
mod roles;
mod security;
