//! The tier -> model policy: pure functions, no I/O.
