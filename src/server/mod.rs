//! The HTTP server: routes, state, errors and metrics.
