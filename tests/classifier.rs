//! The shipped classifier, loaded from `models/triage-v1` as users load it: tokenisation and
//! truncation, batch/single agreement, unmistakable prompts of each tier, conversations, and
//! bad input.

use std::sync::OnceLock;

use candle_core::Device;
use triage::classifier::{
    default_model_dir, Classifier, ClassifierError, Prompt, PromptTokenizer, Tier,
    TruncationConfig, Turn,
};

fn classifier() -> &'static Classifier {
    static C: OnceLock<Classifier> = OnceLock::new();
    C.get_or_init(|| {
        Classifier::load(default_model_dir(), &Device::Cpu).expect("shipped model loads")
    })
}

#[test]
fn short_prompt_is_wrapped_in_special_tokens_and_not_truncated() {
    let c = classifier();
    let enc = c
        .tokenizer()
        .encode(&Prompt::text("What is 17 times 23?"))
        .unwrap();
    assert_eq!(enc.ids.first(), Some(&101), "[CLS] first");
    assert_eq!(enc.ids.last(), Some(&102), "[SEP] last");
    assert!(enc.type_ids.iter().all(|&t| t == 0));
    assert!(!enc.truncated);
    assert!(enc.ids.len() < 16);
}

#[test]
fn line_breaks_are_read_as_one_mark_when_the_model_asks_for_them() {
    let path = default_model_dir().join("tokenizer.json");
    let tokenizer = |mark_line_breaks| {
        let cfg = TruncationConfig {
            mark_line_breaks,
            ..TruncationConfig::default()
        };
        PromptTokenizer::from_file(&path, cfg).unwrap()
    };
    let (marked, plain) = (tokenizer(true), tokenizer(false));
    let ids = |t: &PromptTokenizer, s: &str| t.encode(&Prompt::text(s)).unwrap().ids;
    let with_material = "Rewrite this sentence:\n\n  We found it.\nThanks";
    let run_on = "Rewrite this sentence: We found it. Thanks";
    // Without marks the tokenizer drops the line breaks: the two texts read the same.
    assert_eq!(ids(&plain, with_material), ids(&plain, run_on));
    // With them, each run of line breaks is one token, and nothing else changes.
    let mark = ids(&marked, "\u{b6}")[1];
    let got = ids(&marked, with_material);
    assert_eq!(got.iter().filter(|&&id| id == mark).count(), 2);
    let without: Vec<u32> = got.iter().copied().filter(|&id| id != mark).collect();
    assert_eq!(without, ids(&plain, run_on));
    assert_eq!(ids(&marked, run_on), ids(&plain, run_on));
}

#[test]
fn long_prompt_keeps_head_and_tail_within_budget() {
    let c = classifier();
    let max = c.tokenizer().config().max_tokens;
    let head = c.tokenizer().config().head_tokens;
    let text = format!("alpha {} omega", "filler ".repeat(5_000));
    let enc = c.tokenizer().encode(&Prompt::text(text)).unwrap();
    assert_eq!(enc.ids.len(), max);
    assert!(enc.truncated);
    let pieces = |word: &str| {
        let ids = c.tokenizer().encode(&Prompt::text(word)).unwrap().ids;
        ids[1..ids.len() - 1].to_vec()
    };
    let (alpha, omega, filler) = (pieces("alpha"), pieces("omega"), pieces("filler"));
    assert_eq!(
        &enc.ids[1..1 + alpha.len()],
        alpha.as_slice(),
        "the head is kept"
    );
    assert_eq!(
        &enc.ids[max - 1 - omega.len()..max - 1],
        omega.as_slice(),
        "the tail is kept"
    );
    assert!(enc.ids[1 + alpha.len()..head]
        .iter()
        .all(|id| filler.contains(id)));
}

#[test]
fn conversation_context_is_a_second_segment_and_bounded() {
    let c = classifier();
    let cfg = c.tokenizer().config().clone();
    let history = "The quick brown fox jumps over the lazy dog. ".repeat(200);
    let prompt = Prompt::from_turns(&[
        Turn::new("user", history.clone()),
        Turn::new("assistant", history),
        Turn::new("user", "Now make it shorter."),
    ]);
    let enc = c.tokenizer().encode(&prompt).unwrap();
    assert!(enc.ids.len() <= cfg.max_tokens);
    assert!(enc.truncated);
    let segment_b = enc.type_ids.iter().filter(|&&t| t == 1).count();
    assert!(segment_b > 0 && segment_b <= cfg.max_tokens - 3);
    // Segment A (the last user turn) is whole: "now make it shorter." plus [CLS] and [SEP].
    let own = c
        .tokenizer()
        .encode(&Prompt::text("Now make it shorter."))
        .unwrap();
    assert_eq!(&enc.ids[..own.ids.len()], own.ids.as_slice());
}

