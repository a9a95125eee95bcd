//! `triage batch` end to end: the real binary on fixture logs of each format.
//!
//! The shipped model may still be untrained, so these tests pin down counts, formats, sums,
//! error lines and exit codes, never which tier a prompt gets.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures/batch").join(name)
}

fn model_dir() -> Option<PathBuf> {
    let dir = root().join("models/triage-v1");
    // The model ships with the repository: its absence is a failure, not a reason to skip.
    assert!(
        dir.join("model.safetensors").is_file(),
        "no model at {}",
        dir.display()
    );
    Some(dir)
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }
}

fn triage_batch(model: &Path, args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_triage"))
        .arg("batch")
        .arg("--model-dir")
        .arg(model)
        .args(args)
        .output()
        .expect("run triage");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn lines_of(errors: &[Value]) -> Vec<u64> {
    errors.iter().map(|e| e["line"].as_u64().unwrap()).collect()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs one fixture with --json, --out and --errors; returns the run, rows and errors.
fn run_fixture(model: &Path, name: &str, extra: &[&str]) -> (Run, Vec<Value>, Vec<Value>) {
    let dir = tempfile::tempdir().unwrap();
    let (out, errors) = (
        dir.path().join("rows.jsonl"),
        dir.path().join("errors.jsonl"),
    );
    let path = fixture(name);
    let mut args = vec![
        s(&path),
        "--json",
        "-q",
        "--out",
        s(&out),
        "--errors",
        s(&errors),
    ];
    args.extend_from_slice(extra);
    let run = triage_batch(model, &args);
    assert!(
        run.code == 0 || run.code == 1,
        "exit {}: {}",
        run.code,
        run.stderr
    );
    (run, jsonl(&out), jsonl(&errors))
}

fn assert_row_shape(row: &Value) {
    let tier = row["tier"].as_str().unwrap();
    assert!(
        ["easy", "medium", "hard", "needs_info"].contains(&tier),
        "{row}"
    );
    let p = &row["probabilities"];
    let sum: f64 = ["easy", "medium", "hard", "needs_info"]
        .iter()
        .map(|t| p[t].as_f64().unwrap())
        .sum();
    assert!((sum - 1.0).abs() < 1e-3, "{row}");
    for mode in ["balanced", "aggressive", "cost"] {
        assert!(row["routed"][mode]["model"].is_string(), "{row}");
    }
    assert!(row["line"].as_u64().unwrap() >= 1);
}

#[test]
fn chat_request_bodies_are_classified_and_bad_lines_listed_with_line_numbers() {
    let Some(model) = model_dir() else { return };
    let (run, rows, errors) = run_fixture(&model, "chat.jsonl", &[]);
    assert_eq!(run.code, 1, "some rows were skipped");
    let summary = run.json();
    assert_eq!(summary["rows"], 5);
    assert_eq!(summary["skipped"], 3);
    assert_eq!(summary["files"][0]["format"], "openai-chat");
    assert_eq!(lines_of(&errors), vec![4, 7, 8]);
    assert!(errors[0]["reason"]
        .as_str()
        .unwrap()
        .contains("not valid JSON"));
    assert!(errors[0]["file"].as_str().unwrap().ends_with("chat.jsonl"));
    let lines: Vec<u64> = rows.iter().map(|r| r["line"].as_u64().unwrap()).collect();
    assert_eq!(lines, vec![1, 2, 3, 5, 9]);
    for row in &rows {
        assert_row_shape(row);
    }
    // The dated name is priced as its model; the row with usage keeps its counts.
    assert_eq!(rows[0]["model"], "claude-sonnet-4-5-20250929");
    assert!(rows[0]["current_cost_usd"].as_f64().unwrap() > 0.0);
    assert_eq!(rows[0]["family"], "anthropic");
    assert_eq!(rows[4]["family"], "gemini");
    assert_eq!(rows[4]["input_tokens"], 40);
    assert_eq!(rows[4]["output_tokens"], 900);
    assert_eq!(rows[4]["input_tokens_estimated"], false);
    assert_eq!(rows[0]["input_tokens_estimated"], true);
    assert_eq!(rows[0]["output_tokens"], 250, "the assumed output");
}

#[test]
fn a_multi_turn_conversation_is_one_row_with_all_its_text_counted() {
    let Some(model) = model_dir() else { return };
    let (_, rows, _) = run_fixture(&model, "chat.jsonl", &[]);
    let convo = rows.iter().find(|r| r["line"] == 3).unwrap();
    // The last user turn (54 characters) and the two before it rendered as `role: text` lines
    // (108 characters): ceil(162 / 4) tokens.
    assert_eq!(convo["input_tokens"], 41);
    assert_eq!(convo["input_tokens_estimated"], true);
}

#[test]
fn batch_api_lines_keep_their_custom_id() {
    let Some(model) = model_dir() else { return };
    let (run, rows, errors) = run_fixture(&model, "batch_api.jsonl", &[]);
    assert_eq!(run.code, 1);
    assert_eq!(run.json()["files"][0]["format"], "openai-batch");
    let ids: Vec<&str> = rows.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec!["req-1", "req-2", "req-4"]);
    assert_eq!(lines_of(&errors), vec![3, 5]);
    assert!(errors[0]["reason"].as_str().unwrap().contains("body"));
    // gpt-4o-2024-08-06 is grouped under gpt-4o in the per-model table.
    let by_model = run.json()["by_model"].clone();
    assert!(by_model
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["model"] == "gpt-4o" && m["rows"] == 2));
}

