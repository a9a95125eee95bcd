//! The tier -> model policy: pure functions, no I/O.
//!
//! A [`TierPolicy`] holds one [`TierModels`] table per provider family (`anthropic`, `openai`,
//! `gemini`, plus any the configuration adds) and turns a classifier's answer into a model name
//! with [`TierPolicy::choose`]. The [`Mode`] decides what to do when the classifier is unsure:
//!
//! - `balanced`: the model of the classified tier (the cheapest adequate one).
//! - `aggressive`: lean toward capability: one tier up (easy -> medium -> hard) when the
//!   classified tier's probability is below [`TierPolicy::uncertain_below`].
//! - `cost`: lean toward savings: one tier down (hard -> medium -> easy) when unsure, and
//!   `needs_info` prompts (whose best reply is a clarifying question) go to the easy model.
//!
//! With no tier at all (the classifier failed open), the family's `unclassified` model answers.

use std::fmt;
use std::str::FromStr;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use crate::classifier::{Tier, TierProbabilities};

/// How to lean when the classifier is unsure.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The cheapest adequate model: the classified tier's.
    #[default]
    Balanced,
    /// Lean toward capability: one tier up when unsure.
    Aggressive,
    /// Lean toward savings: one tier down when unsure.
    Cost,
}

impl Mode {
    pub const ALL: [Mode; 3] = [Mode::Balanced, Mode::Aggressive, Mode::Cost];

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Balanced => "balanced",
            Mode::Aggressive => "aggressive",
            Mode::Cost => "cost",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = PolicyError;

    /// Parses `balanced`, `aggressive` or `cost` (case-insensitive, surrounding spaces ignored).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "balanced" => Ok(Mode::Balanced),
            "aggressive" => Ok(Mode::Aggressive),
            "cost" => Ok(Mode::Cost),
            _ => Err(PolicyError::UnknownMode(s.to_string())),
        }
    }
}

/// Errors from choosing a model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("unknown mode {0:?} (expected balanced, aggressive or cost)")]
    UnknownMode(String),
    #[error("unknown provider family {family:?} (known: {})", known.join(", "))]
    UnknownFamily { family: String, known: Vec<String> },
    #[error("none of allowed_models [{}] is a model of {}", allowed.join(", "), families.join(", "))]
    NoAllowedModel {
        allowed: Vec<String>,
        /// The families that were searched.
        families: Vec<String>,
    },
    #[error("invalid tier table {family:?}: {message}")]
    InvalidTable { family: String, message: String },
}

/// The model for each tier of one provider family.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierModels {
    pub easy: String,
    pub medium: String,
    pub hard: String,
    /// For prompts missing what they need; the reply is usually a clarifying question.
    pub needs_info: String,
    /// When there is no tier: the classifier failed open (deadline, error).
    pub unclassified: String,
}

impl TierModels {
    /// A table whose `needs_info` and `unclassified` models are the medium one.
    pub fn new(easy: &str, medium: &str, hard: &str) -> Self {
        Self {
            easy: easy.into(),
            medium: medium.into(),
            hard: hard.into(),
            needs_info: medium.into(),
            unclassified: medium.into(),
        }
    }

    /// The model for `tier`.
    pub fn model(&self, tier: Tier) -> &str {
        match tier {
            Tier::Easy => &self.easy,
            Tier::Medium => &self.medium,
            Tier::Hard => &self.hard,
            Tier::NeedsInfo => &self.needs_info,
        }
    }

    /// Every model this table names, cheapest tier first, without repeats.
    pub fn models(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::with_capacity(5);
        for m in [
            &self.easy,
            &self.medium,
            &self.hard,
            &self.needs_info,
            &self.unclassified,
        ] {
            if !out.contains(&m.as_str()) {
                out.push(m);
            }
        }
        out
    }

    fn validate(&self, family: &str) -> Result<(), PolicyError> {
        for (key, model) in [
            ("easy", &self.easy),
            ("medium", &self.medium),
            ("hard", &self.hard),
            ("needs_info", &self.needs_info),
            ("unclassified", &self.unclassified),
        ] {
            if model.trim().is_empty() {
                return Err(PolicyError::InvalidTable {
                    family: family.into(),
                    message: format!("{key} names no model"),
                });
            }
        }
        Ok(())
    }
}

