//! An evaluator that runs the user's own command.
//!
//! Protocol: the command runs through `sh -c` in its own process group. It receives the genes as
//! one JSON object (`{"<gene>": <value>, ...}`) on stdin, which is then closed, and prints one JSON
//! object `{"score": <number>, "metrics": {"<name>": <number>}}` (metrics optional) as the last
//! non-empty line of stdout, so it may log freely before that line. Higher scores are better.
//!
//! Every way the command can misbehave is a distinct [`EvalError`], never a panic: not found
//! (exit 127), non-zero exit, killed by a signal, past the timeout, unreadable output, or not
//! startable at all. The evaluation ends when the shell exits, however it exits: then the whole
//! process group is killed, so background children neither outlive it nor, by holding stdout
//! open, turn a finished evaluation into a timeout.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

use super::{EvalError, Evaluator};
use crate::domain::{FitnessScore, Genes, MetricName};

/// Exit status a POSIX shell uses for "command not found".
const EXIT_NOT_FOUND: i32 = 127;
/// Exit code reported when the command was killed by a signal instead of exiting.
const EXIT_SIGNALLED: i32 = -1;
/// How much of stderr an error message keeps (its tail, where the error usually is).
const STDERR_CAP_CHARS: usize = 500;
/// How much of stdout is kept (its tail: the score is on the last line).
const STDOUT_CAP_BYTES: usize = 1024 * 1024;
/// How much of stderr is read into memory before capping to characters.
const STDERR_CAP_BYTES: usize = 64 * 1024;
/// How much of an offending output line an error message quotes.
const SNIPPET_CHARS: usize = 120;
/// How long to wait for a killed command to be reaped.
const REAP_GRACE: Duration = Duration::from_secs(2);
/// How long to keep reading after the command exited. Its output is already in the pipe by
/// then, so this only bounds the wait for a pipe that a child outside the group holds open.
const DRAIN_GRACE: Duration = Duration::from_millis(500);

/// Words that `check` cannot resolve on disk but the shell runs itself.
const SHELL_BUILTINS: &[&str] = &[
    ".", ":", "[", "alias", "break", "case", "cd", "command", "continue", "eval", "exec", "exit",
    "export", "false", "for", "if", "read", "readonly", "return", "set", "shift", "test", "times",
    "trap", "true", "type", "ulimit", "umask", "unset", "until", "wait", "while", "{", "(", "!",
];

/// Runs a shell command as the evaluator of each generation.
#[derive(Debug, Clone)]
pub struct CommandEvaluator {
    /// The command line, run through `sh -c`.
    pub command: String,
    /// How long one evaluation may take before the command's process group is killed.
    pub timeout: Duration,
}