#[test]
fn csv_quoting_multiline_fields_and_bad_rows() {
    let Some(model) = model_dir() else { return };
    let (run, rows, errors) = run_fixture(&model, "prompts.csv", &[]);
    assert_eq!(run.code, 1);
    let summary = run.json();
    assert_eq!(summary["files"][0]["format"], "csv");
    assert_eq!(summary["rows"], 5);
    assert_eq!(lines_of(&errors), vec![8, 9, 10]);
    assert!(errors[0]["reason"].as_str().unwrap().contains("fields"));
    assert!(errors[2]["reason"]
        .as_str()
        .unwrap()
        .contains("token count"));
    let ids: Vec<&str> = rows.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec!["r1", "r2", "r3", "r4", "r8"]);
    // The three-line quoted prompt is one row, numbered by its first line.
    assert_eq!(rows[3]["line"], 5);
    // r3 has empty token cells: estimated from `She said "hello", then left. Who said hello?`.
    assert_eq!(rows[2]["input_tokens_estimated"], true);
    assert_eq!(rows[2]["input_tokens"], 11);
    // r1: 12 input and 8 output tokens on claude-sonnet-4-5 at $3 / $15 per million.
    let c = rows[0]["current_cost_usd"].as_f64().unwrap();
    assert!((c - (12.0 * 3.0 + 8.0 * 15.0) / 1e6).abs() < 1e-12, "{c}");
    // r8 names no model: classified, routed, not priced.
    assert_eq!(rows[4]["model"], Value::Null);
    assert_eq!(rows[4]["current_cost_usd"], Value::Null);
    assert_eq!(summary["unpriced_no_model"], 1);
    assert_eq!(summary["priced_rows"], 4);
}

#[test]
fn column_names_are_configurable() {
    let Some(model) = model_dir() else { return };
    let flags = [
        "--prompt-field",
        "user_text",
        "--model-field",
        "llm",
        "--input-tokens-field",
        "tok_in",
        "--output-tokens-field",
        "tok_out",
    ];
    let (run, rows, errors) = run_fixture(&model, "custom_columns.csv", &flags);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(errors.is_empty());
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1]["model"], "claude-sonnet-4-5");
    assert_eq!(rows[1]["output_tokens"], 600);
    assert_eq!(rows[1]["output_tokens_estimated"], false);

    // Without the flags the prompt column is not found: one error, for the header.
    let (run, rows, errors) = run_fixture(&model, "custom_columns.csv", &[]);
    assert_eq!(run.code, 1);
    assert!(rows.is_empty());
    assert_eq!(lines_of(&errors), vec![1]);
    assert!(errors[0]["reason"]
        .as_str()
        .unwrap()
        .contains("--prompt-field"));
}

