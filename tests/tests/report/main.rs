//! `evolve report`: the page a real browser renders, and the page's numbers against the store's
//! (read back through the other `evolve` views).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tests::bins::workspace_bin as bin;

const CHROMIUM: &str = "/usr/bin/chromium";

fn evolve(state: &Path, args: &[&str]) -> Output {
    Command::new(bin("evolve"))
        .arg("--state")
        .arg(state)
        .args(args)
        .env_remove("EVOLVE_SYSTEM")
        .env_remove("EVOLVE_LLM")
        .env_remove("EVOLVE_STORE")
        .env_remove("EVOLVE_DAILY_BUDGET_USD")
        .stdin(Stdio::null())
        .output()
        .expect("evolve runs")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "evolve failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json(out: &Output) -> Value {
    serde_json::from_str(ok(out).trim()).expect("JSON on stdout")
}

/// The attributes of every opening `<tag ...>` in `html` that has attribute `filter`.
fn tags(html: &str, tag: &str, filter: &str) -> Vec<HashMap<String, String>> {
    let open = format!("<{tag} ");
    let mut found = Vec::new();
    let mut rest = html;
    while let Some(start) = rest.find(&open) {
        let body = &rest[start + open.len()..];
        let end = body.find('>').expect("tag closes");
        let attrs = attributes(&body[..end]);
        if attrs.contains_key(filter) {
            found.push(attrs);
        }
        rest = &body[end..];
    }
    found
}

/// `name="value"` pairs (the report always quotes with `"` and escapes `"` inside values).
fn attributes(text: &str) -> HashMap<String, String> {
    let mut attrs = HashMap::new();
    let mut rest = text.trim();
    while let Some(eq) = rest.find("=\"") {
        let name = rest[..eq].trim().to_owned();
        let after = &rest[eq + 2..];
        let close = after.find('"').expect("attribute value closes");
        attrs.insert(name, after[..close].to_owned());
        rest = after[close + 1..].trim_start();
    }
    attrs
}

fn num<T: std::str::FromStr>(attrs: &HashMap<String, String>, name: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    attrs
        .get(name)
        .unwrap_or_else(|| panic!("no data-{name} in {attrs:?}"))
        .parse()
        .unwrap_or_else(|e| panic!("{name}: {e:?}"))
}

