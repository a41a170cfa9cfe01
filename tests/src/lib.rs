//! Support code shared by the integration and end-to-end tests of the evolution suite.

pub mod bedrock_stub;
pub mod bins;
pub mod evaluators;
pub mod fault_proxy;
pub mod moto;
