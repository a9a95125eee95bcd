//! Prometheus metrics, kept in memory and written in the text exposition format by hand.
//!
//! Label values come from a fixed set (route templates, tiers, configured model names), so
//! the number of series stays bounded whatever clients send.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::classifier::worker::BatchReport;
use crate::classifier::Tier;
use crate::request_log::RequestLogCounters;

/// A cumulative histogram with fixed upper bounds.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    state: Mutex<HistogramState>,
}

#[derive(Debug, Default, Clone)]
struct HistogramState {
    /// Observations at or below each bound (not cumulative; summed when written).
    counts: Vec<u64>,
    count: u64,
    sum: f64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            state: Mutex::new(HistogramState {
                counts: vec![0; bounds.len()],
                ..HistogramState::default()
            }),
        }
    }

    pub fn observe(&self, value: f64) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = self.bounds.iter().position(|&b| value <= b) {
            s.counts[i] += 1;
        }
        s.count += 1;
        s.sum += value;
    }

    /// Observations so far, and their sum.
    pub fn count_and_sum(&self) -> (u64, f64) {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        (s.count, s.sum)
    }

    fn write(&self, out: &mut String, name: &str, help: &str) {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, n) in self.bounds.iter().zip(&s.counts) {
            cumulative += n;
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", s.count);
        let _ = writeln!(out, "{name}_sum {}", s.sum);
        let _ = writeln!(out, "{name}_count {}", s.count);
    }
}

const LATENCY_BOUNDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const BATCH_BOUNDS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];

/// Why a select-model request got the `unclassified` model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FailOpenReason {
    Deadline,
    ClassifierError,
}

impl FailOpenReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FailOpenReason::Deadline => "deadline",
            FailOpenReason::ClassifierError => "classifier_error",
        }
    }
}

/// Everything `/metrics` reports.
#[derive(Debug)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    /// Per request: queue wait plus inference.
    pub classification_seconds: Histogram,
    /// Per batch: time in the model.
    pub inference_seconds: Histogram,
    pub batch_size: Histogram,
    batch_failures: AtomicU64,
    tiers: [AtomicU64; 4],
    fail_open: Mutex<BTreeMap<FailOpenReason, u64>>,
    queue_rejections: AtomicU64,
    models: Mutex<BTreeMap<String, u64>>,
    /// The request log's written, dropped and failed lines (zero when it is off).
    pub request_log: Arc<RequestLogCounters>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: Mutex::default(),
            classification_seconds: Histogram::new(LATENCY_BOUNDS),
            inference_seconds: Histogram::new(LATENCY_BOUNDS),
            batch_size: Histogram::new(BATCH_BOUNDS),
            batch_failures: AtomicU64::new(0),
            tiers: Default::default(),
            fail_open: Mutex::default(),
            queue_rejections: AtomicU64::new(0),
            models: Mutex::default(),
            request_log: Arc::default(),
        }
    }
}

/// Gauges read when `/metrics` is written.
#[derive(Debug, Clone, Copy)]
pub struct Gauges {
    pub queue_depth: usize,
    pub queue_capacity: usize,
}

impl Metrics {
    /// One HTTP request answered; `endpoint` is the route template (or `unmatched`).
    pub fn record_request(&self, endpoint: &str, status: u16) {
        let mut map = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        *map.entry((endpoint.to_string(), status)).or_default() += 1;
    }