/// Starts the Bedrock stub; returns it and its URL.
fn stub(log: &Path) -> (std::process::Child, String) {
    let mut stub = Command::new(bin("bedrock-stub"))
        .arg("--log")
        .arg(log)
        .stdout(Stdio::piped())
        .spawn()
        .expect("stub starts");
    let mut line = String::new();
    BufReader::new(stub.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("listening line");
    let url = line.trim().trim_start_matches("listening on ").to_owned();
    (stub, url)
}

#[test]
#[expect(
    clippy::float_cmp,
    reason = "the page carries the store's numbers exactly, not approximately"
)]
fn report_numbers_equal_the_stores_and_each_chart_has_a_point_per_generation() {
    let dir = tempfile::tempdir().expect("dir");
    let state = dir.path().join("state");
    // On Bedrock (the stub) with a daily budget, so spend and the budget line are real numbers.
    let (mut stub, url) = stub(&dir.path().join("stub.jsonl"));
    let run = Command::new(bin("evolve"))
        .arg("--state")
        .arg(&state)
        .args(["demo", "--llm", "bedrock", "--generations", "8"])
        .args(["--daily-budget-usd", "0.5"])
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", &url)
        .env_remove("AWS_PROFILE")
        .env_remove("EVOLVE_STORE")
        .env_remove("EVOLVE_SYSTEM")
        .stdin(Stdio::null())
        .output()
        .expect("evolve runs");
    let _ = stub.kill();
    let _ = stub.wait();
    ok(&run);
    let default = state.join("report.html");
    assert!(
        String::from_utf8_lossy(&run.stderr).contains(&format!("report in {}", default.display())),
        "demo names its report on stderr: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(default.is_file(), "demo wrote {}", default.display());

    let out = dir.path().join("out.html");
    let printed = ok(&evolve(
        &state,
        &[
            "report",
            "--out",
            &out.display().to_string(),
            "--daily-budget-usd",
            "0.5",
        ],
    ));
    assert_eq!(printed.trim(), out.display().to_string(), "prints the path");
    let html = std::fs::read_to_string(&out).expect("report");

    // Self-contained: nothing to fetch, nothing to run.
    for needle in ["<script", "<link", "src=", "@import", "url(", "<iframe"] {
        assert!(!html.contains(needle), "the report contains {needle:?}");
    }

    let history = json(&evolve(&state, &["history", "--limit", "100000", "--json"]));
    let history = history.as_array().expect("history array");
    let status = json(&evolve(&state, &["status", "--json"]));
    let decisions = json(&evolve(
        &state,
        &["decisions", "--limit", "100000", "--json"],
    ));
    let decisions = decisions.as_array().expect("decisions array");
    let cost = json(&evolve(&state, &["cost", "--json"]));

    let summary = tags(&html, "section", "data-generations")
        .into_iter()
        .find(|s| s.get("id").map(String::as_str) == Some("summary"))
        .expect("summary section");
    let head: u64 = num(&summary, "data-head-generation");
    assert_eq!(Some(head), status["generation"].as_u64());
    assert_eq!(
        Some(summary["data-head-status"].as_str()),
        status["status"].as_str()
    );
    assert_eq!(num::<u64>(&summary, "data-generations"), head + 1);
    assert_eq!(num::<usize>(&summary, "data-evaluations"), history.len());
    assert_eq!(
        num::<f64>(&summary, "data-final-fitness"),
        status["fitness"].as_f64().expect("fitness"),
    );
    assert_eq!(num::<usize>(&summary, "data-decisions"), decisions.len());
    let by_model = cost["by_model"].as_object().expect("by_model");
    let total: u64 = by_model
        .values()
        .map(|m| m["cost_nano_usd"].as_u64().expect("cost"))
        .sum();
    assert!(total > 0, "the stub's calls cost money: {cost}");
    assert_eq!(num::<u64>(&summary, "data-total-cost-nano"), total);

    let figures = tags(&html, "figure", "data-chart");
    let chart = |name: &str| {
        figures
            .iter()
            .find(|f| f["data-chart"] == name)
            .unwrap_or_else(|| panic!("no {name} chart"))
    };
    // Fitness: one point per closed evaluation, kept and rolled back counted as the store has them.
    let fitness = chart("fitness");
    assert_eq!(num::<usize>(fitness, "data-points"), history.len());
    let mutated = |h: &&Value| !h["changes"].as_array().is_none_or(Vec::is_empty);
    let kept = history
        .iter()
        .filter(mutated)
        .filter(|h| h["outcome"] == "keep")
        .count();
    let rolled_back = history.iter().filter(mutated).count() - kept;
    assert_eq!(num::<usize>(fitness, "data-kept"), kept);
    assert_eq!(num::<usize>(fitness, "data-rollbacks"), rolled_back);
    assert!(rolled_back + kept >= 8, "{history:?}");
    assert!(
        fitness.contains_key("data-points") && html.contains("<svg"),
        "charts are inline SVG"
    );
    // Genes: one chart per gene, one point per generation.
    let genes: Vec<_> = figures
        .iter()
        .filter(|f| f["data-chart"] == "gene")
        .collect();
    assert!(genes.len() >= 5, "{genes:?}");
    for gene in genes {
        assert_eq!(num::<u64>(gene, "data-points"), head + 1, "{gene:?}");
    }
    // Spend: the ledger's money and the budget from the flag.
    let spend = chart("spend");
    assert_eq!(num::<u64>(spend, "data-total-cost-nano"), total);
    assert_eq!(num::<u64>(spend, "data-daily-budget-nano"), 500_000_000);
    let rows = tags(&html, "tr", "data-cost-nano");
    let decision_rows: Vec<_> = rows
        .iter()
        .filter(|r| r.contains_key("data-risk"))
        .collect();
    assert_eq!(decision_rows.len(), decisions.len());
    for (row, d) in decision_rows.iter().zip(decisions) {
        assert_eq!(
            num::<f64>(row, "data-risk"),
            d["risk_assessment"]["overall_risk"].as_f64().expect("risk")
        );
        assert_eq!(
            Some(num::<u64>(row, "data-cost-nano")),
            d["cost_analysis"]["cost_nano_usd"].as_u64().or(Some(0))
        );
    }
    for d in decisions {
        let verdict = d["decision"].as_str().expect("decision");
        assert!(
            html.contains(&format!("rec-{verdict}\">{verdict}<")),
            "{verdict}"
        );
    }
    // Budget mode: at least the mode in force when the records begin.
    assert!(num::<usize>(chart("budget-mode"), "data-points") >= 1);
    // Predictions: one point per planned mutation that produced a valid score.
    let predicted = history
        .iter()
        .filter(|h| h.get("plan_step").is_some_and(|s| !s.is_null()))
        .filter(|h| !h["fitness"].is_null() && !h["baseline_fitness"].is_null())
        .count();
    assert_eq!(num::<usize>(chart("predictions"), "data-points"), predicted);
}

/// Runs headless Chromium on `page`, writing a screenshot; bounded, and killed when late.
fn screenshot(page: &Path, png: &Path, profile: &Path) {
    assert!(
        Path::new(CHROMIUM).is_file(),
        "{CHROMIUM} is missing: `make test-tools` installs Debian's chromium \
         (apt-get install --no-install-recommends chromium)"
    );
    let mut child = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg("--window-size=1280,2400")
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromium starts");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(status) = child.try_wait().expect("chromium wait") {
            assert!(status.success(), "chromium exited with {status}");
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish its screenshot within 90 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_headless_browser_renders_the_demo_report_with_charts() {
    let dir = tempfile::tempdir().expect("dir");
    let state = dir.path().join("state");
    ok(&evolve(&state, &["demo", "--generations", "10"]));
    let page = state.join("report.html");
    assert!(page.is_file(), "demo wrote its report");
    let png = dir.path().join("report.png");
    screenshot(&page, &png, &dir.path().join("profile"));

    let decoder = png::Decoder::new(BufReader::new(
        std::fs::File::open(&png).expect("the screenshot exists"),
    ));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size().expect("size")];
    let info = reader.next_frame(&mut buf).expect("a frame");
    let channels = info.color_type.samples();
    assert!(channels >= 3, "colour screenshot: {:?}", info.color_type);
    let pixels: Vec<[u8; 3]> = buf[..info.buffer_size()]
        .chunks_exact(channels)
        .map(|p| [p[0], p[1], p[2]])
        .collect();
    let total = pixels.len() as f64;
    let non_white = pixels.iter().filter(|p| **p != [255, 255, 255]).count() as f64;
    let spread = |p: &[u8; 3]| {
        let max = p.iter().max().copied().unwrap_or(0);
        let min = p.iter().min().copied().unwrap_or(0);
        (max, max - min)
    };
    // Text and axes draw dark pixels; the charts' series and markers draw saturated ones.
    let dark = pixels.iter().filter(|p| spread(p).0 < 160).count() as f64;
    let colourful = pixels.iter().filter(|p| spread(p).1 > 80).count() as f64;
    let mut colours: Vec<[u8; 3]> = pixels.iter().map(|p| p.map(|c| c & 0xF0)).collect();
    colours.sort_unstable();
    colours.dedup();
    eprintln!(
        "screenshot: {:.1}% non-white, {:.2}% dark, {:.2}% colourful, {} colours",
        non_white / total * 100.0,
        dark / total * 100.0,
        colourful / total * 100.0,
        colours.len()
    );
    assert!(
        non_white / total > 0.2,
        "the page looks blank: {:.1}% non-white",
        non_white / total * 100.0
    );
    assert!(
        dark / total > 0.01,
        "no text or axes drawn: {:.2}% dark pixels",
        dark / total * 100.0
    );
    assert!(
        colourful / total > 0.001,
        "no chart series drawn: {:.2}% saturated pixels",
        colourful / total * 100.0
    );
    assert!(
        colours.len() >= 12,
        "only {} distinct colours: the charts' colours are missing",
        colours.len()
    );
}

/// A system with a guardrail and two objectives: the report's judging section counts the
/// breaches the history holds, and its Pareto front is the kept generations no other kept
/// generation dominates, computed here from `evolve history --json`.
#[test]
fn the_report_shows_guardrails_objectives_and_the_pareto_front_of_kept_generations() {
    let dir = tempfile::tempdir().expect("dir");
    let state = dir.path().join("state");
    let dna = dir.path().join("dna.json");
    std::fs::write(
        &dna,
        r#"{"system_id": "judged",
            "genes": {"x": {"type": "int", "min": 0, "max": 100, "max_step": 10, "value": 50},
                      "y": {"type": "int", "min": 0, "max": 100, "max_step": 10, "value": 50}},
            "guardrails": ["p99_latency_ms <= 240"],
            "objectives": [
              {"metric": "throughput", "direction": "maximize"},
              {"metric": "p99_latency_ms", "direction": "minimize", "weight": 0.5}]}"#,
    )
    .expect("dna");
    // Throughput grows with x and y; latency with x much faster than with y, so raising x
    // soon breaks the guardrail and the kept generations trade one objective for the other.
    let measure = dir.path().join("measure.py");
    std::fs::write(
        &measure,
        "import json, sys\ng = json.load(sys.stdin)\n\
         print(json.dumps({'score': 0, 'metrics': {\
         'throughput': 8 * g['x'] + 3 * g['y'], \
         'p99_latency_ms': 100 + 2 * g['x'] + 0.5 * g['y']}}))\n",
    )
    .expect("evaluator");
    ok(&evolve(
        &state,
        &["init", "--dna", dna.to_str().expect("utf-8")],
    ));
    ok(&evolve(
        &state,
        &[
            "run",
            "--evaluator",
            &format!("python3 {}", measure.display()),
            "--generations",
            "9",
        ],
    ));
    let out = dir.path().join("judged.html");
    ok(&evolve(
        &state,
        &[
            "report",
            "--out",
            out.to_str().expect("utf-8"),
            "--pareto",
            "throughput,p99_latency_ms",
        ],
    ));
    let page = std::fs::read_to_string(&out).expect("page");
    let history = json(&evolve(&state, &["history", "--limit", "1000", "--json"]));
    let entries = history.as_array().expect("history rows");
    let breached = entries
        .iter()
        .filter(|e| e["breaches"].as_array().is_some_and(|b| !b.is_empty()))
        .count();
    assert!(
        breached >= 1,
        "the engine never crossed the guardrail: {history:#}"
    );
    let section = &tags(&page, "section", "data-guardrails")[0];
    assert_eq!(num::<usize>(section, "data-guardrails"), 1);
    assert_eq!(num::<usize>(section, "data-breaches"), breached);
    let rail = &tags(&page, "tr", "data-guardrail")[0];
    assert_eq!(rail["data-guardrail"], "p99_latency_ms &lt;= 240");
    assert_eq!(num::<usize>(rail, "data-breaches"), breached);

    // The kept generations on both objectives, and the front by hand.
    let kept: Vec<(u64, f64, f64)> = entries
        .iter()
        .filter(|e| e["outcome"] == "keep")
        .map(|e| {
            (
                e["generation"].as_u64().expect("generation"),
                e["metrics"]["throughput"].as_f64().expect("throughput"),
                e["metrics"]["p99_latency_ms"].as_f64().expect("latency"),
            )
        })
        .collect();
    assert!(kept.len() >= 2, "{history:#}");
    let beaten = |&(_, t, l): &(u64, f64, f64)| {
        kept.iter()
            .any(|&(_, t2, l2)| t2 >= t && l2 <= l && (t2 > t || l2 < l))
    };
    let rows = tags(&page, "tr", "data-dominated");
    assert_eq!(rows.len(), kept.len());
    for point in &kept {
        let row = rows
            .iter()
            .find(|r| num::<u64>(r, "data-generation") == point.0)
            .expect("a row per kept generation");
        assert_eq!(
            row["data-dominated"],
            beaten(point).to_string(),
            "{point:?}"
        );
    }
    let figure = &tags(&page, "figure", "data-front")[0];
    assert_eq!(figure["data-chart"], "pareto");
    assert_eq!(num::<usize>(figure, "data-points"), kept.len());
}
