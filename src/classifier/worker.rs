//! The batching worker: the model runs on its own thread(s) behind a bounded queue.
//!
//! Each request carries a `oneshot` for its own reply. A worker thread takes the first waiting
//! request, then gathers more for at most `max_wait` (or until `max_batch`), and classifies them
//! together: under load, batches grow and throughput with them; when idle, a lone request
//! waits at most `max_wait`. When the queue is full, [`ClassifierWorker::submit`] fails at once
//! with [`WorkerError::QueueFull`] instead of letting callers wait without bound.
//!
//! The queue is also bounded in time: with `max_queue_wait`, a request whose expected wait
//! (queue depth × the measured model time per prompt ÷ threads) is longer is refused at once
//! with [`WorkerError::Overloaded`]. Under overload, callers that can fail open do so
//! immediately instead of after their deadline, and the requests that are admitted keep a short
//! wait. An admitted request is always classified (unless its caller has gone).
//!
//! Requests whose caller has gone (a deadline passed, the client hung up) are dropped before
//! they reach the model. One bad prompt does not fail its batch: a failed batch is retried
//! prompt by prompt so each caller gets its own answer.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::{Classifier, ClassifierError, Prediction, Prompt};

/// Something that classifies a batch of prompts; the [`Classifier`] in production, a stand-in
/// in tests.
pub trait BatchClassifier: Send + Sync + 'static {
    /// One prediction per prompt, in order.
    fn classify_batch(&self, prompts: &[Prompt]) -> Result<Vec<Prediction>, ClassifierError>;
}

impl BatchClassifier for Classifier {
    fn classify_batch(&self, prompts: &[Prompt]) -> Result<Vec<Prediction>, ClassifierError> {
        self.classify_prompts(prompts)
    }
}

/// How the worker queues and batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerConfig {
    /// Requests that may wait; more are refused with [`WorkerError::QueueFull`].
    pub queue_capacity: usize,
    /// Most prompts in one batch.
    pub max_batch: usize,
    /// Once a worker holds one request, how long it waits for more to fill the batch.
    pub max_wait: Duration,
    /// Threads running the model.
    pub threads: usize,
    /// Longest a request may wait in the queue; `None`: no limit beyond `queue_capacity`.
    pub max_queue_wait: Option<Duration>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            queue_capacity: 256,
            max_batch: 16,
            max_wait: Duration::from_millis(2),
            threads: 1,
            max_queue_wait: Some(Duration::from_millis(50)),
        }
    }
}

/// Why a request got no prediction.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkerError {
    #[error("the classifier queue is full ({capacity} requests waiting)")]
    QueueFull { capacity: usize },
    #[error(
        "the classifier is overloaded: a request would wait about {expected_ms} ms in its queue \
         (limit {limit_ms} ms)"
    )]
    Overloaded { expected_ms: u64, limit_ms: u64 },
    #[error("the classifier worker has stopped")]
    Stopped,
    #[error("classification failed: {0}")]
    Classifier(String),
}

/// What the worker did with one batch; passed to the observer given to
/// [`ClassifierWorker::spawn`] (for metrics).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchReport {
    /// Prompts classified together.
    pub size: usize,
    /// Time spent in the model.
    pub inference: Duration,
    /// Whether the model returned an error for the batch.
    pub failed: bool,
}

/// Called after each batch.
pub type BatchObserver = Arc<dyn Fn(BatchReport) + Send + Sync>;

type Reply = oneshot::Sender<Result<Prediction, WorkerError>>;

struct Job {
    prompt: Prompt,
    reply: Reply,
}

/// A handle to the worker threads; cheap to clone. The threads stop when every handle is gone.
#[derive(Clone)]
pub struct ClassifierWorker {
    sender: SyncSender<Job>,
    depth: Arc<AtomicUsize>,
    capacity: usize,
    /// Smoothed model time per prompt, in nanoseconds (0 until the first batch).
    cost_ns: Arc<AtomicU64>,
    threads: usize,
    max_queue_wait: Option<Duration>,
}

