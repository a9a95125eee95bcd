//! Model prices, for counting cost in the gateway and estimating savings in batch reports.
