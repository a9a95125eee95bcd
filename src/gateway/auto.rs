//! `auto` routing: the classifier worker and the tier policy behind the gateway's
//! [`TierChooser`]. Classification that fails or misses its deadline fails open to the
//! family's `unclassified` model.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::{BoxFuture, FutureExt};

use super::handler::{TierChoice, TierChooser};
use super::types::ChatRequest;
use crate::classifier::tokenize::Prompt;
use crate::classifier::worker::{ClassifierWorker, WorkerError};
use crate::policy::{Mode, TierPolicy};

/// Classifier + policy, for `model: "auto[:mode]"`.
#[derive(Clone)]
pub struct PolicyChooser {
    pub worker: ClassifierWorker,
    pub policy: Arc<TierPolicy>,
    /// Longest wait for the classifier before failing open.
    pub deadline: Option<Duration>,
}

/// The classifier's view of a chat request: its messages, or all its text.
pub fn prompt_of(req: &ChatRequest) -> Prompt {
    serde_json::to_value(&req.messages)
        .ok()
        .and_then(|m| {
            crate::classifier::input::prompt_from_json(&serde_json::json!({ "messages": m })).ok()
        })
        .unwrap_or_else(|| Prompt::text(req.prompt_text()))
}

/// Logs a fail-open at most once a second, with how many went unlogged since: under overload
/// every request fails open, and a line each would cost more than the routing.
fn warn_fail_open(error: &WorkerError) {
    static LAST_SECOND: AtomicU64 = AtomicU64::new(0);
    static SUPPRESSED: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let last = LAST_SECOND.load(Ordering::Relaxed);
    if now > last
        && LAST_SECOND
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        let suppressed = SUPPRESSED.swap(0, Ordering::Relaxed);
        tracing::warn!(
            error = %error,
            also_failed_open_since_last_warning = suppressed,
            "auto routing fails open to the unclassified model"
        );
    } else {
        SUPPRESSED.fetch_add(1, Ordering::Relaxed);
    }
}

impl TierChooser for PolicyChooser {
    fn choose<'a>(
        &'a self,
        req: &'a ChatRequest,
        mode: &'a str,
    ) -> BoxFuture<'a, Result<TierChoice, String>> {
        async move {
            let mode = Mode::from_str(mode).map_err(|e| e.to_string())?;
            let classify = self.worker.classify(prompt_of(req));
            let outcome = match self.deadline {
                Some(d) => tokio::time::timeout(d, classify).await.unwrap_or_else(|_| {
                    Err(WorkerError::Classifier(format!(
                        "no prediction within {} ms",
                        d.as_millis()
                    )))
                }),
                None => classify.await,
            };
            let prediction = match outcome {
                Ok(p) => Some(p),
                Err(e) => {
                    warn_fail_open(&e);
                    None
                }
            };
            let choice = match &prediction {
                Some(p) => {
                    self.policy
                        .choose(Some(p.tier), Some(&p.probabilities), mode, None, None)
                }
                None => self.policy.choose(None, None, mode, None, None),
            }
            .map_err(|e| e.to_string())?;
            Ok(TierChoice {
                tier: choice
                    .routed_tier
                    .map(|t| t.as_str().to_string())
                    .unwrap_or_else(|| "unclassified".to_string()),
                model: choice.model,
            })
        }
        .boxed()
    }
}