impl std::fmt::Debug for ClassifierWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClassifierWorker")
            .field("queue_depth", &self.queue_depth())
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl ClassifierWorker {
    /// Starts `config.threads` threads (at least one) that classify with `model`.
    pub fn spawn(
        model: Arc<dyn BatchClassifier>,
        config: WorkerConfig,
        observer: Option<BatchObserver>,
    ) -> std::io::Result<Self> {
        let capacity = config.queue_capacity.max(1);
        let (sender, receiver) = mpsc::sync_channel::<Job>(capacity);
        let receiver = Arc::new(Mutex::new(receiver));
        let depth = Arc::new(AtomicUsize::new(0));
        let cost_ns = Arc::new(AtomicU64::new(0));
        let threads = config.threads.max(1);
        for i in 0..threads {
            let model = Arc::clone(&model);
            let shared = Shared {
                receiver: Arc::clone(&receiver),
                depth: Arc::clone(&depth),
                cost_ns: Arc::clone(&cost_ns),
            };
            let observer = observer.clone();
            std::thread::Builder::new()
                .name(format!("triage-classifier-{i}"))
                .spawn(move || run(&*model, &shared, config, observer.as_deref()))?;
        }
        Ok(Self {
            sender,
            depth,
            capacity,
            cost_ns,
            threads,
            max_queue_wait: config.max_queue_wait,
        })
    }

    /// Queues `prompt`; the receiver gets its prediction. Fails at once when the queue is full
    /// or the request would wait longer than `max_queue_wait`.
    pub fn submit(
        &self,
        prompt: Prompt,
    ) -> Result<oneshot::Receiver<Result<Prediction, WorkerError>>, WorkerError> {
        if let Some(limit) = self.max_queue_wait {
            let expected = self.expected_wait();
            if expected > limit {
                return Err(WorkerError::Overloaded {
                    expected_ms: expected.as_millis() as u64,
                    limit_ms: limit.as_millis() as u64,
                });
            }
        }
        let (reply, receiver) = oneshot::channel();
        // Counted before sending, so a worker never sees the depth go below zero.
        self.depth.fetch_add(1, Ordering::SeqCst);
        match self.sender.try_send(Job { prompt, reply }) {
            Ok(()) => Ok(receiver),
            Err(e) => {
                self.depth.fetch_sub(1, Ordering::SeqCst);
                Err(match e {
                    TrySendError::Full(_) => WorkerError::QueueFull {
                        capacity: self.capacity,
                    },
                    TrySendError::Disconnected(_) => WorkerError::Stopped,
                })
            }
        }
    }

    /// Queues `prompt` and waits for its prediction.
    pub async fn classify(&self, prompt: Prompt) -> Result<Prediction, WorkerError> {
        let receiver = self.submit(prompt)?;
        receiver.await.unwrap_or(Err(WorkerError::Stopped))
    }

    /// Requests queued and not yet taken by a worker thread.
    pub fn queue_depth(&self) -> usize {
        self.depth.load(Ordering::SeqCst)
    }

    /// Most requests the queue holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How long a request queued now would wait before a worker takes it, from the queue depth
    /// and the smoothed model time per prompt (zero before the first batch).
    pub fn expected_wait(&self) -> Duration {
        let cost = self.cost_ns.load(Ordering::Relaxed);
        let depth = self.queue_depth() as u64;
        Duration::from_nanos(depth.saturating_mul(cost) / self.threads as u64)
    }
}

/// What the worker threads share.
struct Shared {
    receiver: Arc<Mutex<Receiver<Job>>>,
    depth: Arc<AtomicUsize>,
    cost_ns: Arc<AtomicU64>,
}

/// Folds one batch's model time per prompt into the smoothed figure (weight 1/4).
fn record_cost(cost_ns: &AtomicU64, inference: Duration, size: usize) {
    let sample = (inference.as_nanos() / size.max(1) as u128).min(u64::MAX as u128) as u64;
    let old = cost_ns.load(Ordering::Relaxed);
    let new = if old == 0 {
        sample
    } else {
        old - old / 4 + sample / 4
    };
    cost_ns.store(new, Ordering::Relaxed);
}

/// One worker thread: gather a batch, classify it, reply; until every handle is dropped.
fn run(
    model: &dyn BatchClassifier,
    shared: &Shared,
    config: WorkerConfig,
    observer: Option<&(dyn Fn(BatchReport) + Send + Sync)>,
) {
    let max_batch = config.max_batch.max(1);
    loop {
        let Some(batch) = gather(&shared.receiver, &shared.depth, max_batch, config.max_wait)
        else {
            return;
        };
        // Callers that gave up (deadline, hung up) need no answer.
        let batch: Vec<Job> = batch.into_iter().filter(|j| !j.reply.is_closed()).collect();
        if batch.is_empty() {
            continue;
        }
        let prompts: Vec<Prompt> = batch.iter().map(|j| j.prompt.clone()).collect();
        let started = Instant::now();
        let result = classify_guarded(model, &prompts);
        let report = BatchReport {
            size: prompts.len(),
            inference: started.elapsed(),
            failed: result.is_err(),
        };
        if !report.failed {
            record_cost(&shared.cost_ns, report.inference, report.size);
        }
        // Reported before replying, so a caller that reads metrics after its answer sees it.
        if let Some(observe) = observer {
            observe(report);
        }
        match result {
            Ok(predictions) => {
                for (job, prediction) in batch.into_iter().zip(predictions) {
                    // The caller may have gone meanwhile; nothing to do then.
                    let _ = job.reply.send(Ok(prediction));
                }
            }
            Err(_) if batch.len() > 1 => {
                // Find which prompt failed: each caller gets its own answer.
                for job in batch {
                    let one = classify_guarded(model, std::slice::from_ref(&job.prompt))
                        .and_then(|mut p| p.pop().ok_or_else(|| "no prediction".to_string()));
                    let _ = job.reply.send(one.map_err(WorkerError::Classifier));
                }
            }
            Err(message) => {
                for job in batch {
                    let _ = job
                        .reply
                        .send(Err(WorkerError::Classifier(message.clone())));
                }
            }
        }
    }
}

