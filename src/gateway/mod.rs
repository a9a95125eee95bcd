//! The routing gateway: OpenAI-shaped types, provider adapters, retries, failover and streaming.
