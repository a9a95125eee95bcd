//! `triage classify` as users run it: the real binary, in a temporary directory.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn triage(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_triage"))
        .arg("classify")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("triage runs");
    let mut pipe = child.stdin.take().expect("stdin");
    if let Some(bytes) = stdin {
        pipe.write_all(bytes).expect("write stdin");
    }
    drop(pipe);
    child.wait_with_output().expect("triage exits")
}

fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("each stdout line is JSON"))
        .collect()
}

#[test]
fn classifies_one_prompt_as_a_table() {
    let out = triage(&["What is the capital of France?"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("tier") && text.contains("What is the capital of France?"));
}

#[test]
fn json_output_has_every_field() {
    let out = triage(&["--json", "Prove that sqrt(2) is irrational."], None);
    assert!(out.status.success());
    let rows = json_lines(&out);
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(row["index"], 0);
    for field in [
        "tier",
        "top_tier",
        "confidence",
        "confident",
        "probabilities",
        "tokens",
        "truncated",
    ] {
        assert!(row.get(field).is_some(), "missing {field}: {row}");
    }
    let p = &row["probabilities"];
    let sum: f64 = ["easy", "medium", "hard", "needs_info"]
        .iter()
        .map(|k| p[k].as_f64().unwrap())
        .sum();
    assert!((sum - 1.0).abs() < 1e-3);
}

#[test]
fn bad_lines_are_reported_with_their_numbers_and_the_rest_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("prompts.jsonl");
    let mut input = Vec::new();
    input.extend_from_slice(b"{\"text\": \"What is 2 + 2?\"}\n");
    input.extend_from_slice(b"{\"text\": \"unterminated\n");
    input.extend_from_slice(b"caf\xc3\x28 invalid utf-8\n");
    input.extend_from_slice(b"\n");
    input.extend_from_slice(
        b"{\"messages\": [{\"role\": \"user\", \"content\": \"Write a haiku about rain.\"}]}\n",
    );
    input.extend_from_slice(b"{\"text\": 42}\n");
    input.extend_from_slice(b"plain text line about sorting a list in Python\n");
    std::fs::write(&path, &input).unwrap();

    let out = triage(&["--json", "--file", path.to_str().unwrap()], None);
    assert_eq!(
        out.status.code(),
        Some(1),
        "skipped lines make the exit code 1"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("line 2") && stderr.contains("not valid JSON"),
        "{stderr}"
    );
    assert!(
        stderr.contains("line 3") && stderr.contains("UTF-8"),
        "{stderr}"
    );
    assert!(stderr.contains("line 6"), "{stderr}");
    let rows = json_lines(&out);
    assert_eq!(rows.len(), 3, "the three good lines are classified");
    let indices: Vec<u64> = rows.iter().map(|r| r["index"].as_u64().unwrap()).collect();
    assert_eq!(indices, [0, 1, 2]);
}

#[test]
fn reads_standard_input() {
    let out = triage(&["--json"], Some(b"hello\nWhat is the speed of light?\n"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(json_lines(&out).len(), 2);
}

#[test]
fn empty_prompt_is_a_clear_error() {
    let out = triage(&["   "], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("empty"));
}

#[test]
fn empty_input_is_a_clear_error() {
    let out = triage(&["--json"], Some(b""));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no prompts"));
}

#[test]
fn missing_model_and_bad_device_are_clear_errors() {
    let out = triage(&["--model-dir", "/nonexistent/model", "hi"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("config.json"));
    let out = triage(&["--device", "tpu", "hi"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown device"));
}

#[test]
fn one_megabyte_prompt_on_stdin_is_classified() {
    let big = "word ".repeat(210_000);
    let out = triage(&["--json"], Some(big.as_bytes()));
    assert!(out.status.success());
    let rows = json_lines(&out);
    assert_eq!(rows[0]["truncated"], true);
}