/// What the command left behind once it finished.
struct Finished {
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl CommandEvaluator {
    pub fn new(command: impl Into<String>, timeout: Duration) -> Self {
        Self {
            command: command.into(),
            timeout,
        }
    }

    /// Verifies, without running anything, that the command's first word resolves: a path that
    /// exists and is executable, a program on `PATH`, or a shell builtin or keyword. Lets a caller
    /// refuse a missing evaluator before the first generation.
    pub fn check(&self) -> Result<(), EvalError> {
        let Some(word) = first_word(&self.command) else {
            return Err(EvalError::Spawn(
                "the evaluator command is empty".to_owned(),
            ));
        };
        if SHELL_BUILTINS.contains(&word.as_str()) {
            return Ok(());
        }
        let found = if word.contains('/') {
            is_executable(Path::new(&word))
        } else {
            std::env::var_os("PATH").is_some_and(|path| {
                std::env::split_paths(&path)
                    .map(|dir| {
                        if dir.as_os_str().is_empty() {
                            PathBuf::from(".")
                        } else {
                            dir
                        }
                    })
                    .any(|dir| is_executable(&dir.join(&word)))
            })
        };
        if found {
            Ok(())
        } else {
            Err(EvalError::NotFound(word))
        }
    }

    /// Seconds reported by [`EvalError::Timeout`]: the timeout rounded up, so a sub-second
    /// timeout does not read as "0 s".
    fn timeout_secs(&self) -> u64 {
        self.timeout.as_secs() + u64::from(self.timeout.subsec_nanos() > 0)
    }

    /// Feeds stdin and drains stdout and stderr until the shell exits, then reaps its whole
    /// process group and stops reading after [`DRAIN_GRACE`].
    ///
    /// The exit of the shell, not end of file, ends an evaluation: a background child may hold
    /// the pipes open for as long as it lives, and its output is none of the protocol's. Once
    /// the shell has exited everything it printed is already in the pipe, so the grace only
    /// collects that (and whatever the killed group flushed), never waits for the group.
    ///
    /// The group is killed after the shell has been reaped, because `Child::wait` is the only
    /// way to learn of the exit. The group id stays reserved while any member lives, so the
    /// signal cannot reach a stranger unless the group has already emptied and a new group
    /// leader took the same pid within that instant.
    async fn drive(
        &self,
        child: &mut Child,
        pgid: Option<u32>,
        input: Vec<u8>,
    ) -> Result<Finished, EvalError> {
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let mut stdout_tail = Vec::new();
        let mut stderr_tail = Vec::new();
        let exited = {
            let write = async move {
                if let Some(mut stdin) = stdin {
                    // A command that does not read its stdin closes the pipe: broken pipe is fine.
                    let _ = stdin.write_all(&input).await;
                    let _ = stdin.shutdown().await;
                }
            };
            let pipes = async {
                tokio::join!(
                    read_tail(stdout, STDOUT_CAP_BYTES, &mut stdout_tail),
                    read_tail(stderr, STDERR_CAP_BYTES, &mut stderr_tail),
                    write,
                );
            };
            tokio::pin!(pipes);
            let mut pipes_closed = false;
            let waited = tokio::time::timeout(self.timeout, async {
                tokio::select! {
                    status = child.wait() => status,
                    () = &mut pipes => {
                        pipes_closed = true;
                        child.wait().await
                    }
                }
            })
            .await;
            // Whatever ended the wait, nothing the command started may outlive the evaluation.
            if let Some(pgid) = pgid {
                kill_process_group(pgid).await;
            }
            if matches!(waited, Ok(Ok(_))) && !pipes_closed {
                let _ = tokio::time::timeout(DRAIN_GRACE, &mut pipes).await;
            }
            waited
        };
        keep_tail(&mut stdout_tail, STDOUT_CAP_BYTES);
        keep_tail(&mut stderr_tail, STDERR_CAP_BYTES);
        match exited {
            Ok(Ok(status)) => Ok(Finished {
                status,
                stdout: stdout_tail,
                stderr: stderr_tail,
            }),
            Ok(Err(e)) => {
                Self::reap(child).await;
                Err(EvalError::Spawn(format!("lost track of the command: {e}")))
            }
            Err(_elapsed) => {
                Self::reap(child).await;
                Err(EvalError::Timeout(self.timeout_secs()))
            }
        }
    }

    /// Kills the shell if it still runs and reaps it; its group has been killed already.
    async fn reap(child: &mut Child) {
        let _ = child.start_kill();
        let _ = tokio::time::timeout(REAP_GRACE, child.wait()).await;
    }

    fn judge(&self, finished: &Finished) -> Result<FitnessScore, EvalError> {
        match finished.status.code() {
            Some(0) => parse_output(&finished.stdout),
            Some(EXIT_NOT_FOUND) => Err(EvalError::NotFound(self.command.clone())),
            Some(code) => Err(EvalError::Failed {
                code,
                stderr: stderr_tail(&finished.stderr),
            }),
            None => {
                let signal = finished
                    .status
                    .signal()
                    .map_or_else(|| "unknown".to_owned(), |s| s.to_string());
                let stderr = stderr_tail(&finished.stderr);
                let stderr = if stderr.is_empty() {
                    format!("killed by signal {signal}")
                } else {
                    format!("killed by signal {signal}: {stderr}")
                };
                Err(EvalError::Failed {
                    code: EXIT_SIGNALLED,
                    stderr,
                })
            }
        }
    }
}

#[async_trait]
impl Evaluator for CommandEvaluator {
    async fn evaluate(&self, genes: &Genes) -> Result<FitnessScore, EvalError> {
        let input = serde_json::to_vec(genes)
            .map_err(|e| EvalError::Spawn(format!("cannot encode the genes: {e}")))?;
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(&self.command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| EvalError::Spawn(e.to_string()))?;
        // With `process_group(0)` the shell leads a new group whose id is its pid.
        let pgid = child.id();
        let finished = self.drive(&mut child, pgid, input).await?;
        self.judge(&finished)
    }
}

/// Sends SIGKILL to a whole process group: `Child::start_kill` reaches only the shell, not the
/// programs it started.
async fn kill_process_group(pgid: u32) {
    let group = format!("-{pgid}");
    let killed = Command::new("kill")
        .args(["-KILL", "--", &group])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
    if killed.is_err() {
        // No `kill` program on PATH: the shell's builtin takes the group as a negative pid.
        let _ = Command::new("sh")
            .args(["-c", &format!("kill -9 {group}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
    }
}

/// Reads a stream to its end into `kept`, keeping only the last `cap` bytes. Writes into the
/// caller's buffer so that what was read survives when the read is abandoned before the end.
async fn read_tail<R: AsyncRead + Unpin>(reader: Option<R>, cap: usize, kept: &mut Vec<u8>) {
    let Some(mut reader) = reader else {
        return;
    };
    let mut chunk = vec![0_u8; 16 * 1024];
    loop {
        match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                kept.extend_from_slice(&chunk[..n]);
                // Trimming in batches keeps the copying linear.
                if kept.len() > 2 * cap {
                    keep_tail(kept, cap);
                }
            }
        }
    }
}

/// Drops all but the last `cap` bytes.
fn keep_tail(bytes: &mut Vec<u8>, cap: usize) {
    if bytes.len() > cap {
        bytes.drain(..bytes.len() - cap);
    }
}

/// The trimmed stderr, capped to its last [`STDERR_CAP_CHARS`] characters.
fn stderr_tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let text = text.trim();
    let count = text.chars().count();
    if count <= STDERR_CAP_CHARS {
        return text.to_owned();
    }
    let tail: String = text.chars().skip(count - STDERR_CAP_CHARS).collect();
    format!("...{tail}")
}

/// A short quote of an offending line for error messages.
fn snippet(line: &str) -> String {
    if line.chars().count() <= SNIPPET_CHARS {
        line.to_owned()
    } else {
        let head: String = line.chars().take(SNIPPET_CHARS).collect();
        format!("{head}...")
    }
}

/// Reads the score from the last non-empty line of stdout.
fn parse_output(stdout: &[u8]) -> Result<FitnessScore, EvalError> {
    let bad = EvalError::BadOutput;
    let text = String::from_utf8_lossy(stdout);
    let Some(line) = text.lines().map(str::trim).rfind(|l| !l.is_empty()) else {
        return Err(bad(
            "no output; expected a JSON line with a score".to_owned()
        ));
    };
    let value: Value = serde_json::from_str(line)
        .map_err(|e| bad(format!("last line is not JSON ({e}): {}", snippet(line))))?;
    let Value::Object(object) = value else {
        return Err(bad(format!(
            "last line is not a JSON object: {}",
            snippet(line)
        )));
    };
    let score = match object.get("score") {
        None => return Err(bad("missing \"score\"".to_owned())),
        Some(Value::Number(n)) => n
            .as_f64()
            .ok_or_else(|| bad("\"score\" is not a finite number".to_owned()))?,
        Some(other) => return Err(bad(format!("\"score\" is not a number: {other}"))),
    };
    let mut metrics = BTreeMap::new();
    match object.get("metrics") {
        None | Some(Value::Null) => {}
        Some(Value::Object(entries)) => {
            for (name, value) in entries {
                let name = MetricName::parse(name.as_str()).map_err(|e| bad(e.to_string()))?;
                let value = value
                    .as_f64()
                    .ok_or_else(|| bad(format!("metric {name} is not a number: {value}")))?;
                metrics.insert(name, value);
            }
        }
        Some(other) => return Err(bad(format!("\"metrics\" is not an object: {other}"))),
    }
    let fitness = FitnessScore { score, metrics };
    fitness.validate().map_err(|e| bad(e.to_string()))?;
    Ok(fitness)
}

/// The first word a shell would run: leading `NAME=value` assignments skipped, quotes and
/// backslashes resolved. `None` for a blank command.
fn first_word(command: &str) -> Option<String> {
    let mut rest = command.trim_start();
    loop {
        let (word, after) = next_word(rest)?;
        if is_assignment(&word) {
            rest = after.trim_start();
            continue;
        }
        return Some(word);
    }
}

/// Splits off one shell word, resolving single quotes, double quotes and backslashes.
fn next_word(input: &str) -> Option<(String, &str)> {
    if input.is_empty() {
        return None;
    }
    let mut word = String::new();
    let mut chars = input.char_indices().peekable();
    let mut quote: Option<char> = None;
    while let Some((i, c)) = chars.next() {
        match (quote, c) {
            (None, c)
                if c.is_whitespace() || matches!(c, ';' | '&' | '|' | '<' | '>' | '(' | ')') =>
            {
                if word.is_empty() && !c.is_whitespace() {
                    // An operator first: nothing to resolve.
                    return Some((c.to_string(), &input[i + c.len_utf8()..]));
                }
                return Some((word, &input[i..]));
            }
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None | Some('"'), '\\') => {
                if let Some((_, escaped)) = chars.next() {
                    word.push(escaped);
                }
            }
            (_, c) => word.push(c),
        }
    }
    Some((word, ""))
}

fn is_assignment(word: &str) -> bool {
    word.split_once('=').is_some_and(|(name, _)| {
        !name.is_empty()
            && !name.as_bytes()[0].is_ascii_digit()
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    })
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests;