#[test]
fn generic_jsonl_reads_usage_conversations_and_answers() {
    let Some(model) = model_dir() else { return };
    let (run, rows, errors) = run_fixture(&model, "prompts.jsonl", &[]);
    assert_eq!(run.code, 1);
    let summary = run.json();
    assert_eq!(summary["files"][0]["format"], "jsonl");
    assert_eq!(lines_of(&errors), vec![3, 4, 6]);
    assert_eq!(rows.len(), 4);
    assert_eq!(rows[1]["input_tokens"], 20);
    assert_eq!(rows[1]["output_tokens"], 300);
    // A model with no price is classified and counted, not priced.
    assert_eq!(rows[2]["model"], "llama-3-70b");
    assert_eq!(summary["unpriced_models"]["llama-3-70b"], 1);
    // The logged answer gives the output estimate: "Sure, please paste the file." is 28 chars.
    assert_eq!(rows[3]["output_tokens"], 7);
    assert_eq!(rows[3]["output_tokens_estimated"], true);
}

#[test]
fn triage_request_log_is_detected() {
    let Some(model) = model_dir() else { return };
    let (run, rows, errors) = run_fixture(&model, "triage_log.jsonl", &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.json()["files"][0]["format"], "triage-log");
    assert!(errors.is_empty());
    assert_eq!(rows[1]["id"], "t-2");
    assert_eq!(rows[1]["output_tokens"], 1500);
}

#[test]
fn an_empty_file_is_zero_rows_and_success() {
    let Some(model) = model_dir() else { return };
    let (run, rows, errors) = run_fixture(&model, "empty.jsonl", &[]);
    assert_eq!(run.code, 0);
    let summary = run.json();
    assert_eq!(summary["rows"], 0);
    assert_eq!(summary["skipped"], 0);
    assert!(rows.is_empty() && errors.is_empty());
    let text = triage_batch(&model, &[s(&fixture("empty.jsonl")), "-q"]);
    assert_eq!(text.code, 0);
    assert!(text.stdout.contains("0 rows classified"), "{}", text.stdout);
}

#[test]
fn a_file_with_no_usable_rows_exits_1_and_lists_every_line() {
    let Some(model) = model_dir() else { return };
    let (run, rows, errors) = run_fixture(&model, "no_usable.jsonl", &[]);
    assert_eq!(run.code, 1);
    assert_eq!(run.json()["rows"], 0);
    assert!(rows.is_empty());
    assert_eq!(lines_of(&errors), vec![1, 2, 3]);
}