#[test]
fn one_megabyte_prompt_is_classified_quickly_and_marked_truncated() {
    let big = "Explain the following log line by line. ".repeat(26_000);
    assert!(big.len() > 1_000_000);
    let p = &classifier().classify(&[big.as_str()]).unwrap()[0];
    assert!(p.truncated);
    assert_eq!(p.tokens, classifier().tokenizer().config().max_tokens);
}

#[test]
fn empty_prompt_is_an_error_not_a_guess() {
    let err = classifier().classify(&["fine", "   \n\t"]).unwrap_err();
    assert!(
        matches!(err, ClassifierError::EmptyPrompt { index: 1 }),
        "{err}"
    );
    assert!(classifier().classify(&[]).unwrap().is_empty());
}

#[test]
fn batch_results_equal_single_results() {
    let texts = [
        "hi",
        "What is the boiling point of water at sea level?",
        "Write a Python function that merges two sorted lists into one sorted list, with tests.",
        "fix this bug",
        "Design a multi-region, strongly consistent key-value store and discuss its trade-offs in latency, availability and cost under network partitions.",
        "Prove that there are infinitely many primes congruent to 3 mod 4.",
        "Summarise the attached file.",
    ];
    let batch = classifier().classify(&texts).unwrap();
    for (text, b) in texts.iter().zip(&batch) {
        let single = &classifier().classify(&[text]).unwrap()[0];
        assert_eq!(single.top_tier, b.top_tier, "{text}");
        for (x, y) in single
            .probabilities
            .to_array()
            .iter()
            .zip(b.probabilities.to_array())
        {
            assert!((x - y).abs() < 1e-4, "{text}: {x} vs {y}");
        }
    }
}

#[test]
fn probabilities_are_calibrated_distributions() {
    for p in classifier()
        .classify(&["hello there", "prove the four colour theorem"])
        .unwrap()
    {
        let sum: f32 = p.probabilities.to_array().iter().sum();
        assert!((sum - 1.0).abs() < 1e-4);
        assert_eq!(p.confidence, p.probabilities.get(p.top_tier));
        assert_eq!(p.confident, p.confidence >= classifier().threshold());
    }
}

#[test]
fn threshold_turns_unsure_answers_into_needs_info() {
    let c = Classifier::load(default_model_dir(), &Device::Cpu)
        .unwrap()
        .with_threshold(1.0);
    let p = &c.classify(&["What is the capital of France?"]).unwrap()[0];
    assert!(!p.confident);
    assert_eq!(p.tier, Tier::NeedsInfo);
    let c = c.with_threshold(0.0);
    let p = &c.classify(&["What is the capital of France?"]).unwrap()[0];
    assert!(p.confident);
    assert_eq!(p.tier, p.top_tier);
}

fn assert_mostly(tier: Tier, prompts: &[&str]) {
    let preds = classifier().classify(prompts).unwrap();
    let misses: Vec<String> = prompts
        .iter()
        .zip(&preds)
        .filter(|(_, p)| p.top_tier != tier)
        .map(|(t, p)| format!("{t:?} -> {} ({:.2})", p.top_tier, p.confidence))
        .collect();
    // A dozen unmistakable prompts: at most one may miss.
    assert!(misses.len() <= 1, "expected {tier}, misses: {misses:#?}");
}

#[test]
fn unmistakable_easy_prompts_are_easy() {
    assert_mostly(
        Tier::Easy,
        &[
            "What is the capital of France?",
            "What does HTTP status 404 mean?",
            "Convert 5 miles to kilometres.",
            "hello!",
            "Who wrote Romeo and Juliet?",
            "Translate 'good morning' into Spanish.",
            "What is the git command to undo the last commit?",
            "How many days are there in a leap year?",
            "Define photosynthesis in one sentence.",
            "What is the chemical symbol for gold?",
            "what year did world war 2 end",
            "Fix the grammar: 'She don't like apples.'",
        ],
    );
}

