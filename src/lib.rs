//! triage: a local prompt-difficulty router and LLM gateway.
//!
//! A small transformer labels each prompt `easy`, `medium`, `hard` or `needs_info`
//! ([`classifier`]); a policy maps the label to a model; a gateway delivers the request to that
//! model's provider.

pub mod batch;
pub mod classifier;
pub mod config;
pub mod gateway;
pub mod policy;
pub mod pricing;
pub mod request_log;
pub mod server;
