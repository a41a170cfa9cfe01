//! `cfn-lint` over the whole template.

use std::io::Read;
use std::process::{Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::cfn;

/// Runs `cfn-lint` from the repository's virtualenv; it must report nothing at all.
#[test]
fn cfn_lint_reports_nothing() {
    const LIMIT: Duration = Duration::from_secs(180);
    let root = cfn::repo_root();
    let executable = root.join(".venv/bin/cfn-lint");
    assert!(
        executable.is_file(),
        "{} not found: run `make test-tools` to install cfn-lint",
        executable.display()
    );
    let mut child = Command::new(&executable)
        .arg(cfn::TEMPLATE)
        .current_dir(&root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run cfn-lint");
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for cfn-lint") {
            break status;
        }
        if started.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("cfn-lint did not finish within {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = stdout.join().unwrap_or_default() + &stderr.join().unwrap_or_default();
    assert!(
        status.success() && output.trim().is_empty(),
        "cfn-lint ({status}):\n{output}"
    );
}

/// Reads a pipe to its end on a thread of its own: both pipes drain at once, so a chatty run
/// cannot block on a full pipe.
fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_string(&mut text);
        }
        text
    })
}
