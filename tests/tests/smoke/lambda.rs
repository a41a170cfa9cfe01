//! The Lambda side of the smoke tests: debug builds of the function binaries, `cargo lambda
//! watch` as the Runtime API emulator, a function process polling it, and `cargo lambda invoke`.
//! Every wait is bounded and every process this module starts is killed when its handle drops.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::process::{Child, Command};
use tokio::time::{Instant, sleep, timeout};

/// How long the debug build of the function binaries may take (it is a no-op when `make test`
/// already built the workspace).
const BUILD_LIMIT: Duration = Duration::from_secs(600);
/// How long `cargo lambda watch` may take to listen.
const WATCH_LIMIT: Duration = Duration::from_secs(30);
/// How long one `cargo lambda invoke` may take, function start-up included.
const INVOKE_LIMIT: Duration = Duration::from_secs(120);
/// Ports tried when another process takes the chosen one first.
const PORT_ATTEMPTS: usize = 3;

/// The repository root (the parent of the `tests` package).
pub fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// `cargo-lambda` from the repository's virtualenv (`make test-tools` installs it there) or
/// from `PATH`; `None` when it is not installed.
pub fn cargo_lambda() -> Option<PathBuf> {
    let local = repo_root().join(".venv/bin/cargo-lambda");
    if local.is_file() {
        return Some(local);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("cargo-lambda"))
            .find(|candidate| candidate.is_file())
    })
}

/// Builds the function binaries (debug) and returns their paths by name. The `tests`
/// package is built along so features unify as in `make test`, which then makes this a no-op.
pub async fn build_functions(packages: &[&str]) -> BTreeMap<String, PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(repo_root())
        .args([
            "build",
            "--bins",
            "--message-format=json-render-diagnostics",
        ])
        .args(["-p", "tests"]);
    for package in packages {
        command.args(["-p", package]);
    }
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run cargo build");
    let output = timeout(BUILD_LIMIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("cargo build of the functions took over {BUILD_LIMIT:?}"))
        .expect("cargo build output");
    assert!(
        output.status.success(),
        "cargo build of the functions failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut binaries = BTreeMap::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(message) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if message["reason"] != "compiler-artifact" {
            continue;
        }
        if let (Some(name), Some(path)) = (
            message["target"]["name"].as_str(),
            message["executable"].as_str(),
        ) {
            binaries.insert(name.to_owned(), PathBuf::from(path));
        }
    }
    for package in packages {
        assert!(
            binaries.contains_key(*package),
            "cargo built no {package} binary"
        );
    }
    binaries
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn log_file(path: &Path) -> (Stdio, Stdio) {
    let file = std::fs::File::create(path)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
    let clone = file.try_clone().expect("log file handle");
    (Stdio::from(file), Stdio::from(clone))
}

/// What a log file holds so far, for failure messages.
pub fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| format!("(cannot read {}: {e})", path.display()))
}

/// One function running against its own Runtime API emulator.
#[derive(Debug)]
pub struct Running {
    tool: PathBuf,
    port: u16,
    watch: Child,
    function: Child,
    pub watch_log: PathBuf,
    pub function_log: PathBuf,
}

impl Running {
    /// Starts `cargo lambda watch --only-lambda-apis` on a free loopback port, then `binary` with
    /// `env` (and nothing else from this process's environment) polling it. Logs go to `logs`,
    /// outside the source tree that watch looks at.
    pub async fn start(tool: &Path, binary: &Path, env: &[(String, String)], logs: &Path) -> Self {
        let watch_log = logs.join("watch.log");
        let function_log = logs.join("function.log");
        let mut failures = Vec::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port();
            let (out, err) = log_file(&watch_log);
            let mut watch = Command::new(tool)
                .current_dir(repo_root())
                .args([
                    "lambda",
                    "watch",
                    "--only-lambda-apis",
                    "--invoke-address",
                    "127.0.0.1",
                ])
                .args(["--invoke-port", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .kill_on_drop(true)
                .spawn()
                .expect("run cargo lambda watch");
            match wait_listening(&mut watch, port).await {
                Ok(()) => {
                    let function = spawn_function(binary, env, port, &function_log);
                    return Self {
                        tool: tool.to_owned(),
                        port,
                        watch,
                        function,
                        watch_log,
                        function_log,
                    };
                }
                Err(why) => {
                    let _ = watch.kill().await;
                    failures.push(format!("port {port}: {why}\n{}", read_log(&watch_log)));
                }
            }
        }
        panic!(
            "cargo lambda watch did not start:\n{}",
            failures.join("\n---\n")
        );
    }

    /// `cargo lambda invoke --data-file <event>`: the function's JSON answer.
    pub async fn invoke(&mut self, event: &Path) -> Value {
        let child = Command::new(&self.tool)
            .current_dir(repo_root())
            .args(["lambda", "invoke", "--invoke-address", "127.0.0.1"])
            .args(["--invoke-port", &self.port.to_string()])
            .arg("--data-file")
            .arg(event)
            .args(["--output-format", "json"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("run cargo lambda invoke");
        let output = match timeout(INVOKE_LIMIT, child.wait_with_output()).await {
            Ok(output) => output.expect("cargo lambda invoke output"),
            Err(elapsed) => panic!(
                "cargo lambda invoke {} took over {INVOKE_LIMIT:?} ({elapsed})\n{}",
                event.display(),
                self.logs()
            ),
        };
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "cargo lambda invoke {} failed ({}):\n{stdout}\n{}\n{}",
            event.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr),
            self.logs()
        );
        serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!(
                "the answer to {} is not JSON ({e}):\n{stdout}\n{}",
                event.display(),
                self.logs()
            )
        })
    }

    /// Both logs, for failure messages.
    pub fn logs(&self) -> String {
        format!(
            "--- function log\n{}\n--- cargo lambda watch log\n{}",
            read_log(&self.function_log),
            read_log(&self.watch_log)
        )
    }

    /// Stops the function and the emulator.
    pub async fn stop(mut self) {
        let _ = self.function.kill().await;
        let _ = self.watch.kill().await;
    }
}

/// Waits until the emulator accepts connections on `port` (and is still the one running).
async fn wait_listening(watch: &mut Child, port: u16) -> Result<(), String> {
    let deadline = Instant::now() + WATCH_LIMIT;
    loop {
        if let Ok(Some(status)) = watch.try_wait() {
            return Err(format!("exited ({status})"));
        }
        if tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port))
            .await
            .is_ok()
        {
            return match watch.try_wait() {
                Ok(None) => Ok(()),
                _ => Err("exited while another process took the port".into()),
            };
        }
        if Instant::now() >= deadline {
            return Err(format!("not listening within {WATCH_LIMIT:?}"));
        }
        sleep(Duration::from_millis(100)).await;
    }
}

fn spawn_function(binary: &Path, env: &[(String, String)], port: u16, log: &Path) -> Child {
    let (out, err) = log_file(log);
    Command::new(binary)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        // What the emulator tells a function started by hand to set.
        .env(
            "AWS_LAMBDA_RUNTIME_API",
            format!("http://127.0.0.1:{port}/.rt"),
        )
        .env("AWS_LAMBDA_FUNCTION_NAME", "_")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.display()))
}
