//! moto's server as the local stand-in for DynamoDB and S3 (and the other AWS services the
//! suite talks to), driven by the real SDK clients over HTTP.
//!
//! The server comes from the repository's virtualenv (`make test-tools` installs it) and runs
//! moto's own server code with DynamoDB requests serialized (see [`SERVER`] for why). It listens
//! on a free port on 127.0.0.1 and is stopped when its handle drops, or when the test process
//! exits in any way: it runs under a small shell guard that kills it once the pipe this process
//! holds is closed, so a server shared through [`MotoServer::shared`] (a static, never dropped)
//! does not outlive the test binary.
//!
//! moto keeps state for as long as it runs, so tests create uniquely named resources
//! ([`unique_name`]).

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long the server may take to answer its first request.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// How often readiness is polled.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Ports tried before giving up when another process takes the chosen one first.
const PORT_ATTEMPTS: usize = 3;

/// Runs `$1 -c "$3" -H 127.0.0.1 -p $2` (the virtualenv's Python running [`SERVER`]) and kills
/// it when standard input reaches end of file, that is when the test process drops its handle or
/// exits. Asynchronous lists read /dev/null unless told otherwise, hence the copy of standard
/// input on descriptor 3.
const GUARD: &str = r#"exec 3<&0
"$1" -c "$3" -H 127.0.0.1 -p "$2" </dev/null &
server=$!
(read -r _ <&3; kill -KILL "$server" 2>/dev/null) &
exec 3<&-
wait "$server"
"#;

/// moto's server (what `moto_server` runs: its WSGI app under werkzeug, with the same options),
/// except that DynamoDB requests are handled one at a time and a transaction backs up only the
/// items it touches.
///
/// moto's threaded server does not isolate `TransactWriteItems`: it applies the items one by
/// one and, when one fails, restores a deep copy of the table taken before, which undoes the
/// writes of transactions that ran meanwhile (seen as a concurrent settlement losing some of its
/// counter updates). DynamoDB serializes transactions, so the stand-in must too. Other services
/// (S3, SQS long polls) stay concurrent.
///
/// That deep copy is also taken of the whole table once per item of every transaction, so with a
/// fleet of systems in the table each transaction copies megabytes many times over, and the
/// server grows to gigabytes and takes seconds per call. With requests serialized, a backup of
/// just the items the transaction names restores the same state, so the script replaces the
/// table copy with one: the table-level copy becomes the table itself (a no-op restore), and a
/// cancelled transaction puts its items back as they were.
///
/// moto also ignores `TransactWriteItems`' `ClientRequestToken`, which DynamoDB uses to make a
/// retried transaction idempotent: a retry with the token of a transaction that applied (the
/// answer was lost, the SDK sent it again) succeeds without applying it a second time. The
/// ledger's reservations rely on that, and the chaos suite loses answers on purpose, so the
/// script remembers the tokens of applied transactions and answers their retries the same way
/// (for the life of the server, longer than DynamoDB's ten minutes, which no test outlasts).
const SERVER: &str = r#"
import argparse, copy, os, signal, sys, threading
from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication, MotoRequestHandler, create_backend_app,
)
import moto.dynamodb.models as dynamodb_models
from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models.dynamo_type import DynamoType
from moto.dynamodb.models.table import Table

transact_write_items = DynamoDBBackend.transact_write_items
deepcopy = copy.deepcopy

def table_copy(value, memo=None):
    if isinstance(value, Table):
        return value
    return deepcopy(value, memo)

def touched(backend, transact_items):
    saved = []
    for entry in transact_items:
        for op in entry.values():
            table = backend.tables.get(op.get("TableName"))
            key = op.get("Item") or op.get("Key")
            if table is None or not isinstance(key, dict) or table.hash_key_attr not in key:
                continue
            hash_key = DynamoType(key[table.hash_key_attr])
            range_key = None
            if table.range_key_attr is not None:
                if table.range_key_attr not in key:
                    continue
                range_key = DynamoType(key[table.range_key_attr])
            saved.append((table, hash_key, range_key, deepcopy(table.get_item(hash_key, range_key))))
    return saved

