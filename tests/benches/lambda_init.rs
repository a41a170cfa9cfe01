//! `make bench`: cold-start cost of the five Lambda functions under the Runtime API emulator.
//!
//! Sets up the smoke tests' world (moto with the stack's table, bucket, queues and topics, the
//! Converse stub), starts `cargo lambda watch --only-lambda-apis` on a free loopback port, and
//! puts a small recording proxy in front of its runtime API. Each function binary is then started
//! by hand with the smoke tests' environment, pointed at the proxy; the time from spawning it to
//! its first `GET /2018-06-01/runtime/invocation/next` is its init time. It is invoked once with
//! `cargo lambda invoke --data-file infra/events/<sample>.json`, its `VmHWM` is read from
//! `/proc/<pid>/status`, and it is killed. Debug binaries always; release ones when a release
//! build exists (`make bench` builds each function on its own, so each links only its features),
//! next to `bare-lambda`, a release binary of `lambda_runtime` and five SDK clients that does
//! nothing: the floor. Every wait is bounded and every process is killed at the end.

#[path = "../tests/smoke/lambda.rs"]
#[allow(dead_code)]
mod lambda;
#[path = "../tests/smoke/world.rs"]
#[allow(dead_code)]
mod world;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shared::lambda::config::functions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, timeout};

use lambda::{build_functions, cargo_lambda, read_log, repo_root};
use world::World;

/// Runs per function and profile; the init time printed is their median.
const RUNS: usize = 5;
/// How long `cargo lambda watch` may take to listen.
const WATCH_LIMIT: Duration = Duration::from_secs(30);
/// How long a function may take to poll for its first invocation.
const INIT_LIMIT: Duration = Duration::from_secs(60);
/// How long one `cargo lambda invoke` may take.
const INVOKE_LIMIT: Duration = Duration::from_secs(120);
/// What a runtime's request for its next invocation looks like on the wire.
const NEXT_PATH: &[u8] = b"/2018-06-01/runtime/invocation/next";

/// The sample event each function is invoked with.
fn sample_event(package: &str) -> PathBuf {
    repo_root()
        .join("infra/events")
        .join(format!("sqs-{package}.json"))
}

/// A TCP proxy on 127.0.0.1 in front of the emulator that notes when a `next` poll first passes.
struct Proxy {
    port: u16,
    first_next: Arc<Mutex<Option<Instant>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let first_next = Arc::new(Mutex::new(None));
        let seen = first_next.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(forward(client, upstream, seen.clone()));
            }
        });
        Self {
            port,
            first_next,
            accept,
        }
    }

    fn reset(&self) {
        *self.first_next.lock().expect("proxy state") = None;
    }

    fn first_next(&self) -> Option<Instant> {
        *self.first_next.lock().expect("proxy state")
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn forward(client: TcpStream, upstream: u16, seen: Arc<Mutex<Option<Instant>>>) {
    let Ok(server) = TcpStream::connect((Ipv4Addr::LOCALHOST, upstream)).await else {
        return;
    };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let outbound = async move {
        let mut buffer = vec![0_u8; 16 * 1024];
        loop {
            let read = match client_read.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(read) => read,
            };
            let chunk = &buffer[..read];
            if chunk.starts_with(b"GET ") && chunk.windows(NEXT_PATH.len()).any(|w| w == NEXT_PATH)
            {
                let now = Instant::now();
                seen.lock().expect("proxy state").get_or_insert(now);
            }
            if server_write.write_all(chunk).await.is_err() {
                break;
            }
        }
        let _ = server_write.shutdown().await;
    };
    let inbound = async move {
        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
        let _ = client_write.shutdown().await;
    };
    tokio::join!(outbound, inbound);
}

