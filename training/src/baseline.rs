//! A rule-based baseline in the manner of LiteLLM's and Bifrost's complexity routers: a score
//! from prompt length, code presence, reasoning and technical keywords, multi-step structure and
//! simple-question markers, mapped to a tier; plus a rule for references to missing material.
//! The learned model must beat it clearly on the same sets.

use triage::classifier::Tier;

const REASONING: &[&str] = &[
    "prove",
    "proof",
    "derive",
    "step by step",
    "analyze",
    "analyse",
    "trade-off",
    "tradeoff",
    "optimize",
    "optimise",
    "design",
    "architecture",
    "algorithm",
    "complexity",
    "evaluate",
    "compare",
    "reason",
    "theorem",
    "lemma",
    "rigorous",
    "justify",
];
const TECHNICAL: &[&str] = &[
    "distributed",
    "concurrency",
    "kubernetes",
    "database",
    "latency",
    "throughput",
    "integral",
    "matrix",
    "eigen",
    "probability",
    "polynomial",
    "regression",
    "compiler",
    "kernel",
    "cryptograph",
    "quantum",
    "differential",
    "asymptotic",
    "microservice",
    "consensus",
];
const SIMPLE: &[&str] = &[
    "what is",
    "what's",
    "who is",
    "who was",
    "when did",
    "when was",
    "where is",
    "define",
    "definition",
    "capital of",
    "translate",
    "how many",
    "hello",
    "hi ",
    "thanks",
    "meaning of",
];
const MULTI_STEP: &[&str] = &[
    "first",
    "then",
    "finally",
    "after that",
    "next,",
    "1.",
    "2.",
    "3.",
];
const MISSING: &[&str] = &[
    "attached",
    "this code",
    "this bug",
    "this error",
    "the file",
    "above",
    "below",
    "previous",
    "the document",
    "this document",
    "the image",
    "the chart",
    "the figure",
    "my code",
    "fix it",
    "fix this",
    "make it better",
    "the following",
];

fn count(text: &str, words: &[&str]) -> usize {
    words.iter().filter(|w| text.contains(*w)).count()
}

fn has_code(text: &str) -> bool {
    text.contains("```")
        || [
            "def ",
            "fn ",
            "function ",
            "class ",
            "#include",
            "select ",
            "=>",
            "};",
            "();",
        ]
        .iter()
        .any(|w| text.contains(w))
}

/// The baseline's tier for a prompt.
pub fn classify(text: &str) -> Tier {
    let lower = text.to_lowercase();
    let words = lower.split_whitespace().count();
    let code = has_code(&lower);
    if words <= 25 && !code && count(&lower, MISSING) > 0 {
        return Tier::NeedsInfo;
    }
    let mut score: i32 = 0;
    score += match words {
        0..=12 => -1,
        13..=60 => 0,
        61..=200 => 1,
        _ => 2,
    };
    if code {
        score += 1;
    }
    score += 2 * count(&lower, REASONING).min(2) as i32;
    score += count(&lower, TECHNICAL).min(2) as i32;
    score += count(&lower, MULTI_STEP).min(2) as i32;
    score -= 2 * count(&lower, SIMPLE).min(1) as i32;
    match score {
        i32::MIN..=0 => Tier::Easy,
        1..=3 => Tier::Medium,
        _ => Tier::Hard,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_obvious_prompts() {
        assert_eq!(classify("What is the capital of France?"), Tier::Easy);
        assert_eq!(classify("fix this bug"), Tier::NeedsInfo);
        assert_eq!(
            classify("Prove rigorously that the algorithm's complexity is optimal, and analyze the trade-offs of a distributed design."),
            Tier::Hard
        );
    }
}