def restore(saved):
    for table, hash_key, range_key, item in reversed(saved):
        table.delete_item(hash_key, range_key)
        if item is not None:
            table.put_item(item.to_json()["Attributes"])

def item_scoped_transact_write_items(self, transact_items):
    saved = touched(self, transact_items)
    dynamodb_models.copy.deepcopy = table_copy
    try:
        return transact_write_items(self, transact_items)
    except Exception:
        restore(saved)
        raise
    finally:
        dynamodb_models.copy.deepcopy = deepcopy

DynamoDBBackend.transact_write_items = item_scoped_transact_write_items

from moto.core.responses import ActionResult
from moto.dynamodb.responses import DynamoHandler

handle_transact_write_items = DynamoHandler.transact_write_items
applied_tokens = set()

def idempotent_transact_write_items(self):
    token = self.body.get("ClientRequestToken")
    if token is not None and token in applied_tokens:
        return ActionResult({"ConsumedCapacity": [], "ItemCollectionMetrics": {}})
    result = handle_transact_write_items(self)
    if token is not None:
        applied_tokens.add(token)
    return result

DynamoHandler.transact_write_items = idempotent_transact_write_items

parser = argparse.ArgumentParser()
parser.add_argument("-H", "--host", default="127.0.0.1")
parser.add_argument("-p", "--port", type=int, required=True)
args = parser.parse_args()
os.environ.setdefault("MOTO_PORT", str(args.port))
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

app = DomainDispatcherApplication(create_backend_app)
app.debug = True
dynamodb = threading.Lock()

def serialized(environ, start_response):
    if environ.get("HTTP_X_AMZ_TARGET", "").startswith("DynamoDB_"):
        with dynamodb:
            return list(app(environ, start_response))
    return app(environ, start_response)

run_simple(args.host, args.port, serialized, threaded=True, request_handler=MotoRequestHandler)
"#;

/// A running moto server.
#[derive(Debug)]
pub struct MotoServer {
    guard: Child,
    /// Closing it stops the server.
    lifeline: Option<ChildStdin>,
    port: u16,
    url: String,
    /// The server's output (an unlinked temporary file), shown when it fails to start.
    log: File,
}

impl MotoServer {
    /// Starts a server from `<repo>/.venv/bin/moto_server` and waits until it answers.
    ///
    /// # Panics
    /// When the virtualenv is missing ("run `make test-tools` to install moto"), or when the
    /// server does not come up in time (with its output).
    pub fn start() -> Self {
        let bin = venv_bin();
        let moto_server = bin.join("moto_server");
        assert!(
            moto_server.is_file(),
            "{} not found: run `make test-tools` to install moto",
            moto_server.display()
        );
        let python = bin.join("python");
        let mut failures = Vec::new();
        for _ in 0..PORT_ATTEMPTS {
            match Self::launch(&python) {
                Ok(server) => return server,
                Err(failure) => failures.push(failure),
            }
        }
        panic!("moto's server did not start:\n{}", failures.join("\n---\n"));
    }

