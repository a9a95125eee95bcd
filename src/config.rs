//! Configuration: built-in defaults, then a TOML file, then `TRIAGE_*` environment variables.