/// `cargo lambda watch --only-lambda-apis` on a free loopback port, logging to `log`.
async fn start_watch(tool: &Path, log: &Path) -> (Child, u16) {
    for _ in 0..3 {
        let port = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free loopback port");
        let file = std::fs::File::create(log).expect("watch log");
        let clone = file.try_clone().expect("watch log handle");
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
            .stdout(file)
            .stderr(clone)
            .kill_on_drop(true)
            .spawn()
            .expect("run cargo lambda watch");
        let deadline = Instant::now() + WATCH_LIMIT;
        loop {
            if let Ok(Some(_)) = watch.try_wait() {
                break;
            }
            if TcpStream::connect((Ipv4Addr::LOCALHOST, port))
                .await
                .is_ok()
            {
                if let Ok(None) = watch.try_wait() {
                    return (watch, port);
                }
                break;
            }
            if Instant::now() >= deadline {
                break;
            }
            sleep(Duration::from_millis(50)).await;
        }
        let _ = watch.kill().await;
        eprintln!(
            "cargo lambda watch did not start on port {port}:\n{}",
            read_log(log)
        );
    }
    panic!("cargo lambda watch did not start");
}

/// What one start, first poll and invocation of a function measured.
struct Sample {
    init: Duration,
    peak_rss_kib: Option<u64>,
    invoked: bool,
}

fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

struct Bench {
    tool: PathBuf,
    watch_port: u16,
    proxy: Proxy,
    logs: PathBuf,
}

/// One binary's figures over [`RUNS`] runs.
struct Row {
    init_ms: f64,
    min_ms: f64,
    max_ms: f64,
    peak_rss_kib: Option<u64>,
    ok: usize,
}

impl Row {
    fn peak_mib(&self) -> Option<f64> {
        self.peak_rss_kib.map(|k| k as f64 / 1024.0)
    }

    fn print(&self, package: &str, profile: &str) {
        let peak = self
            .peak_rss_kib
            .map_or_else(|| "?".to_owned(), |k| k.to_string());
        println!(
            "{package:<12} {profile:<8} {:>8.1} {:>8.1} {:>8.1} {peak:>13}  {}/{RUNS} ok",
            self.init_ms, self.min_ms, self.max_ms, self.ok
        );
    }
}

impl Bench {
    async fn row(&self, binary: &Path, env: &[(String, String)], event: &Path) -> Row {
        let mut samples = Vec::with_capacity(RUNS);
        for _ in 0..RUNS {
            samples.push(self.run_once(binary, env, event).await);
        }
        let mut inits: Vec<Duration> = samples.iter().map(|s| s.init).collect();
        inits.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        Row {
            init_ms: ms(inits[RUNS / 2]),
            min_ms: ms(inits[0]),
            max_ms: ms(inits[RUNS - 1]),
            peak_rss_kib: samples.iter().filter_map(|s| s.peak_rss_kib).max(),
            ok: samples.iter().filter(|s| s.invoked).count(),
        }
    }

