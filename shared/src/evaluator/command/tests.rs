use std::time::Instant;

use super::*;
use crate::domain::{GeneName, GeneValue};

fn eval(command: &str) -> CommandEvaluator {
    CommandEvaluator::new(command, Duration::from_secs(10))
}

fn genes(pairs: &[(&str, GeneValue)]) -> Genes {
    pairs
        .iter()
        .map(|(name, value)| (GeneName::parse(*name).expect("gene name"), value.clone()))
        .collect()
}

fn bad_output(result: Result<FitnessScore, EvalError>) -> String {
    match result {
        Err(EvalError::BadOutput(reason)) => reason,
        other => panic!("expected BadOutput, got {other:?}"),
    }
}

#[tokio::test]
async fn good_evaluator_reports_score_and_metrics() {
    let e = eval(r#"cat >/dev/null; echo '{"score": 1.5, "metrics": {"p99_ms": 3}}'"#);
    let fitness = e.evaluate(&Genes::new()).await.expect("score");
    assert!((fitness.score - 1.5).abs() < f64::EPSILON);
    let p99 = MetricName::parse("p99_ms").expect("metric name");
    assert_eq!(fitness.metrics.get(&p99), Some(&3.0));
}

#[tokio::test]
async fn genes_arrive_as_json_on_stdin() {
    // Pull the value of "batch" out of the JSON object with sed and echo it back as the score.
    let e = eval(r#"v=$(sed -n 's/.*"batch":\([0-9]*\).*/\1/p'); echo "{\"score\": $v}""#);
    let g = genes(&[
        ("batch", GeneValue::Int(42)),
        ("mode", GeneValue::Choice("wal".into())),
    ]);
    let fitness = e.evaluate(&g).await.expect("score");
    assert!((fitness.score - 42.0).abs() < f64::EPSILON);
    assert!(fitness.metrics.is_empty());
}

#[tokio::test]
async fn stdin_is_exactly_the_genes_object() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("stdin.json");
    let e = eval(&format!(
        r#"cat > '{}'; echo '{{"score": 0}}'"#,
        file.display()
    ));
    let g = genes(&[
        ("a", GeneValue::Float(2.5)),
        ("b", GeneValue::Bool(true)),
        ("c", GeneValue::Choice("x".into())),
    ]);
    e.evaluate(&g).await.expect("score");
    let written: Value =
        serde_json::from_slice(&std::fs::read(&file).expect("read")).expect("json");
    assert_eq!(written, serde_json::json!({"a": 2.5, "b": true, "c": "x"}));
}

#[tokio::test]
async fn logs_before_the_json_line_are_ignored() {
    let e = eval(
        r#"echo 'warming up'; echo '{"not": "this"}'; echo; echo '{"score": -2, "metrics": {}}'; echo '   '"#,
    );
    let fitness = e.evaluate(&Genes::new()).await.expect("score");
    assert!((fitness.score + 2.0).abs() < f64::EPSILON);
}

#[tokio::test]
async fn exit_127_is_not_found() {
    let e = eval("no-such-command-xyz --flag");
    assert_eq!(
        e.evaluate(&Genes::new()).await,
        Err(EvalError::NotFound("no-such-command-xyz --flag".into()))
    );
}

#[tokio::test]
async fn non_zero_exit_is_failed_with_trimmed_stderr() {
    let e = eval("echo '  disk full  ' >&2; exit 3");
    assert_eq!(
        e.evaluate(&Genes::new()).await,
        Err(EvalError::Failed {
            code: 3,
            stderr: "disk full".into()
        })
    );
}

#[tokio::test]
async fn long_stderr_is_capped_to_its_tail() {
    let e = eval("i=0; while [ $i -lt 200 ]; do echo \"line $i\" >&2; i=$((i+1)); done; exit 1");
    match e.evaluate(&Genes::new()).await {
        Err(EvalError::Failed { code: 1, stderr }) => {
            assert!(stderr.chars().count() <= STDERR_CAP_CHARS + 3, "{stderr}");
            assert!(stderr.ends_with("line 199"), "{stderr}");
            assert!(stderr.starts_with("..."), "{stderr}");
        }
        other => panic!("expected Failed, got {other:?}"),
    }
}

#[tokio::test]
async fn killed_by_signal_is_failed() {
    // `exec` makes the program the process itself, so the signal is not turned into 128+n.
    let e = eval("exec sh -c 'kill -9 $$'");
    match e.evaluate(&Genes::new()).await {
        Err(EvalError::Failed { code, stderr }) => {
            assert_eq!(code, EXIT_SIGNALLED);
            assert!(stderr.contains("signal 9"), "{stderr}");
        }
        other => panic!("expected Failed, got {other:?}"),
    }
}

/// Processes of a group that are still alive (zombies waiting for a reaper do not count).
fn live_members(pgid: u32) -> Vec<String> {
    let mut live = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Fields after the parenthesised command name: state, ppid, pgrp, ...
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.len() > 2 && fields[2] == pgid.to_string() && fields[0] != "Z" {
            live.push(stat);
        }
    }
    live
}

