//! `sqlite-evaluator`: reads genes JSON on stdin, prints `{"score": ..., "metrics": {...}}`.

use std::io::Read;
use std::process::ExitCode;

use anyhow::Context;
use sqlite_evaluator::{Settings, rows_from_env, run};

fn main() -> ExitCode {
    match evaluate() {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            // One line with the cause chain: the runner keeps the tail of stderr as the reason.
            eprintln!("sqlite-evaluator: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn evaluate() -> anyhow::Result<serde_json::Value> {
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .context("reading the genes from stdin")?;
    let settings = Settings::from_json(&input)?;
    let rows = rows_from_env()?;
    Ok(run(&settings, rows)?.to_json())
}