    /// The server of this test binary, started on first use.
    pub fn shared() -> &'static Self {
        static SERVER: OnceLock<MotoServer> = OnceLock::new();
        SERVER.get_or_init(Self::start)
    }

    /// `http://127.0.0.1:<port>`, for the SDK clients' `endpoint_url`.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    fn launch(python: &Path) -> Result<Self, String> {
        let port = free_port().map_err(|e| format!("no free port: {e}"))?;
        let log = tempfile::tempfile().map_err(|e| format!("no log file: {e}"))?;
        let stdout = log.try_clone().map_err(|e| format!("log file: {e}"))?;
        let stderr = log.try_clone().map_err(|e| format!("log file: {e}"))?;
        let mut guard = Command::new("sh")
            .arg("-c")
            .arg(GUARD)
            .arg("moto-guard")
            .arg(python)
            .arg(port.to_string())
            .arg(SERVER)
            .stdin(Stdio::piped())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
        let lifeline = guard.stdin.take();
        let mut server = Self {
            guard,
            lifeline,
            port,
            url: format!("http://127.0.0.1:{port}"),
            log,
        };
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if answers(port) {
                return Ok(server);
            }
            if let Ok(Some(status)) = server.guard.try_wait() {
                return Err(format!(
                    "moto's server exited ({status}) on port {port}:\n{}",
                    server.output()
                ));
            }
            if Instant::now() >= deadline {
                let output = server.output();
                server.stop();
                return Err(format!(
                    "moto's server did not answer on port {port} within \
                     {STARTUP_TIMEOUT:?}:\n{output}"
                ));
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// What the server printed so far (read by offset, leaving the writers' position alone).
    fn output(&self) -> String {
        let mut bytes = Vec::new();
        let mut chunk = [0_u8; 8192];
        loop {
            match self.log.read_at(&mut chunk, bytes.len() as u64) {
                Ok(0) => break,
                Ok(read) => bytes.extend_from_slice(&chunk[..read]),
                Err(e) => return format!("(cannot read the server's output: {e})"),
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    fn stop(&mut self) {
        // End of file on the guard's standard input kills the server; then the guard exits.
        drop(self.lifeline.take());
        if self.guard.try_wait().ok().flatten().is_none() {
            let _ = self.guard.wait();
        }
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `<repo>/.venv/bin`.
fn venv_bin() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .unwrap_or(manifest)
        .join(".venv")
        .join("bin")
}

fn free_port() -> std::io::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

/// Whether `GET /moto-api/` answers with a status line.
fn answers(port: u16) -> bool {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&address, POLL_INTERVAL) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request =
        format!("GET /moto-api/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0_u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.")
}

/// A name no other test of this process (or an earlier run on the same server) has used:
/// lowercase letters, digits and hyphens, valid for tables and buckets alike.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{prefix}-{}-{n}-{nanos:x}", std::process::id())
}

/// The SDK configuration every test client uses against a stand-in at `url`: a fixed region,
/// static test credentials and the endpoint (the same one the SDK reads from
/// `AWS_ENDPOINT_URL`). S3 clients add path-style addressing on top.
pub async fn sdk_config(url: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "test", "test", None, None, "static",
        ))
        .endpoint_url(url)
        .load()
        .await
}

/// An S3 client for a stand-in: path-style addressing, since `<bucket>.127.0.0.1` names no host.
pub fn s3_client(config: &aws_config::SdkConfig) -> aws_sdk_s3::Client {
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(config)
            .force_path_style(true)
            .build(),
    )
}

/// A new queue named after `prefix` (made unique): its URL and ARN.
pub async fn queue(sqs: &aws_sdk_sqs::Client, prefix: &str) -> (String, String) {
    use aws_sdk_sqs::types::QueueAttributeName;
    let url = sqs
        .create_queue()
        .queue_name(unique_name(prefix))
        .send()
        .await
        .expect("queue")
        .queue_url()
        .expect("url")
        .to_owned();
    let arn = sqs
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .expect("attributes")
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn))
        .expect("arn")
        .clone();
    (url, arn)
}

/// The stack's two topics, new and uniquely named: topic to ARN.
pub async fn topics(
    sns: &aws_sdk_sns::Client,
) -> std::collections::BTreeMap<shared::domain::Topic, String> {
    use shared::domain::Topic;
    let mut topics = std::collections::BTreeMap::new();
    for t in [Topic::EvolutionEvents, Topic::Alerts] {
        let arn = sns
            .create_topic()
            .name(unique_name(t.as_str()))
            .send()
            .await
            .expect("topic")
            .topic_arn()
            .expect("arn")
            .to_owned();
        topics.insert(t, arn);
    }
    topics
}

/// Up to ten visible messages of the queue at `url`, as one receive returns them.
pub async fn receive(sqs: &aws_sdk_sqs::Client, url: &str) -> Vec<aws_sdk_sqs::types::Message> {
    sqs.receive_message()
        .queue_url(url)
        .max_number_of_messages(10)
        .send()
        .await
        .expect("receive")
        .messages
        .unwrap_or_default()
}