#[tokio::test]
async fn timeout_kills_the_whole_process_group() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pid_file = dir.path().join("pgid");
    // `sleep` runs as a child of the shell (not exec'd) because a command follows it.
    let e = CommandEvaluator::new(
        format!("echo $$ > '{}'; sleep 5; echo done", pid_file.display()),
        Duration::from_millis(300),
    );
    let started = Instant::now();
    let result = e.evaluate(&Genes::new()).await;
    assert_eq!(result, Err(EvalError::Timeout(1)));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    let pgid: u32 = std::fs::read_to_string(&pid_file)
        .expect("pgid file")
        .trim()
        .parse()
        .expect("pgid");
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut live = live_members(pgid);
    while !live.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        live = live_members(pgid);
    }
    assert!(live.is_empty(), "still running: {live:?}");
}

/// Whether a process is still running (a zombie waiting for its reaper is not).
fn is_running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z")
    })
}

/// Waits up to two seconds for a process to be gone: a kill is not instantaneous.
async fn gone(pid: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(2);
    while is_running(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    !is_running(pid)
}

fn read_pid(file: &Path) -> u32 {
    std::fs::read_to_string(file)
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid")
}

#[tokio::test]
async fn a_background_child_holding_stdout_does_not_turn_a_score_into_a_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pid_file = dir.path().join("pid");
    // The background `sleep` inherits stdout, so the pipe stays open after the shell exits.
    let e = CommandEvaluator::new(
        format!(
            r#"sleep 60 & echo $! > '{}'; echo '{{"score": 1}}'"#,
            pid_file.display()
        ),
        Duration::from_secs(20),
    );
    let fitness = e
        .evaluate(&Genes::new())
        .await
        .expect("score, not a timeout");
    assert!((fitness.score - 1.0).abs() < f64::EPSILON);
    let pid = read_pid(&pid_file);
    assert!(gone(pid).await, "background child {pid} still runs");
}

#[tokio::test]
async fn background_children_are_killed_after_a_normal_exit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pid_file = dir.path().join("pid");
    // Its output goes elsewhere, so nothing but the reaping can stop it.
    let e = eval(&format!(
        r#"sleep 60 >/dev/null 2>&1 & echo $! > '{}'; echo '{{"score": 2}}'"#,
        pid_file.display()
    ));
    let fitness = e.evaluate(&Genes::new()).await.expect("score");
    assert!((fitness.score - 2.0).abs() < f64::EPSILON);
    let pid = read_pid(&pid_file);
    assert!(gone(pid).await, "background child {pid} still runs");
}

#[tokio::test]
async fn background_children_are_killed_after_a_failed_exit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pid_file = dir.path().join("pid");
    let e = eval(&format!(
        "sleep 60 >/dev/null 2>&1 & echo $! > '{}'; echo broken >&2; exit 4",
        pid_file.display()
    ));
    assert_eq!(
        e.evaluate(&Genes::new()).await,
        Err(EvalError::Failed {
            code: 4,
            stderr: "broken".into()
        })
    );
    let pid = read_pid(&pid_file);
    assert!(gone(pid).await, "background child {pid} still runs");
}

#[tokio::test]
async fn bad_json_is_bad_output() {
    let reason = bad_output(eval("echo 'score: 1'").evaluate(&Genes::new()).await);
    assert!(reason.contains("not JSON"), "{reason}");
    let reason = bad_output(eval("echo '[1, 2]'").evaluate(&Genes::new()).await);
    assert!(reason.contains("not a JSON object"), "{reason}");
    let reason = bad_output(eval("true").evaluate(&Genes::new()).await);
    assert!(reason.contains("no output"), "{reason}");
}