    async fn run_once(&self, binary: &Path, env: &[(String, String)], event: &Path) -> Sample {
        let log = self.logs.join("function.log");
        let file = std::fs::File::create(&log).expect("function log");
        let clone = file.try_clone().expect("function log handle");
        self.proxy.reset();
        let started = Instant::now();
        let mut function = Command::new(binary)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env(
                "AWS_LAMBDA_RUNTIME_API",
                format!("http://127.0.0.1:{}/.rt", self.proxy.port),
            )
            .env("AWS_LAMBDA_FUNCTION_NAME", "_")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512")
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(clone)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.display()));
        let init = loop {
            if let Some(polled) = self.proxy.first_next() {
                break polled - started;
            }
            if let Ok(Some(status)) = function.try_wait() {
                panic!(
                    "{} exited ({status}) before polling:\n{}",
                    binary.display(),
                    read_log(&log)
                );
            }
            assert!(
                started.elapsed() < INIT_LIMIT,
                "{} did not poll within {INIT_LIMIT:?}:\n{}",
                binary.display(),
                read_log(&log)
            );
            sleep(Duration::from_millis(1)).await;
        };
        let invoked = self.invoke(event).await;
        let peak_rss_kib = function.id().and_then(vm_hwm_kib);
        if !invoked {
            eprintln!("--- function log\n{}", read_log(&log));
        }
        let _ = function.kill().await;
        Sample {
            init,
            peak_rss_kib,
            invoked,
        }
    }

    async fn invoke(&self, event: &Path) -> bool {
        let child = Command::new(&self.tool)
            .current_dir(repo_root())
            .args(["lambda", "invoke", "--invoke-address", "127.0.0.1"])
            .args(["--invoke-port", &self.watch_port.to_string()])
            .arg("--data-file")
            .arg(event)
            .args(["--output-format", "json"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("run cargo lambda invoke");
        match timeout(INVOKE_LIMIT, child.wait_with_output()).await {
            Ok(Ok(output)) if output.status.success() => true,
            Ok(Ok(output)) => {
                eprintln!(
                    "cargo lambda invoke {} failed ({}):\n{}\n{}",
                    event.display(),
                    output.status,
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                );
                false
            }
            Ok(Err(e)) => {
                eprintln!("cargo lambda invoke {}: {e}", event.display());
                false
            }
            Err(_) => {
                eprintln!(
                    "cargo lambda invoke {} took over {INVOKE_LIMIT:?}",
                    event.display()
                );
                false
            }
        }
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let Some(tool) = cargo_lambda() else {
            println!(
                "SKIPPED: cargo-lambda is not installed (`make test-tools` installs it into .venv)"
            );
            return;
        };
        let functions = functions();
        let packages: Vec<&str> = functions.iter().map(|(p, _)| *p).collect();
        let binaries = build_functions(&packages).await;

        let world = World::new().await;
        world.init_system().await;
        world.close_baseline().await;

        // Outside the source tree that watch looks at.
        let logs = tempfile::tempdir().expect("log dir");
        let (mut watch, watch_port) = start_watch(&tool, &logs.path().join("watch.log")).await;
        let bench = Bench {
            tool,
            watch_port,
            proxy: Proxy::start(watch_port).await,
            logs: logs.path().to_owned(),
        };

        println!(
            "Lambda init (spawn to first runtime `next` poll, p50 of {RUNS} runs) and peak RSS \
             (VmHWM after one invocation, max of the runs), under `cargo lambda watch`:"
        );
        println!(
            "{:<12} {:<8} {:>8} {:>8} {:>8} {:>13}  invocations",
            "function", "profile", "init_ms", "min_ms", "max_ms", "peak_rss_kib"
        );
        let release_dir = |package: &str| {
            ["release", "x86_64-unknown-linux-gnu/release"]
                .into_iter()
                .map(|dir| repo_root().join("target").join(dir).join(package))
                .find(|p| p.is_file())
        };
        // The floor: lambda_runtime and five SDK clients, release-built like the functions.
        let bare = if let Some(binary) = release_dir("bare-lambda") {
            let env = world.env(&functions[0].1);
            let row = bench.row(&binary, &env, &sample_event("cost-guard")).await;
            row.print("bare-lambda", "release");
            Some(row)
        } else {
            println!("(no release build of bare-lambda: `make bench` builds it)");
            None
        };
        for (package, variables) in &functions {
            let package = *package;
            let env = world.env(variables);
            let event = sample_event(package);
            let debug = binaries[package].clone();
            for (profile, binary) in std::iter::once(("debug", debug))
                .chain(release_dir(package).map(|r| ("release", r)))
            {
                let row = bench.row(&binary, &env, &event).await;
                row.print(package, profile);
                if let (Some(bare), "release") = (&bare, profile) {
                    println!(
                        "{:<12} {:<8} init {:.2}x the bare binary's, peak RSS {:.1} MiB",
                        "",
                        "",
                        row.init_ms / bare.init_ms,
                        row.peak_mib().unwrap_or(f64::NAN)
                    );
                }
            }
        }
        drop(bench);
        let _ = watch.kill().await;
    });
}