/// Waits for one job, then takes more for up to `max_wait`. `None` when every sender is gone.
fn gather(
    receiver: &Mutex<Receiver<Job>>,
    depth: &AtomicUsize,
    max_batch: usize,
    max_wait: Duration,
) -> Option<Vec<Job>> {
    // A poisoned lock only means another worker thread panicked while holding it; the
    // receiver inside is still sound.
    let receiver = receiver.lock().unwrap_or_else(|p| p.into_inner());
    let first = receiver.recv().ok()?;
    depth.fetch_sub(1, Ordering::SeqCst);
    let mut batch = vec![first];
    let until = Instant::now() + max_wait;
    while batch.len() < max_batch {
        let next = match receiver.try_recv() {
            Ok(job) => Some(job),
            Err(_) => {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    None
                } else {
                    // Timed out or every sender gone: the batch is as full as it gets.
                    receiver.recv_timeout(left).ok()
                }
            }
        };
        let Some(job) = next else { break };
        depth.fetch_sub(1, Ordering::SeqCst);
        batch.push(job);
    }
    Some(batch)
}

/// Classifies, turning errors, wrong counts and panics into a message.
fn classify_guarded(
    model: &dyn BatchClassifier,
    prompts: &[Prompt],
) -> Result<Vec<Prediction>, String> {
    match catch_unwind(AssertUnwindSafe(|| model.classify_batch(prompts))) {
        Ok(Ok(p)) if p.len() == prompts.len() => Ok(p),
        Ok(Ok(p)) => Err(format!(
            "the model returned {} predictions for {} prompts",
            p.len(),
            prompts.len()
        )),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("the model panicked".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classifier::{Tier, TierProbabilities};
    use std::sync::atomic::AtomicBool;

    /// Answers `easy` for every prompt; fails prompts whose text is "fail"; panics on "panic".
    /// Records batch sizes. While `hold` is set, a batch waits inside the model, with
    /// `holding` set.
    struct FakeModel {
        sizes: Mutex<Vec<usize>>,
        hold: AtomicBool,
        holding: AtomicBool,
    }

    /// Waits (bounded) until the worker has taken a batch and is blocked in the model, so that
    /// whatever is submitted next stays queued.
    fn wait_until_held(model: &FakeModel) {
        for _ in 0..5000 {
            if model.holding.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        panic!("the worker never entered the model");
    }

    fn prediction() -> Prediction {
        Prediction {
            tier: Tier::Easy,
            top_tier: Tier::Easy,
            confidence: 0.7,
            confident: true,
            probabilities: TierProbabilities::from_array([0.7, 0.1, 0.1, 0.1]),
            tokens: 3,
            truncated: false,
        }
    }

    impl BatchClassifier for FakeModel {
        fn classify_batch(&self, prompts: &[Prompt]) -> Result<Vec<Prediction>, ClassifierError> {
            while self.hold.load(Ordering::SeqCst) {
                self.holding.store(true, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(1));
            }
            self.holding.store(false, Ordering::SeqCst);
            self.sizes.lock().unwrap().push(prompts.len());
            if prompts.iter().any(|p| p.text == "panic") {
                panic!("boom");
            }
            if let Some(index) = prompts.iter().position(|p| p.text == "fail") {
                return Err(ClassifierError::EmptyPrompt { index });
            }
            Ok(prompts.iter().map(|_| prediction()).collect())
        }
    }

    fn fake(hold: bool) -> Arc<FakeModel> {
        Arc::new(FakeModel {
            sizes: Mutex::new(Vec::new()),
            hold: AtomicBool::new(hold),
            holding: AtomicBool::new(false),
        })
    }

    fn config(capacity: usize) -> WorkerConfig {
        WorkerConfig {
            queue_capacity: capacity,
            max_batch: 8,
            max_wait: Duration::from_millis(1),
            threads: 1,
            max_queue_wait: None,
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn each_request_gets_its_own_reply_and_queued_ones_are_batched() {
        let model = fake(true);
        let worker = ClassifierWorker::spawn(model.clone(), config(64), None).unwrap();
        let first = worker.submit(Prompt::text("a")).unwrap();
        wait_until_held(&model);
        let rest: Vec<_> = (0..5)
            .map(|i| worker.submit(Prompt::text(format!("p{i}"))).unwrap())
            .collect();
        model.hold.store(false, Ordering::SeqCst);
        let rt = runtime();
        assert!(rt.block_on(first).unwrap().is_ok());
        for r in rest {
            assert!(rt.block_on(r).unwrap().is_ok());
        }
        let sizes = model.sizes.lock().unwrap().clone();
        assert_eq!(sizes.iter().sum::<usize>(), 6);
        assert!(
            sizes.iter().any(|&s| s > 1),
            "no batching happened: {sizes:?}"
        );
    }

    #[test]
    fn a_full_queue_refuses_at_once() {
        let model = fake(true);
        let worker = ClassifierWorker::spawn(model.clone(), config(2), None).unwrap();
        let mut accepted = Vec::new();
        let mut refused = 0;
        // The worker may take one job off the queue; so at most capacity + max_batch fit.
        for i in 0..20 {
            match worker.submit(Prompt::text(format!("p{i}"))) {
                Ok(r) => accepted.push(r),
                Err(WorkerError::QueueFull { capacity: 2 }) => refused += 1,
                Err(e) => panic!("unexpected {e}"),
            }
        }
        assert!(refused > 0);
        assert!(accepted.len() <= 2 + 8);
        model.hold.store(false, Ordering::SeqCst);
        let rt = runtime();
        for r in accepted {
            assert!(rt.block_on(r).unwrap().is_ok());
        }
    }

    #[test]
    fn one_bad_prompt_does_not_fail_its_batch_and_panics_are_contained() {
        let model = fake(true);
        let worker = ClassifierWorker::spawn(model.clone(), config(64), None).unwrap();
        let good = worker.submit(Prompt::text("good")).unwrap();
        let bad = worker.submit(Prompt::text("fail")).unwrap();
        let boom = worker.submit(Prompt::text("panic")).unwrap();
        model.hold.store(false, Ordering::SeqCst);
        let rt = runtime();
        assert!(rt.block_on(good).unwrap().is_ok());
        assert!(matches!(
            rt.block_on(bad).unwrap(),
            Err(WorkerError::Classifier(_))
        ));
        assert!(matches!(
            rt.block_on(boom).unwrap(),
            Err(WorkerError::Classifier(_))
        ));
        // The thread survived the panic.
        assert!(rt.block_on(worker.classify(Prompt::text("after"))).is_ok());
    }

    #[test]
    fn a_queue_expected_to_wait_too_long_refuses_at_once() {
        let model = fake(false);
        let mut cfg = config(64);
        cfg.max_queue_wait = Some(Duration::from_millis(5));
        let worker = ClassifierWorker::spawn(model.clone(), cfg, None).unwrap();
        // Teach the worker a model time far above the limit.
        record_cost(&worker.cost_ns, Duration::from_millis(50), 1);
        model.hold.store(true, Ordering::SeqCst);
        let rt = runtime();
        let first = worker.submit(Prompt::text("first")).unwrap();
        wait_until_held(&model);
        // The queue is empty, so one more is admitted; behind it the wait would be ~50 ms.
        let second = worker.submit(Prompt::text("second")).unwrap();
        match worker.submit(Prompt::text("third")) {
            Err(WorkerError::Overloaded {
                expected_ms,
                limit_ms: 5,
            }) => assert!(expected_ms >= 40, "{expected_ms}"),
            other => panic!("expected Overloaded, got {:?}", other.map(|_| ())),
        }
        assert!(worker.expected_wait() >= Duration::from_millis(40));
        model.hold.store(false, Ordering::SeqCst);
        assert!(rt.block_on(first).unwrap().is_ok());
        // Admitted requests are classified, however long they end up waiting.
        assert!(rt.block_on(second).unwrap().is_ok());
    }

    #[test]
    fn the_cost_estimate_is_smoothed() {
        let cost = AtomicU64::new(0);
        record_cost(&cost, Duration::from_millis(8), 4);
        assert_eq!(cost.load(Ordering::SeqCst), 2_000_000);
        record_cost(&cost, Duration::from_millis(6), 1);
        assert_eq!(cost.load(Ordering::SeqCst), 3_000_000);
    }
}
