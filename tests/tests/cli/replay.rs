//! `evolve replay`: the recorded decisions asked again under other settings, on a private copy
//! of the store, with a budget of its own.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::Value;
use shared::domain::sha256_hex;
use shared::llm::catalog::ModelCatalog;

use super::{bin, evolve, last_json, stderr};

/// SHA-256 of every file of the state directory, by name: the store, its journal if any, the
/// report.
fn checksums(dir: &Path) -> Vec<(String, String)> {
    let mut sums: Vec<(String, String)> = std::fs::read_dir(dir)
        .expect("state dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_file())
        .map(|p| {
            let bytes = std::fs::read(&p).expect("read");
            (
                p.file_name().expect("name").to_string_lossy().into_owned(),
                sha256_hex(&bytes),
            )
        })
        .collect();
    sums.sort();
    sums
}

fn replay(state: &Path, args: &[&str]) -> Value {
    let mut all = vec!["replay", "--since", "2000-01-01", "--json"];
    all.extend_from_slice(args);
    let out = evolve(state, &all);
    assert!(out.status.success(), "{}", stderr(&out));
    last_json(&out)
}

#[test]
fn the_local_engine_replays_the_recorded_decisions_exactly_and_the_store_is_untouched() {
    let dir = tempfile::tempdir().expect("dir");
    let out = evolve(dir.path(), &["demo", "--seed", "7", "--generations", "12"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let before = checksums(dir.path());
    let report = replay(dir.path(), &["--seed", "7"]);
    assert_eq!(
        checksums(dir.path()),
        before,
        "the replay changed the state directory"
    );

    let recorded = evolve(dir.path(), &["decisions", "--json", "--limit", "1000"]);
    let recorded: Value = serde_json::from_slice(&recorded.stdout).expect("decisions JSON");
    let recorded = recorded.as_array().expect("decisions");
    let decisions = report["decisions"].as_array().expect("decisions");
    assert_eq!(decisions.len(), recorded.len());
    assert!(decisions.len() >= 10, "{} decisions", decisions.len());
    for d in decisions {
        // The same verdict, by the same engine, for the same reasons.
        for field in ["decision", "decided_by", "model", "reasoning"] {
            assert_eq!(d["recorded"][field], d["replayed"][field], "{field}: {d}");
        }
    }
    let agreement = &report["agreement"];
    assert_eq!(agreement["agreed"], agreement["compared"]);
    assert!(report["calls"].as_array().expect("calls").len() >= 2);
    assert_eq!(report["mode_changes"].as_array().map(Vec::len), Some(0));
    assert_eq!(report["skipped"].as_array().map(Vec::len), Some(0));

    // A gate at zero holds every approval whose risk is above zero: those flip, nothing else.
    let gated = replay(dir.path(), &["--seed", "7", "--approval-threshold", "0"]);
    let mut flips = 0;
    for d in gated["decisions"].as_array().expect("decisions") {
        if d["recorded"]["decision"] == d["replayed"]["decision"] {
            continue;
        }
        flips += 1;
        assert_eq!(d["recorded"]["decision"], "APPROVE", "{d}");
        assert_eq!(d["replayed"]["decision"], "PENDING_APPROVAL", "{d}");
    }
    assert!(flips > 0);
    assert_eq!(
        gated["agreement"]["agreed"].as_u64(),
        Some(decisions.len() as u64 - flips)
    );
    assert_eq!(checksums(dir.path()), before);

    // The report shows the comparison: the flips with both reasonings.
    let elsewhere = tempfile::tempdir().expect("dir");
    let saved = elsewhere.path().join("replay.json");
    std::fs::write(&saved, gated.to_string()).expect("write");
    let page = elsewhere.path().join("report.html");
    let out = evolve(
        dir.path(),
        &[
            "report",
            "--replay",
            saved.to_str().expect("path"),
            "--out",
            page.to_str().expect("path"),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let html = std::fs::read_to_string(&page).expect("report");
    assert!(
        html.contains(&format!("data-flips=\"{flips}\"")),
        "no what-if section"
    );
    assert!(
        html.contains("held for approval: risk"),
        "the replayed reasoning is shown"
    );
}

/// The Bedrock stub binary on a free port; killed when dropped.
struct Stub(Child, String);

impl Stub {
    fn start() -> Self {
        let mut child = Command::new(bin("bedrock-stub"))
            .stdout(Stdio::piped())
            .spawn()
            .expect("stub starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("listening line");
        let url = line.trim().trim_start_matches("listening on ").to_owned();
        Self(child, url)
    }

    fn replay(&self, state: &Path, args: &[&str]) -> Value {
        let mut all = vec![
            "replay",
            "--since",
            "2000-01-01",
            "--json",
            "--llm",
            "bedrock",
        ];
        all.extend_from_slice(args);
        let out = Command::new(bin("evolve"))
            .arg("--state")
            .arg(state)
            .args(&all)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", &self.1)
            .env_remove("AWS_PROFILE")
            .env_remove("EVOLVE_SYSTEM")
            .env_remove("EVOLVE_DAILY_BUDGET_USD")
            .env_remove("EVOLVE_MODEL_CATALOG")
            .stdin(Stdio::null())
            .output()
            .expect("evolve runs");
        assert!(out.status.success(), "{}", stderr(&out));
        last_json(&out)
    }
}

impl Drop for Stub {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The built-in catalog at a tenth of its prices, as an operator's file.
fn cheaper_catalog(dir: &Path) -> std::path::PathBuf {
    let mut catalog = ModelCatalog::embedded().expect("built-in catalog");
    for price in catalog.models.iter_mut().flat_map(|m| m.prices.iter_mut()) {
        for rate in [
            &mut price.input,
            &mut price.output,
            &mut price.cache_read,
            &mut price.cache_write_5m,
            &mut price.cache_write_1h,
        ] {
            *rate /= 10;
        }
    }
    let path = dir.join("cheaper.json");
    std::fs::write(&path, serde_json::to_string(&catalog).expect("encode")).expect("write catalog");
    path
}

/// The replayed items as the replay walks them (time, then analyses, plans, decisions), with
/// their replayed cost.
fn replayed_items(report: &Value) -> Vec<(String, u8, u64)> {
    let mut items: Vec<(String, u8, u64)> = report["calls"]
        .as_array()
        .expect("calls")
        .iter()
        .map(|c| {
            let order = u8::from(c["role"] != "analyze");
            (
                c["at"].as_str().expect("at").to_owned(),
                order,
                c["replayed_nano_usd"].as_u64().expect("cost"),
            )
        })
        .collect();
    items.extend(
        report["decisions"]
            .as_array()
            .expect("decisions")
            .iter()
            .map(|d| {
                (
                    d["at"].as_str().expect("at").to_owned(),
                    2,
                    d["replayed"]["cost_nano_usd"].as_u64().expect("cost"),
                )
            }),
    );
    items.sort();
    items
}

#[test]
fn on_bedrock_a_cheaper_catalog_spends_less_and_a_small_budget_changes_the_mode_where_spend_crosses_it()
 {
    let dir = tempfile::tempdir().expect("dir");
    let out = evolve(dir.path(), &["demo", "--seed", "7"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let before = checksums(dir.path());
    let stub = Stub::start();

    let full = stub.replay(dir.path(), &[]);
    let full_cost = full["replayed_nano_usd"].as_u64().expect("spend");
    assert!(full_cost > 0, "{full}");
    assert_eq!(
        full["recorded_nano_usd"], 0,
        "the demo ran on the free local engine"
    );
    assert_eq!(full["mode_changes"].as_array().map(Vec::len), Some(0));
    let rows: u64 = full["spend"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r["replayed_nano_usd"].as_u64().expect("row"))
        .sum();
    assert_eq!(rows, full_cost, "the rows add up to the total");

    let elsewhere = tempfile::tempdir().expect("dir");
    let catalog = cheaper_catalog(elsewhere.path());
    let cheap = stub.replay(
        dir.path(),
        &["--model-catalog", catalog.to_str().expect("path")],
    );
    let cheap_cost = cheap["replayed_nano_usd"].as_u64().expect("spend");
    assert!(
        cheap_cost > 0 && cheap_cost < full_cost,
        "{cheap_cost} against {full_cost}"
    );

    // A daily budget of 90% of what the replay spends: the mode turns economy before the first
    // item that finds 80% of it spent that day. (Much less, and every call's reservation, sized
    // for its longest answer, would be refused before the spend reached 80%.)
    let budget_nano = full_cost * 9 / 10;
    let budget = format!(
        "{}.{:09}",
        budget_nano / 1_000_000_000,
        budget_nano % 1_000_000_000
    );
    let tight = stub.replay(dir.path(), &["--daily-budget-usd", &budget]);
    let changes = tight["mode_changes"].as_array().expect("changes");
    assert!(!changes.is_empty(), "{tight}");
    assert_eq!(changes[0]["from"], "normal");
    assert_eq!(changes[0]["to"], "economy");
    let mut spent_today = 0u64;
    let mut day = String::new();
    let mut expected = None;
    for (at, _, cost) in replayed_items(&tight) {
        if at[..10] != day {
            day = at[..10].to_owned();
            spent_today = 0;
        }
        if spent_today * 100 >= budget_nano * 80 {
            expected = Some(at);
            break;
        }
        spent_today += cost;
    }
    let expected = expected.expect("the replay's spend crosses 80% of the budget");
    let at: chrono::DateTime<chrono::Utc> = changes[0]["at"]
        .as_str()
        .expect("at")
        .parse()
        .expect("time");
    let expected: chrono::DateTime<chrono::Utc> = expected.parse().expect("time");
    assert_eq!(at, expected, "{changes:?}");
    assert!(
        tight["replayed_nano_usd"].as_u64().expect("spend") < full_cost,
        "economy and the pause spend less"
    );
    assert_eq!(
        checksums(dir.path()),
        before,
        "the replays changed the store"
    );
}