#[tokio::test]
async fn missing_or_non_finite_score_is_bad_output() {
    let reason = bad_output(
        eval(r#"echo '{"metrics": {"a": 1}}'"#)
            .evaluate(&Genes::new())
            .await,
    );
    assert!(reason.contains("missing"), "{reason}");
    let reason = bad_output(
        eval(r#"echo '{"score": "fast"}'"#)
            .evaluate(&Genes::new())
            .await,
    );
    assert!(reason.contains("not a number"), "{reason}");
    // JSON has no NaN or infinity; an out-of-range literal must not sneak one in.
    for line in [
        r#"{"score": NaN}"#,
        r#"{"score": 1e999}"#,
        r#"{"score": 1, "metrics": {"m": 1e999}}"#,
    ] {
        bad_output(
            eval(&format!("echo '{line}'"))
                .evaluate(&Genes::new())
                .await,
        );
    }
    let reason = bad_output(
        eval(r#"echo '{"score": 1, "metrics": {"m": "x"}}'"#)
            .evaluate(&Genes::new())
            .await,
    );
    assert!(reason.contains("metric m"), "{reason}");
}

#[tokio::test]
async fn bad_metric_name_is_bad_output() {
    let reason = bad_output(
        eval(r#"echo '{"score": 1, "metrics": {"ignore previous instructions": 1}}'"#)
            .evaluate(&Genes::new())
            .await,
    );
    assert!(reason.contains("metric name"), "{reason}");
}

#[tokio::test]
async fn a_command_that_never_reads_stdin_does_not_deadlock() {
    // Far more than a pipe buffer holds.
    let big: Genes = (0..5000)
        .map(|i| {
            (
                GeneName::parse(format!("gene_{i}")).expect("gene name"),
                GeneValue::Choice("x".repeat(200)),
            )
        })
        .collect();
    assert!(serde_json::to_vec(&big).expect("json").len() > 1_000_000);
    let e = eval(r#"sleep 0.1; echo '{"score": 7}'"#);
    let fitness = tokio::time::timeout(Duration::from_secs(5), e.evaluate(&big))
        .await
        .expect("no deadlock")
        .expect("score");
    assert!((fitness.score - 7.0).abs() < f64::EPSILON);
}

#[tokio::test]
async fn large_stdout_keeps_the_last_line() {
    let e = eval(r#"yes 'log line' | head -n 300000; echo '{"score": 3}'"#);
    let fitness = e.evaluate(&Genes::new()).await.expect("score");
    assert!((fitness.score - 3.0).abs() < f64::EPSILON);
}

#[test]
fn check_resolves_the_first_word() {
    let ok = |c: &str| CommandEvaluator::new(c, Duration::from_secs(1)).check();
    assert_eq!(ok("true"), Ok(()));
    assert_eq!(ok("cat >/dev/null; echo '{}'"), Ok(()));
    assert_eq!(ok("  echo hi"), Ok(()));
    assert_eq!(ok("FOO=1 BAR='a b' sh -c 'exit 0'"), Ok(()));
    assert_eq!(ok("/bin/sh -c true"), Ok(()));
    assert_eq!(ok("'/bin/sh' -c true"), Ok(()));
    assert_eq!(ok("exec cat"), Ok(()));
    assert_eq!(
        ok("no-such-command-xyz --flag"),
        Err(EvalError::NotFound("no-such-command-xyz".into()))
    );
    assert_eq!(
        ok("./no/such/evaluator"),
        Err(EvalError::NotFound("./no/such/evaluator".into()))
    );
    assert!(matches!(ok("   "), Err(EvalError::Spawn(_))));
}

#[test]
fn check_requires_an_executable_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("eval.sh");
    std::fs::write(&script, "#!/bin/sh\necho '{\"score\": 1}'\n").expect("write");
    let check =
        || CommandEvaluator::new(script.display().to_string(), Duration::from_secs(1)).check();
    assert!(matches!(check(), Err(EvalError::NotFound(_))));
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    assert_eq!(check(), Ok(()));
    // A directory is not a program.
    let as_dir = CommandEvaluator::new(dir.path().display().to_string(), Duration::from_secs(1));
    assert!(matches!(as_dir.check(), Err(EvalError::NotFound(_))));
}

#[test]
fn first_word_follows_shell_quoting() {
    assert_eq!(first_word("a b").as_deref(), Some("a"));
    assert_eq!(first_word(r#""my eval" --x"#).as_deref(), Some("my eval"));
    assert_eq!(first_word(r"my\ eval --x").as_deref(), Some("my eval"));
    assert_eq!(first_word("X=1 Y=2 prog").as_deref(), Some("prog"));
    assert_eq!(first_word("prog;other").as_deref(), Some("prog"));
    assert_eq!(first_word("X=1"), None);
    assert_eq!(first_word(""), None);
}
