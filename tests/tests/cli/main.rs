//! The `evolve` command end to end: the demo's promises, bad input, the real example evaluator,
//! and the Bedrock path against the stub binary.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;
pub(crate) use tests::bins::workspace_bin as bin;

mod aws;
mod crash;
mod failover;
mod replay;
mod trace;

fn evolve(state: &Path, args: &[&str]) -> Output {
    Command::new(bin("evolve"))
        .arg("--state")
        .arg(state)
        .args(args)
        .env_remove("EVOLVE_SYSTEM")
        .env_remove("EVOLVE_LLM")
        .stdin(Stdio::null())
        .output()
        .expect("evolve runs")
}

fn last_json(out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().expect("a JSON line");
    serde_json::from_str(line).expect("the last stdout line is JSON")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn demo_with_one_seed_prints_identical_json_twice() {
    let a = tempfile::tempdir().expect("dir");
    let b = tempfile::tempdir().expect("dir");
    let first = evolve(a.path(), &["demo", "--seed", "7", "--json"]);
    let second = evolve(b.path(), &["demo", "--seed", "7", "--json"]);
    assert!(first.status.success(), "{}", stderr(&first));
    assert_eq!(last_json(&first), last_json(&second));
}

#[test]
fn demo_improves_fitness_with_rollbacks_in_the_cliff_and_few_llm_calls() {
    let dir = tempfile::tempdir().expect("dir");
    let out = evolve(dir.path(), &["demo", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let r = last_json(&out);
    assert_eq!(r["generations"], 30);
    let initial = r["initial_fitness"].as_f64().expect("initial");
    let final_ = r["final_fitness"].as_f64().expect("final");
    assert!(final_ > initial, "{initial} -> {final_}");
    assert!(r["rollbacks"].as_u64().expect("rollbacks") >= 1);
    let d = &r["decisions"];
    let decided: u64 = ["approve", "reject", "defer"]
        .iter()
        .map(|k| d[*k].as_u64().expect("count"))
        .sum();
    assert!(decided >= 30, "{d}");
    let roles = &r["llm_calls_by_role"];
    let planning = roles["analyze"].as_u64().expect("n") + roles["strategize"].as_u64().expect("n");
    assert!(
        planning < 30,
        "analyze + strategize = {planning} over 30 generations"
    );
    // At least one rollback's candidate lay in the cliff: its workload failed.
    let history = evolve(dir.path(), &["history", "--limit", "200", "--json"]);
    let history: Value = serde_json::from_slice(&history.stdout).expect("history JSON");
    let cliff = history
        .as_array()
        .expect("array")
        .iter()
        .filter(|h| h["outcome"] == "inconclusive")
        .count();
    assert!(cliff >= 1, "no candidate hit the out-of-memory cliff");
    for view in ["status", "decisions", "cost"] {
        let out = evolve(dir.path(), &[view]);
        assert!(out.status.success(), "{view}: {}", stderr(&out));
        assert!(!out.stdout.is_empty(), "{view} printed nothing");
    }
}

#[test]
fn bad_input_exits_2_with_one_line_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("dir");
    let state = dir.path().join("state");
    let bad_dna = dir.path().join("bad.json");
    std::fs::write(
        &bad_dna,
        r#"{"system_id": "x", "genes": {"a": {"type": "int", "value": 500, "min": 0, "max": 10}}}"#,
    )
    .expect("write");
    let cases: Vec<Vec<String>> = vec![
        vec![
            "init".into(),
            "--dna".into(),
            dir.path().join("missing.json").display().to_string(),
        ],
        vec!["init".into(), "--dna".into(), bad_dna.display().to_string()],
        vec!["status".into()],
        vec![
            "run".into(),
            "--evaluator".into(),
            "no-such-evaluator-xyz".into(),
        ],
        vec!["--system".into(), "nope".into(), "history".into()],
    ];
    for args in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = evolve(&state, &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("error: "), "{err}");
        assert!(!state.exists(), "{args:?} wrote {}", state.display());
    }
    let out = evolve(&state, &["init", "--dna", &bad_dna.display().to_string()]);
    assert!(stderr(&out).contains("\"a\""), "the error names the gene");
}

#[test]
fn init_refuses_a_dna_over_a_limit_naming_the_gene_and_the_limit() {
    let dir = tempfile::tempdir().expect("dir");
    let state = dir.path().join("state");
    let dna = dir.path().join("dna.json");
    let choices: Vec<String> = (0..=shared::domain::MAX_CHOICES)
        .map(|i| format!("c{i}"))
        .collect();
    let text = serde_json::json!({
        "system_id": "wide",
        "genes": {"codec": {"type": "choice", "value": "c0", "choices": choices}},
    });
    std::fs::write(&dna, text.to_string()).expect("write");
    let out = evolve(&state, &["init", "--dna", &dna.display().to_string()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("\"codec\"")
            && err.contains(&format!("at most {}", shared::domain::MAX_CHOICES)),
        "{err}"
    );
    assert!(!state.exists(), "wrote {}", state.display());
}

/// The seed's history query from the command line (events by type, id and time range, with
/// where each is stored) and the decision audit exported as JSON lines.
#[test]
fn history_queries_events_and_decisions_export_as_json_lines() {
    let dir = tempfile::tempdir().expect("dir");
    let demo = evolve(dir.path(), &["demo", "--generations", "3"]);
    assert!(demo.status.success(), "{}", stderr(&demo));
    let lines = |args: &[&str]| -> Vec<Value> {
        let out = evolve(dir.path(), args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
            .collect()
    };
    let all = lines(&["history", "--events", "--format", "jsonl"]);
    assert!(all.len() > 3, "{all:?}");
    assert!(
        all.iter()
            .all(|e| e["storage_metadata"]["size_bytes"].as_u64() > Some(0)),
        "{all:?}"
    );
    let applied = lines(&["history", "--type", "mutation_applied", "--format", "jsonl"]);
    assert!(!applied.is_empty());
    assert!(
        applied.iter().all(|e| e["type"] == "mutation_applied"),
        "{applied:?}"
    );
    let first = all[1]["id"].as_str().expect("id");
    let one = lines(&["history", "--id", first, "--format", "jsonl"]);
    assert_eq!(one.len(), 1);
    assert_eq!(one[0]["id"], first);
    let until = all[1]["timestamp"].as_str().expect("time");
    let before = lines(&["history", "--events", "--until", until, "--format", "jsonl"]);
    assert!(
        before.iter().all(|e| e["timestamp"].as_str() < Some(until)),
        "{before:?}"
    );
    assert!(before.len() < all.len());

    let decisions = lines(&["decisions", "--since", "2000-01-01", "--format", "jsonl"]);
    let all_decisions = evolve(dir.path(), &["decisions", "--json", "--limit", "100000"]);
    let all_decisions: Value = serde_json::from_slice(&all_decisions.stdout).expect("JSON");
    assert_eq!(
        decisions.len(),
        all_decisions.as_array().expect("array").len()
    );
    assert!(
        decisions.iter().all(|d| d["decision_id"].is_string()),
        "{decisions:?}"
    );
}

/// The DNA file's requirements and constraints are kept with the system's settings (the
/// prompts read them from there), and ones over their limits are refused at `init`.
#[test]
fn init_keeps_the_dna_files_requirements_and_constraints() {
    let dir = tempfile::tempdir().expect("dir");
    let dna = dir.path().join("dna.json");
    let file = |constraint: &str| {
        serde_json::json!({
            "system_id": "svc",
            "genes": {"x": {"type": "int", "value": 5, "min": 0, "max": 10}},
            "performance_requirements": {"p99_latency_ms": "<= 250", "availability": 0.999},
            "business_constraints": [constraint],
        })
        .to_string()
    };
    std::fs::write(&dna, file(&"y".repeat(201))).expect("write");
    let refused = evolve(dir.path(), &["init", "--dna", &dna.display().to_string()]);
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("business constraint"),
        "{}",
        stderr(&refused)
    );
    std::fs::write(&dna, file("never drop an order")).expect("write");
    let ok = evolve(dir.path(), &["init", "--dna", &dna.display().to_string()]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    let shown = evolve(dir.path(), &["settings", "--json"]);
    let shown = last_json(&shown);
    let constraints = &shown["constraints"];
    assert_eq!(
        constraints["performance_requirements"]["p99_latency_ms"],
        "<= 250"
    );
    assert_eq!(
        constraints["business_constraints"][0],
        "never drop an order"
    );
}

#[test]
fn unknown_system_in_an_existing_store_exits_2() {
    let dir = tempfile::tempdir().expect("dir");
    assert!(
        evolve(dir.path(), &["demo", "--generations", "1"])
            .status
            .success()
    );
    let out = evolve(dir.path(), &["--system", "nope", "status"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("unknown system nope"));
}

#[test]
fn sqlite_example_evaluator_runs_two_generations_and_resumes() {
    let dir = tempfile::tempdir().expect("dir");
    let dna = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/sqlite-evaluator/dna.json");
    let out = evolve(dir.path(), &["init", "--dna", &dna.display().to_string()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let evaluator = format!("SQLITE_EVAL_ROWS=300 {}", bin("sqlite-evaluator").display());
    let run = |generations: &str| {
        let out = evolve(
            dir.path(),
            &[
                "run",
                "--evaluator",
                &evaluator,
                "--generations",
                generations,
                "--json",
            ],
        );
        assert!(out.status.success(), "{}", stderr(&out));
        last_json(&out)
    };
    let first = run("2");
    assert_eq!(first["generations"], 2);
    assert!(first["initial_fitness"].as_f64().expect("baseline") > 0.0);
    let second = run("1");
    assert_eq!(second["generations"], 1);
    assert_eq!(
        second["initial_fitness"], first["final_fitness"],
        "resumes from the stored head"
    );
}

#[test]
fn failing_evaluator_generations_are_inconclusive_and_rolled_back() {
    let dir = tempfile::tempdir().expect("dir");
    let dna = dir.path().join("dna.json");
    std::fs::write(
        &dna,
        r#"{"system_id": "flaky", "genes": {"x": {"type": "int", "value": 5, "min": 0, "max": 10, "max_step": 2}}}"#,
    )
    .expect("write");
    assert!(
        evolve(dir.path(), &["init", "--dna", &dna.display().to_string()])
            .status
            .success()
    );
    // Measures x as the score while x <= 5, and fails (exit 3) beyond.
    let evaluator = r#"python3 -c 'import json,sys; x=json.load(sys.stdin)["x"]; sys.exit(3) if x>5 else print(json.dumps({"score": x}))'"#;
    let out = evolve(
        dir.path(),
        &[
            "run",
            "--evaluator",
            evaluator,
            "--generations",
            "4",
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let r = last_json(&out);
    assert!(r["rollbacks"].as_u64().expect("n") >= 1, "{r}");
    let history = evolve(dir.path(), &["history", "--json"]);
    let history: Value = serde_json::from_slice(&history.stdout).expect("JSON");
    assert!(
        history
            .as_array()
            .expect("array")
            .iter()
            .any(|h| h["outcome"] == "inconclusive" && h["failed"].as_u64() >= Some(1)),
        "a window closed on failed measurements says so: {history}"
    );
    let table = evolve(dir.path(), &["history"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("(1 failed)"), "{table}");
    let events = evolve(
        dir.path(),
        &[
            "report",
            "--out",
            &dir.path().join("r.html").display().to_string(),
        ],
    );
    assert!(events.status.success(), "{}", stderr(&events));
    let html = std::fs::read_to_string(dir.path().join("r.html")).expect("report");
    assert!(
        html.contains("data-failed=\"1\""),
        "the report marks the failed window"
    );
}

/// Independent pricing for the stub's log: nano-USD per million tokens, rounded half up.
fn catalog_prices() -> std::collections::HashMap<String, Value> {
    let path = tests::bins::workspace_root().join("shared/catalog/models.json");
    let catalog: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("catalog")).expect("catalog");
    catalog["models"]
        .as_array()
        .expect("models")
        .iter()
        .map(|m| {
            let id = m["id"].as_str().expect("id").to_owned();
            let endpoint = if id.starts_with("global.") {
                "global"
            } else {
                "regional"
            };
            let price = m["prices"]
                .as_array()
                .expect("prices")
                .iter()
                .find(|p| p["endpoint"] == endpoint)
                .expect("price for endpoint")
                .clone();
            (id, price)
        })
        .collect()
}

#[test]
fn demo_on_bedrock_through_the_stub_counts_every_request_and_nano_dollar() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().expect("dir");
    let log = dir.path().join("stub.jsonl");
    let mut stub = Command::new(bin("bedrock-stub"))
        .arg("--log")
        .arg(&log)
        .stdout(Stdio::piped())
        .spawn()
        .expect("stub starts");
    let mut line = String::new();
    BufReader::new(stub.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("listening line");
    let url = line.trim().trim_start_matches("listening on ").to_owned();
    let out = Command::new(bin("evolve"))
        .arg("--state")
        .arg(dir.path().join("state"))
        .args(["demo", "--llm", "bedrock", "--generations", "5", "--json"])
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", &url)
        .env_remove("AWS_PROFILE")
        .output()
        .expect("evolve runs");
    let _ = stub.kill();
    let _ = stub.wait();
    assert!(out.status.success(), "{}", stderr(&out));
    let report = last_json(&out);
    assert_eq!(report["generations"], 5);
    let prices = catalog_prices();
    let mut requests = 0u64;
    let mut cost = 0u128;
    for entry in std::fs::read_to_string(&log).expect("log").lines() {
        let line: Value = serde_json::from_str(entry).expect("log line");
        requests += 1;
        if line["status"] != 200 {
            continue;
        }
        let price = &prices[line["model_id"].as_str().expect("model")];
        let usage = &line["usage"];
        let int = |v: &Value| u128::from(v.as_u64().expect("number"));
        let numerator = int(&usage["input"]) * int(&price["input"])
            + int(&usage["output"]) * int(&price["output"])
            + int(&usage["cache_read"]) * int(&price["cache_read"])
            + int(&usage["cache_write"]) * int(&price["cache_write_5m"]);
        cost += (numerator + 500_000) / 1_000_000;
    }
    assert!(requests > 0);
    assert_eq!(report["bedrock_requests"].as_u64(), Some(requests));
    assert_eq!(report["cost_nano_usd"].as_u64().map(u128::from), Some(cost));
    // `evolve cost` reports the same requests per role call, and nothing left held.
    let out = evolve(&dir.path().join("state"), &["cost", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let view = last_json(&out);
    let all = &view["requests_per_call"]["all"];
    assert_eq!(all["bedrock_requests"].as_u64(), Some(requests), "{view}");
    let calls = all["calls"].as_u64().expect("calls");
    assert!(calls > 0);
    let per_call = all["per_call"].as_f64().expect("per call");
    assert!((per_call - (requests * 100 / calls) as f64 / 100.0).abs() < 1e-9);
    assert!(all["max_per_call"].as_u64().expect("max") <= 9, "{view}");
    assert_eq!(view["holds"]["count"], 0, "{view}");
    assert_eq!(view["today"]["reserved_nano_usd"], 0, "{view}");
}

#[test]
fn approval_gate_stops_the_demo_and_approve_lets_it_continue() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path();
    let out = evolve(
        state,
        &[
            "demo",
            "--generations",
            "5",
            "--approval-threshold",
            "0",
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let report = last_json(&out);
    assert_eq!(report["decisions"]["pending"], 1, "{report}");
    let pending = report["awaiting_approval"]
        .as_str()
        .expect("the pending decision id")
        .to_owned();
    assert!(
        stderr(&out).contains(&format!("evolve approve {pending}")),
        "{}",
        stderr(&out)
    );

    let status = evolve(state, &["status", "--json"]);
    assert!(status.status.success(), "{}", stderr(&status));
    let status = last_json(&status);
    assert_eq!(status["status"], "awaiting_approval", "{status}");
    assert_eq!(
        status["pending_approvals"][0]["decision_id"],
        pending.as_str()
    );

    let wrong = evolve(state, &["reject", "dec_not_pending"]);
    assert_eq!(wrong.status.code(), Some(2), "{}", stderr(&wrong));

    let approve = evolve(
        state,
        &["approve", &pending, "--note", "checked the dashboards"],
    );
    assert!(approve.status.success(), "{}", stderr(&approve));
    assert!(
        stderr(&approve).contains("approved"),
        "{}",
        stderr(&approve)
    );

    let decisions = evolve(state, &["decisions", "--json", "--limit", "1000"]);
    let decisions = last_json(&decisions);
    let resolution = decisions
        .as_array()
        .expect("a list")
        .iter()
        .find(|d| d["resolves"] == pending.as_str())
        .expect("the approval is in the audit trail");
    assert_eq!(resolution["decision"], "APPROVE");
    assert_eq!(resolution["decided_by"], "operator");
    assert!(
        resolution["approver"]
            .as_str()
            .is_some_and(|a| a.starts_with("local user ")),
        "{resolution}"
    );
    assert!(
        resolution["reasoning"]
            .as_str()
            .is_some_and(|r| r.contains("checked the dashboards"))
    );

    let resumed = evolve(
        state,
        &[
            "demo",
            "--continue",
            "--generations",
            "2",
            "--approval-threshold",
            "0",
            "--approve-all",
            "--json",
        ],
    );
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    let resumed = last_json(&resumed);
    assert_eq!(resumed["generations"], 2, "{resumed}");
    assert_eq!(resumed["decisions"]["pending"], 0, "{resumed}");

    // `--since` filters; both lists print JSON.
    let recent = last_json(&evolve(
        state,
        &["history", "--json", "--since", "2000-01-01"],
    ));
    assert!(recent.as_array().is_some_and(|h| h.len() >= 3), "{recent}");
    let none = last_json(&evolve(
        state,
        &["decisions", "--json", "--since", "2999-01-01"],
    ));
    assert_eq!(none, serde_json::json!([]));
    let bad = evolve(state, &["history", "--since", "last tuesday"]);
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
}

/// Pauses the head of the only system in the store under `state` directly, as conflict
/// resolution would.
fn pause_head(state: &Path) {
    use shared::domain::{Head, HeadStatus};
    use shared::store::sqlite::SqliteStore;
    use shared::store::{EvolutionStore, Transaction, Write};
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let store = SqliteStore::open(state).expect("store");
        let id = store.list_systems().await.expect("systems")[0]
            .system_id
            .clone();
        let head = store.get_head(&id).await.expect("head").expect("exists");
        store
            .commit(Transaction {
                writes: vec![Write::UpdateHead {
                    expected_generation: head.generation,
                    expected_status: head.status,
                    head: Head {
                        status: HeadStatus::Paused,
                        evaluation: None,
                        ..head
                    },
                }],
                completion: None,
            })
            .await
            .expect("paused");
    });
}

#[test]
fn resume_brings_a_paused_head_back_to_stable_in_the_operators_name() {
    let dir = tempfile::tempdir().expect("dir");
    let state = dir.path();
    let dna = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/sqlite-evaluator/dna.json");
    let init = evolve(state, &["init", "--dna", &dna.display().to_string()]);
    assert!(init.status.success(), "{}", stderr(&init));

    let early = evolve(state, &["resume"]);
    assert_eq!(early.status.code(), Some(2), "{}", stderr(&early));
    assert!(
        stderr(&early).contains("is not paused"),
        "{}",
        stderr(&early)
    );

    pause_head(state);
    let status = last_json(&evolve(state, &["status", "--json"]));
    assert_eq!(status["status"], "paused", "{status}");
    // A run stops at once and says how to go on; the evaluator is never started.
    let run = evolve(
        state,
        &["run", "--evaluator", "false", "--generations", "1"],
    );
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(stderr(&run).contains("evolve resume"), "{}", stderr(&run));

    let resume = evolve(state, &["resume", "--note", "conflict understood"]);
    assert!(resume.status.success(), "{}", stderr(&resume));
    assert!(
        stderr(&resume).contains("resumed by local user "),
        "{}",
        stderr(&resume)
    );
    let status = last_json(&evolve(state, &["status", "--json"]));
    assert_eq!(status["status"], "stable", "{status}");

    let again = evolve(state, &["resume"]);
    assert_eq!(again.status.code(), Some(2), "{}", stderr(&again));
}

/// `evolve demo --noisy`: a service whose load drifts over the day and whose latency spikes,
/// judged by guardrails, a rank test over three samples and a canary on a fifth of the
/// instances. The demo shows each: a guardrail breach, a window extended and then inconclusive,
/// and canaries promoted after beating their concurrent control; the report lists the canary
/// verdicts and the guardrails.
#[test]
fn the_noisy_demo_shows_a_guardrail_breach_an_inconclusive_window_and_a_canary_promotion() {
    let dir = tempfile::tempdir().expect("dir");
    let out = evolve(dir.path(), &["demo", "--noisy", "--seed", "7"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let events = evolve(
        dir.path(),
        &["history", "--events", "--json", "--limit", "10000"],
    );
    assert!(events.status.success(), "{}", stderr(&events));
    let events: Value = serde_json::from_slice(&events.stdout).expect("JSON");
    let count = |kind: &str| {
        events
            .as_array()
            .expect("events")
            .iter()
            .filter(|e| e["type"] == kind)
            .count()
    };
    for kind in [
        "guardrail_breached",
        "evaluation_extended",
        "evaluation_inconclusive",
        "canary_promoted",
    ] {
        assert!(count(kind) >= 1, "no {kind} in {events:#}");
    }
    let history = evolve(dir.path(), &["history", "--json", "--limit", "10000"]);
    let history: Value = serde_json::from_slice(&history.stdout).expect("JSON");
    let canaries: Vec<&Value> = history
        .as_array()
        .expect("rows")
        .iter()
        .filter(|h| h.get("canary").is_some())
        .collect();
    assert!(!canaries.is_empty());
    for h in &canaries {
        let c = &h["canary"];
        assert_eq!(c["share"], 0.2);
        // Promoted canaries that survived the bake are the kept ones.
        assert_eq!(c["promoted"] == true, h["outcome"] == "keep", "{h:#}");
    }
    let page = std::fs::read_to_string(dir.path().join("report.html")).expect("report");
    assert!(
        page.contains(&format!("data-canaries=\"{}\"", canaries.len())),
        "the report lists every canary verdict"
    );
    assert!(page.contains("data-guardrails=\"3\""));
}
