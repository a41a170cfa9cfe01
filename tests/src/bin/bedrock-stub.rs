//! `bedrock-stub`: the loopback Converse stub as a process, for end-to-end runs of the CLI.
//!
//! A test starts it, reads the single `listening on http://127.0.0.1:<port>` line to learn the
//! endpoint, points the CLI at it and kills the process afterwards. `--fail-first N` makes the
//! first N requests answer 429 so fallback paths can be shown without scripting, and `--log FILE`
//! records every request as a JSON line so a test can compare the stub's request count and
//! billed usage with what the CLI reports.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use tests::bedrock_stub::{StubOptions, StubServer};

const USAGE: &str = "usage: bedrock-stub [--port N] [--fail-first N] [--log FILE]";

fn parse_args(args: impl IntoIterator<Item = String>) -> anyhow::Result<Option<StubOptions>> {
    let mut options = StubOptions::default();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .with_context(|| format!("{name} needs a value\n{USAGE}"))
        };
        match arg.as_str() {
            "--port" => {
                options.port = value("--port")?
                    .parse()
                    .context("--port takes a port number")?;
            }
            "--fail-first" => {
                options.fail_first = value("--fail-first")?
                    .parse()
                    .context("--fail-first takes a count")?;
            }
            "--log" => options.log = Some(PathBuf::from(value("--log")?)),
            "-h" | "--help" => return Ok(None),
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    Ok(Some(options))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let options = match parse_args(std::env::args().skip(1)) {
        Ok(Some(options)) => options,
        Ok(None) => {
            println!("{USAGE}");
            return Ok(());
        }
        // A usage mistake gets the message and exit code 2, not an error report with a backtrace.
        Err(err) => {
            eprintln!("bedrock-stub: {err:#}");
            std::process::exit(2);
        }
    };
    let stub = StubServer::start_with(options)
        .await
        .context("cannot start the Bedrock stub")?;
    // Exactly one line, flushed at once: the parent process blocks on reading it.
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on {}", stub.url())?;
    stdout.flush()?;
    drop(stdout);
    tokio::select! {
        () = stub.run_forever() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