#[test]
fn unmistakable_medium_prompts_are_medium() {
    assert_mostly(
        Tier::Medium,
        &[
            "Write a Python function that checks whether a string is a palindrome, ignoring case and punctuation, and include unit tests.",
            "A train leaves at 3 pm travelling at 60 mph; a second train leaves the same station at 4 pm at 80 mph on the same track. At what time does the second catch up?",
            "Write a polite email to my landlord asking to fix the heating, mentioning it has been broken for two weeks and that I work from home.",
            "Write a SQL query that returns the top 5 customers by total order value in 2023 from tables customers(id, name) and orders(id, customer_id, amount, created_at).",
            "Explain how TCP congestion control works, covering slow start, congestion avoidance and fast retransmit.",
            "Summarise this paragraph in two sentences: The city council met on Tuesday to discuss the new park. Residents raised concerns about parking and noise, while supporters pointed to the benefits for children and local businesses. The council agreed to commission a traffic study before a final vote next month.",
            "Write a short story of about 300 words about a lighthouse keeper who finds a message in a bottle, told in the first person.",
            "This function should return the sum of even numbers but returns 0. Why, and how do I fix it?\n\ndef sum_even(xs):\n    total = 0\n    for x in xs:\n        if x % 2 == 0:\n            total = x\n    return 0",
            "Refactor this JavaScript to use async/await instead of promise chains:\n\nfetch(url).then(r => r.json()).then(data => { render(data); }).catch(err => console.error(err));",
            "A rectangle's length is three times its width and its perimeter is 48 cm. Find its area.",
            "Write a bash script that backs up /var/www to a dated tar.gz archive and deletes archives older than 7 days.",
            "Compare the causes of the First World War with those of the Second World War in a short essay.",
        ],
    );
}

#[test]
fn unmistakable_hard_prompts_are_hard() {
    assert_mostly(
        Tier::Hard,
        &[
            "Prove that there are infinitely many primes congruent to 3 mod 4.",
            "Let a, b, c be positive reals with abc = 1. Prove that 1/(a^3(b+c)) + 1/(b^3(c+a)) + 1/(c^3(a+b)) >= 3/2.",
            "Design a globally distributed, strongly consistent database for a payments company: replication, consensus, failure handling, and the latency/availability trade-offs across regions.",
            "Our Go service deadlocks under load about once a day. Goroutines block on a mutex held by a goroutine waiting on a channel whose reader is itself waiting for that mutex only when the context is cancelled mid-request. Walk through how to find and fix this class of bug, and how to restructure the locking so it cannot recur.",
            "Find all functions f: R -> R such that f(x + f(y)) = f(x) + y for all real x and y, and prove your answer is complete.",
            "Derive the Black-Scholes partial differential equation from first principles using Itô's lemma and a delta-hedging argument, stating every assumption.",
            "Design a lock-free multi-producer multi-consumer queue in C++ with correct memory orderings, explain why it avoids the ABA problem, and prove linearizability.",
            "Analyse the legal exposure of a European SaaS company that transfers customer personal data to a US sub-processor after Schrems II, and propose a compliance strategy covering SCCs, transfer impact assessments and supplementary measures.",
            "Plan a migration of a 2-million-line monolith to services without downtime: sequencing, data ownership, dual writes, consistency during cut-over, and rollback.",
            "Prove that every planar graph is 5-colourable.",
            "Given an array of n integers, count the number of subarrays whose XOR equals their sum, in O(n log n) or better, and prove the complexity bound.",
            "Find a subtle timing side channel in a constant-time comparison written in Rust that the optimizer may break, explain how LLVM could introduce it, and write a version that resists it.",
        ],
    );
}

#[test]
fn unmistakable_needs_info_prompts_are_needs_info() {
    assert_mostly(
        Tier::NeedsInfo,
        &[
            "fix this bug",
            "Summarise the attached file.",
            "What does the chart in the image show?",
            "Rewrite your previous answer but shorter.",
            "Why does my code crash?",
            "Translate the text below into German.",
            "make it better",
            "asdkjh qwe zxcmnb",
            "Can you check my essay for mistakes?",
            "What's wrong with the config I sent you?",
            "Write an email to [NAME] about [TOPIC].",
            "Continue from where you left off.",
        ],
    );
}

#[test]
fn a_follow_up_with_history_is_not_needs_info() {
    let alone = Prompt::text("Now make it shorter.");
    let with_history = Prompt::from_turns(&[
        Turn::new(
            "user",
            "Write a haiku-length slogan for a bakery that sells sourdough.",
        ),
        Turn::new(
            "assistant",
            "Crackling crust at dawn, slow-risen loaves, our sourdough waits warm for you here.",
        ),
        Turn::new("user", "Now make it shorter."),
    ]);
    let preds = classifier()
        .classify_prompts(&[alone, with_history])
        .unwrap();
    assert_eq!(preds[0].top_tier, Tier::NeedsInfo);
    assert_ne!(preds[1].top_tier, Tier::NeedsInfo);
}