/// What [`TierPolicy::choose`] picked, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Choice {
    pub model: String,
    /// The provider family whose table the model came from.
    pub family: String,
    /// The classifier's tier (`None` when it failed open).
    pub tier: Option<Tier>,
    /// The tier whose model was used after the mode's adjustment and `allowed_models`; `None`
    /// for the `unclassified` model.
    pub routed_tier: Option<Tier>,
    pub mode: Mode,
    /// Why the model differs from the classified tier's, when it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adjustment: Option<String>,
}

/// Built-in families, in the order they are tried when the request names none.
pub const BUILTIN_FAMILIES: [&str; 3] = ["anthropic", "openai", "gemini"];

/// Below this probability of its tier, a classification counts as unsure.
pub const DEFAULT_UNCERTAIN_BELOW: f32 = 0.6;

/// The built-in table for a family, with today's model names.
pub fn builtin_models(family: &str) -> Option<TierModels> {
    match family {
        "anthropic" => Some(TierModels::new(
            "claude-haiku-4-5",
            "claude-sonnet-4-5",
            "claude-opus-4-1",
        )),
        "openai" => Some(TierModels::new("gpt-5-nano", "gpt-5-mini", "gpt-5")),
        "gemini" => Some(TierModels::new(
            "gemini-2.5-flash-lite",
            "gemini-2.5-flash",
            "gemini-2.5-pro",
        )),
        _ => None,
    }
}

/// Tier -> model tables per provider family, and how to lean when unsure.
#[derive(Debug, Clone, PartialEq)]
pub struct TierPolicy {
    families: IndexMap<String, TierModels>,
    default_family: String,
    uncertain_below: f32,
}

impl Default for TierPolicy {
    fn default() -> Self {
        let families = BUILTIN_FAMILIES
            .iter()
            .filter_map(|f| builtin_models(f).map(|m| (f.to_string(), m)))
            .collect();
        Self {
            families,
            default_family: BUILTIN_FAMILIES[0].to_string(),
            uncertain_below: DEFAULT_UNCERTAIN_BELOW,
        }
    }
}

impl TierPolicy {
    /// A policy over `families` (in order). The default family (used when a request names none)
    /// is `default_family`, else the one named `default`, else the first.
    pub fn new(
        families: IndexMap<String, TierModels>,
        default_family: Option<&str>,
        uncertain_below: f32,
    ) -> Result<Self, PolicyError> {
        let Some((first, _)) = families.first() else {
            return Err(PolicyError::InvalidTable {
                family: String::new(),
                message: "no provider family has a tier table".into(),
            });
        };
        for (family, table) in &families {
            table.validate(family)?;
        }
        let default_family = match default_family {
            Some(name) => {
                if !families.contains_key(name) {
                    return Err(PolicyError::UnknownFamily {
                        family: name.into(),
                        known: families.keys().cloned().collect(),
                    });
                }
                name.to_string()
            }
            None if families.contains_key("default") => "default".to_string(),
            None => first.clone(),
        };
        if !(0.0..=1.0).contains(&uncertain_below) {
            return Err(PolicyError::InvalidTable {
                family: default_family,
                message: format!("uncertain_below must be between 0 and 1, got {uncertain_below}"),
            });
        }
        Ok(Self {
            families,
            default_family,
            uncertain_below,
        })
    }

    /// The family used when a request names none.
    pub fn default_family(&self) -> &str {
        &self.default_family
    }

    /// Below this probability of its tier, a classification counts as unsure.
    pub fn uncertain_below(&self) -> f32 {
        self.uncertain_below
    }

    /// Family names, in order.
    pub fn families(&self) -> impl Iterator<Item = &str> {
        self.families.keys().map(String::as_str)
    }

    /// The table of `family` (names are matched case-insensitively).
    pub fn table(&self, family: &str) -> Result<&TierModels, PolicyError> {
        self.resolve_family(family).map(|(_, t)| t)
    }