#[test]
fn summary_sums_match_the_rows() {
    let Some(model) = model_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rows.jsonl");
    let files: Vec<PathBuf> = [
        "chat.jsonl",
        "batch_api.jsonl",
        "prompts.csv",
        "prompts.jsonl",
    ]
    .iter()
    .map(|f| fixture(f))
    .collect();
    let mut args: Vec<&str> = files.iter().map(|p| s(p)).collect();
    args.extend(["--json", "-q", "--out", s(&out)]);
    let run = triage_batch(&model, &args);
    assert_eq!(run.code, 1);
    let summary = run.json();
    let rows = jsonl(&out);
    assert_eq!(summary["rows"].as_u64().unwrap() as usize, rows.len());
    assert_eq!(summary["files"].as_array().unwrap().len(), 4);
    let tiers = &summary["tiers"];
    let tier_total: u64 = ["easy", "medium", "hard", "needs_info"]
        .iter()
        .map(|t| tiers[t].as_u64().unwrap())
        .sum();
    assert_eq!(tier_total as usize, rows.len());

    let priced: Vec<&Value> = rows
        .iter()
        .filter(|r| r["current_cost_usd"].is_f64())
        .collect();
    assert_eq!(
        summary["priced_rows"].as_u64().unwrap() as usize,
        priced.len()
    );
    let current: f64 = priced
        .iter()
        .map(|r| r["current_cost_usd"].as_f64().unwrap())
        .sum();
    let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
    assert!(close(
        current,
        summary["current_cost_usd"].as_f64().unwrap()
    ));
    for (i, mode) in ["balanced", "aggressive", "cost"].iter().enumerate() {
        let m = &summary["modes"][i];
        assert_eq!(m["mode"], *mode);
        let routed: f64 = priced
            .iter()
            .map(|r| r["routed"][mode]["cost_usd"].as_f64().unwrap())
            .sum();
        assert!(close(routed, m["routed_cost_usd"].as_f64().unwrap()));
        assert!(close(current - routed, m["savings_usd"].as_f64().unwrap()));
        let cheaper = priced
            .iter()
            .filter(|r| {
                r["routed"][mode]["cost_usd"].as_f64().unwrap()
                    < r["current_cost_usd"].as_f64().unwrap() - 1e-12
            })
            .count();
        assert_eq!(m["cheaper_rows"].as_u64().unwrap() as usize, cheaper);
        let routed_rows: u64 = m["routed_models"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert_eq!(routed_rows as usize, rows.len());
    }
    let by_model_rows: u64 = summary["by_model"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["rows"].as_u64().unwrap())
        .sum();
    assert_eq!(by_model_rows as usize, rows.len());
}

#[test]
fn provider_flag_routes_every_row_within_that_family() {
    let Some(model) = model_dir() else { return };
    let (_, rows, _) = run_fixture(&model, "chat.jsonl", &["--provider", "openai"]);
    for row in &rows {
        assert_eq!(row["family"], "openai");
        for mode in ["balanced", "aggressive", "cost"] {
            let m = row["routed"][mode]["model"].as_str().unwrap();
            assert!(m.starts_with("gpt-"), "{m}");
        }
    }
    let bad = triage_batch(&model, &[s(&fixture("chat.jsonl")), "--provider", "nope"]);
    assert_eq!(bad.code, 2);
    assert!(bad.stderr.contains("nope"), "{}", bad.stderr);
}

#[test]
fn default_model_prices_rows_that_name_none() {
    let Some(model) = model_dir() else { return };
    let (run, rows, _) = run_fixture(&model, "prompts.csv", &["--default-model", "gpt-4o"]);
    assert_eq!(run.json()["unpriced_no_model"], 0);
    assert_eq!(rows[4]["model"], "gpt-4o");
    assert!(rows[4]["current_cost_usd"].is_f64());
}

#[test]
fn a_named_format_is_enforced() {
    let Some(model) = model_dir() else { return };
    let (run, rows, errors) = run_fixture(&model, "chat.jsonl", &["--format", "openai-batch"]);
    assert_eq!(run.code, 1);
    assert!(rows.is_empty());
    assert_eq!(errors.len(), 8);
    assert!(errors
        .iter()
        .any(|e| e["reason"].as_str().unwrap().contains("Batch API")));
}

#[test]
fn usage_errors_exit_2_with_a_reason() {
    let Some(model) = model_dir() else { return };
    let run = triage_batch(&model, &[s(&fixture("chat.jsonl")), "--format", "xml"]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("unknown format"), "{}", run.stderr);
    let run = triage_batch(&model, &["/no/such/file.jsonl"]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("/no/such/file.jsonl"), "{}", run.stderr);
}

#[test]
fn text_summary_and_plain_progress_lines() {
    let Some(model) = model_dir() else { return };
    let run = triage_batch(&model, &[s(&fixture("prompts.csv"))]);
    assert_eq!(run.code, 1);
    for want in [
        "5 rows classified",
        "3 skipped",
        "tiers",
        "routed, balanced",
        "by model used",
        "claude-sonnet-4-5",
    ] {
        assert!(
            run.stdout.contains(want),
            "missing {want:?} in\n{}",
            run.stdout
        );
    }
    // Not a terminal: plain lines, no carriage returns; skipped rows are named on stderr.
    assert!(!run.stderr.contains('\r'), "{:?}", run.stderr);
    assert!(run.stderr.contains("triage batch: 100%"), "{}", run.stderr);
    assert!(run.stderr.contains("prompts.csv:8:"), "{}", run.stderr);
}

#[test]
fn report_is_one_self_contained_html_file() {
    let Some(model) = model_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.html");
    let run = triage_batch(
        &model,
        &[
            s(&fixture("chat.jsonl")),
            s(&fixture("prompts.csv")),
            "-q",
            "--report",
            s(&report),
        ],
    );
    assert_eq!(run.code, 1);
    let html = std::fs::read_to_string(&report).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert_eq!(
        html.matches("<svg").count(),
        3,
        "tier mix, cost by mode, savings by model"
    );
    assert!(!html.contains("<script"));
    assert!(!html.contains("<link"));
    assert!(!html.contains("src="));
    let external = html.replace("http://www.w3.org/2000/svg", "");
    assert!(!external.contains("http://") && !external.contains("https://"));
    assert!(html.contains("claude-opus-4-1"));
}

#[test]
fn standard_input_is_read_with_a_dash() {
    let Some(model) = model_dir() else { return };
    let input = std::fs::read(fixture("triage_log.jsonl")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_triage"))
        .args(["batch", "-", "--json", "-q", "--model-dir"])
        .arg(&model)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(&input).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["rows"], 2);
}