    /// One batch through the model.
    pub fn record_batch(&self, report: BatchReport) {
        self.batch_size.observe(report.size as f64);
        self.inference_seconds
            .observe(report.inference.as_secs_f64());
        if report.failed {
            self.batch_failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// One prompt classified, `waited` after it was queued.
    pub fn record_classification(&self, tier: Tier, waited: Duration) {
        self.classification_seconds.observe(waited.as_secs_f64());
        self.tiers[tier.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_fail_open(&self, reason: FailOpenReason) {
        let mut map = self.fail_open.lock().unwrap_or_else(|p| p.into_inner());
        *map.entry(reason).or_default() += 1;
    }

    pub fn record_queue_rejection(&self) {
        self.queue_rejections.fetch_add(1, Ordering::Relaxed);
    }

    /// A model chosen by the policy (names come from configuration, so they are bounded).
    pub fn record_model(&self, model: &str) {
        let mut map = self.models.lock().unwrap_or_else(|p| p.into_inner());
        *map.entry(model.to_string()).or_default() += 1;
    }

    /// The Prometheus text exposition.
    pub fn render(&self, gauges: Gauges) -> String {
        let mut out = String::with_capacity(4096);
        header(
            &mut out,
            "triage_http_requests_total",
            "HTTP requests by endpoint and status.",
            "counter",
        );
        for ((endpoint, status), n) in self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "triage_http_requests_total{{endpoint=\"{}\",status=\"{status}\"}} {n}",
                escape(endpoint)
            );
        }
        self.classification_seconds.write(
            &mut out,
            "triage_classification_duration_seconds",
            "Time from queueing a prompt to its prediction (queue wait and inference).",
        );
        self.inference_seconds.write(
            &mut out,
            "triage_inference_duration_seconds",
            "Time the model took per batch.",
        );
        self.batch_size.write(
            &mut out,
            "triage_batch_size",
            "Prompts classified together per batch.",
        );
        header(
            &mut out,
            "triage_batch_failures_total",
            "Batches the model failed on.",
            "counter",
        );
        let _ = writeln!(
            out,
            "triage_batch_failures_total {}",
            self.batch_failures.load(Ordering::Relaxed)
        );
        header(
            &mut out,
            "triage_queue_depth",
            "Prompts waiting for the classifier.",
            "gauge",
        );
        let _ = writeln!(out, "triage_queue_depth {}", gauges.queue_depth);
        header(
            &mut out,
            "triage_queue_capacity",
            "Most prompts that may wait for the classifier.",
            "gauge",
        );
        let _ = writeln!(out, "triage_queue_capacity {}", gauges.queue_capacity);
        header(
            &mut out,
            "triage_queue_rejections_total",
            "Requests refused with 429 because the queue was full.",
            "counter",
        );
        let _ = writeln!(
            out,
            "triage_queue_rejections_total {}",
            self.queue_rejections.load(Ordering::Relaxed)
        );
        header(
            &mut out,
            "triage_tier_total",
            "Prompts classified, by tier.",
            "counter",
        );
        for tier in Tier::ALL {
            let _ = writeln!(
                out,
                "triage_tier_total{{tier=\"{tier}\"}} {}",
                self.tiers[tier.index()].load(Ordering::Relaxed)
            );
        }
        header(
            &mut out,
            "triage_fail_open_total",
            "Select-model answers given without a classification, by reason.",
            "counter",
        );
        let fail_open = self.fail_open.lock().unwrap_or_else(|p| p.into_inner());
        for reason in [FailOpenReason::Deadline, FailOpenReason::ClassifierError] {
            let _ = writeln!(
                out,
                "triage_fail_open_total{{reason=\"{}\"}} {}",
                reason.as_str(),
                fail_open.get(&reason).copied().unwrap_or(0)
            );
        }
        drop(fail_open);
        header(
            &mut out,
            "triage_model_selected_total",
            "Models chosen by the policy.",
            "counter",
        );
        for (model, n) in self.models.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = writeln!(
                out,
                "triage_model_selected_total{{model=\"{}\"}} {n}",
                escape(model)
            );
        }
        for (name, help, value) in [
            (
                "triage_request_log_written_total",
                "Lines written to the request log.",
                self.request_log.written(),
            ),
            (
                "triage_request_log_dropped_total",
                "Request log entries dropped because the writer's queue was full.",
                self.request_log.dropped(),
            ),
            (
                "triage_request_log_errors_total",
                "Request log lines lost to write errors.",
                self.request_log.failed(),
            ),
        ] {
            header(&mut out, name, help, "counter");
            let _ = writeln!(out, "{name} {value}");
        }
        out
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Escapes a label value (backslash, quote, newline).
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::new(BATCH_BOUNDS);
        for v in [1.0, 3.0, 3.0, 500.0] {
            h.observe(v);
        }
        let mut out = String::new();
        h.write(&mut out, "x", "help");
        assert!(out.contains("x_bucket{le=\"1\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"4\"} 3\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"128\"} 3\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 4\n"), "{out}");
        assert!(out.contains("x_count 4\n"), "{out}");
        assert!(out.contains("x_sum 507\n"), "{out}");
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::default();
        m.record_model("a\"b\\c\nd");
        let text = m.render(Gauges {
            queue_depth: 0,
            queue_capacity: 1,
        });
        assert!(text.contains(r#"model="a\"b\\c\nd""#), "{text}");
    }
}