    /// Every model any table names, without repeats, in family order.
    pub fn models(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for table in self.families.values() {
            for m in table.models() {
                if !out.contains(&m) {
                    out.push(m);
                }
            }
        }
        out
    }

    fn resolve_family(&self, family: &str) -> Result<(&str, &TierModels), PolicyError> {
        let wanted = family.trim();
        self.families
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(wanted))
            .map(|(name, table)| (name.as_str(), table))
            .ok_or_else(|| PolicyError::UnknownFamily {
                family: family.to_string(),
                known: self.families.keys().cloned().collect(),
            })
    }

    /// The tier whose model `mode` asks for, and why it differs from `tier` when it does.
    pub fn routed_tier(
        &self,
        tier: Tier,
        probabilities: Option<&TierProbabilities>,
        mode: Mode,
    ) -> (Tier, Option<String>) {
        let unsure = probabilities.is_some_and(|p| p.get(tier) < self.uncertain_below);
        let p_text = |p: Option<&TierProbabilities>| {
            p.map(|p| format!("{:.2}", p.get(tier))).unwrap_or_default()
        };
        match (mode, tier) {
            (Mode::Aggressive, Tier::Easy | Tier::Medium) if unsure => {
                let up = if tier == Tier::Easy {
                    Tier::Medium
                } else {
                    Tier::Hard
                };
                let why = format!(
                    "aggressive: {tier} at p={} < {}, one tier up",
                    p_text(probabilities),
                    self.uncertain_below
                );
                (up, Some(why))
            }
            (Mode::Cost, Tier::Medium | Tier::Hard) if unsure => {
                let down = if tier == Tier::Hard {
                    Tier::Medium
                } else {
                    Tier::Easy
                };
                let why = format!(
                    "cost: {tier} at p={} < {}, one tier down",
                    p_text(probabilities),
                    self.uncertain_below
                );
                (down, Some(why))
            }
            (Mode::Cost, Tier::NeedsInfo) => (
                Tier::Easy,
                Some("cost: needs_info goes to the easy model (a clarifying question)".into()),
            ),
            _ => (tier, None),
        }
    }

    /// Chooses a model.
    ///
    /// - `tier`: the classifier's tier, or `None` when it failed open (the family's
    ///   `unclassified` model answers).
    /// - `probabilities`: the classifier's probabilities; without them no mode adjusts.
    /// - `family`: the provider family, or `None` for the default one.
    /// - `allowed_models`: when given, the answer is one of them: the nearest allowed model of
    ///   the family's ladder (easy, medium, hard), searching upward first except in `cost` mode.
    ///   With no family named, the other families are tried too, in order.
    pub fn choose(
        &self,
        tier: Option<Tier>,
        probabilities: Option<&TierProbabilities>,
        mode: Mode,
        family: Option<&str>,
        allowed_models: Option<&[String]>,
    ) -> Result<Choice, PolicyError> {
        let (family_name, table) = match family {
            Some(f) => self.resolve_family(f)?,
            None => self.resolve_family(&self.default_family)?,
        };
        let (routed_tier, adjustment) = match tier {
            Some(t) => {
                let (routed, why) = self.routed_tier(t, probabilities, mode);
                (Some(routed), why)
            }
            None => (None, None),
        };
        let preferred = match routed_tier {
            Some(t) => table.model(t),
            None => table.unclassified.as_str(),
        };
        let choice =
            |family: &str, model: &str, routed: Option<Tier>, why: Option<String>| Choice {
                model: model.to_string(),
                family: family.to_string(),
                tier,
                routed_tier: routed,
                mode,
                adjustment: why,
            };
        let Some(allowed) = allowed_models else {
            return Ok(choice(family_name, preferred, routed_tier, adjustment));
        };
        let is_allowed = |m: &str| allowed.iter().any(|a| a.trim() == m);
        if is_allowed(preferred) {
            return Ok(choice(family_name, preferred, routed_tier, adjustment));
        }
        let mut searched: Vec<(&str, &TierModels)> = vec![(family_name, table)];
        if family.is_none() {
            searched.extend(
                self.families
                    .iter()
                    .filter(|(name, _)| name.as_str() != family_name)
                    .map(|(name, t)| (name.as_str(), t)),
            );
        }
        for (name, t) in &searched {
            let start = match routed_tier {
                Some(Tier::Easy) => 0,
                Some(Tier::Hard) => 2,
                // needs_info and unclassified models are usually the medium one.
                Some(Tier::Medium | Tier::NeedsInfo) | None => 1,
            };
            let ladder = [Tier::Easy, Tier::Medium, Tier::Hard];
            let order: Vec<usize> = match mode {
                Mode::Cost => (0..=start).rev().chain(start + 1..3).collect(),
                Mode::Balanced | Mode::Aggressive => (start..3).chain((0..start).rev()).collect(),
            };
            for i in order {
                let model = t.model(ladder[i]);
                if is_allowed(model) {
                    let why = format!(
                        "allowed_models: {preferred} is not allowed; nearest allowed is {model} ({})",
                        ladder[i]
                    );
                    return Ok(choice(name, model, Some(ladder[i]), Some(why)));
                }
            }
        }
        Err(PolicyError::NoAllowedModel {
            allowed: allowed.to_vec(),
            families: searched.iter().map(|(n, _)| n.to_string()).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probs(easy: f32, medium: f32, hard: f32, needs_info: f32) -> TierProbabilities {
        TierProbabilities {
            easy,
            medium,
            hard,
            needs_info,
        }
    }

    #[test]
    fn mode_parses_case_insensitively_and_rejects_unknown() {
        assert_eq!("Balanced".parse::<Mode>(), Ok(Mode::Balanced));
        assert_eq!(" cost ".parse::<Mode>(), Ok(Mode::Cost));
        assert_eq!("aggressive".parse::<Mode>(), Ok(Mode::Aggressive));
        assert!(matches!(
            "fast".parse::<Mode>(),
            Err(PolicyError::UnknownMode(m)) if m == "fast"
        ));
    }

    #[test]
    fn balanced_picks_the_tier_model_of_the_default_family() {
        let policy = TierPolicy::default();
        let c = policy
            .choose(Some(Tier::Hard), None, Mode::Balanced, None, None)
            .unwrap();
        assert_eq!(c.model, "claude-opus-4-1");
        assert_eq!(c.family, "anthropic");
        assert_eq!(c.routed_tier, Some(Tier::Hard));
        assert!(c.adjustment.is_none());
    }

    #[test]
    fn aggressive_goes_one_tier_up_only_when_unsure() {
        let policy = TierPolicy::default();
        let unsure = probs(0.5, 0.3, 0.1, 0.1);
        let sure = probs(0.9, 0.05, 0.03, 0.02);
        let c = policy
            .choose(
                Some(Tier::Easy),
                Some(&unsure),
                Mode::Aggressive,
                Some("openai"),
                None,
            )
            .unwrap();
        assert_eq!(c.model, "gpt-5-mini");
        assert_eq!(c.routed_tier, Some(Tier::Medium));
        assert!(c.adjustment.is_some());
        let c = policy
            .choose(
                Some(Tier::Easy),
                Some(&sure),
                Mode::Aggressive,
                Some("openai"),
                None,
            )
            .unwrap();
        assert_eq!(c.model, "gpt-5-nano");
        let hard = probs(0.1, 0.2, 0.5, 0.2);
        let c = policy
            .choose(Some(Tier::Hard), Some(&hard), Mode::Aggressive, None, None)
            .unwrap();
        assert_eq!(c.model, "claude-opus-4-1");
    }

    #[test]
    fn cost_goes_one_tier_down_when_unsure_and_sends_needs_info_to_easy() {
        let policy = TierPolicy::default();
        let unsure = probs(0.2, 0.2, 0.5, 0.1);
        let c = policy
            .choose(
                Some(Tier::Hard),
                Some(&unsure),
                Mode::Cost,
                Some("gemini"),
                None,
            )
            .unwrap();
        assert_eq!(c.model, "gemini-2.5-flash");
        let c = policy
            .choose(
                Some(Tier::NeedsInfo),
                None,
                Mode::Cost,
                Some("anthropic"),
                None,
            )
            .unwrap();
        assert_eq!(c.model, "claude-haiku-4-5");
        let sure = probs(0.05, 0.05, 0.85, 0.05);
        let c = policy
            .choose(
                Some(Tier::Hard),
                Some(&sure),
                Mode::Cost,
                Some("gemini"),
                None,
            )
            .unwrap();
        assert_eq!(c.model, "gemini-2.5-pro");
    }

    #[test]
    fn no_tier_gives_the_unclassified_model() {
        let policy = TierPolicy::default();
        let c = policy
            .choose(None, None, Mode::Aggressive, Some("OpenAI"), None)
            .unwrap();
        assert_eq!(c.model, "gpt-5-mini");
        assert_eq!(c.family, "openai");
        assert_eq!(c.tier, None);
        assert_eq!(c.routed_tier, None);
    }

    #[test]
    fn unknown_family_is_an_error_listing_known_ones() {
        let err = TierPolicy::default()
            .choose(
                Some(Tier::Easy),
                None,
                Mode::Balanced,
                Some("mistral"),
                None,
            )
            .unwrap_err();
        assert!(err.to_string().contains("mistral"));
        assert!(err.to_string().contains("anthropic, openai, gemini"));
    }

    #[test]
    fn allowed_models_picks_the_nearest_allowed_model() {
        let policy = TierPolicy::default();
        let allowed = vec![
            "claude-opus-4-1".to_string(),
            "claude-haiku-4-5".to_string(),
        ];
        // medium is not allowed: balanced searches upward first, cost downward first.
        let c = policy
            .choose(
                Some(Tier::Medium),
                None,
                Mode::Balanced,
                None,
                Some(&allowed),
            )
            .unwrap();
        assert_eq!(c.model, "claude-opus-4-1");
        assert_eq!(c.routed_tier, Some(Tier::Hard));
        assert!(c.adjustment.unwrap().contains("allowed_models"));
        let c = policy
            .choose(Some(Tier::Medium), None, Mode::Cost, None, Some(&allowed))
            .unwrap();
        assert_eq!(c.model, "claude-haiku-4-5");
    }

    #[test]
    fn allowed_models_searches_other_families_only_when_none_is_named() {
        let policy = TierPolicy::default();
        let allowed = vec!["gpt-5".to_string()];
        let c = policy
            .choose(Some(Tier::Easy), None, Mode::Balanced, None, Some(&allowed))
            .unwrap();
        assert_eq!((c.model.as_str(), c.family.as_str()), ("gpt-5", "openai"));
        let err = policy
            .choose(
                Some(Tier::Easy),
                None,
                Mode::Balanced,
                Some("gemini"),
                Some(&allowed),
            )
            .unwrap_err();
        assert!(matches!(err, PolicyError::NoAllowedModel { .. }));
        let err = policy
            .choose(Some(Tier::Easy), None, Mode::Balanced, None, Some(&[]))
            .unwrap_err();
        assert!(matches!(err, PolicyError::NoAllowedModel { .. }));
    }

    #[test]
    fn default_family_prefers_explicit_then_default_then_first() {
        let mut families = IndexMap::new();
        families.insert("local".to_string(), TierModels::new("a", "b", "c"));
        families.insert("default".to_string(), TierModels::new("x", "y", "z"));
        let p = TierPolicy::new(families.clone(), None, 0.5).unwrap();
        assert_eq!(p.default_family(), "default");
        let p = TierPolicy::new(families.clone(), Some("local"), 0.5).unwrap();
        assert_eq!(p.default_family(), "local");
        families.shift_remove("default");
        let p = TierPolicy::new(families.clone(), None, 0.5).unwrap();
        assert_eq!(p.default_family(), "local");
        assert!(TierPolicy::new(families.clone(), Some("nope"), 0.5).is_err());
        assert!(TierPolicy::new(families, None, 1.5).is_err());
        assert!(TierPolicy::new(IndexMap::new(), None, 0.5).is_err());
    }

    #[test]
    fn empty_model_names_are_rejected() {
        let mut families = IndexMap::new();
        families.insert("x".to_string(), TierModels::new("a", " ", "c"));
        let err = TierPolicy::new(families, None, 0.5).unwrap_err();
        assert!(err.to_string().contains("medium"));
    }
}
