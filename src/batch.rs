//! Offline classification of request logs and the savings report (`triage batch`).
