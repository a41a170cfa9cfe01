//! A loopback server that speaks Amazon Bedrock's Converse REST-JSON protocol.
//!
//! The production code talks to Bedrock through the real `aws-sdk-bedrockruntime` client. Tests
//! cannot reach AWS, so they point that client's `endpoint_url` at this stub instead: the SDK then
//! exercises its real serializer, signer, retry policy, timeouts and response parser, and only the
//! far end of the wire is ours. The stub can be scripted reply by reply ([`StubServer::push`],
//! [`StubServer::push_for`]) and otherwise falls back to a deterministic default responder that
//! reads the request (forced tool, JSON-schema output format, system prompt, the JSON data in the
//! last user message) and answers with something the pipeline accepts, so an unattended run can
//! complete end to end.
//!
//! Every request is recorded ([`StubServer::requests`]) and, when asked, appended as one JSON line
//! to a log file, so a test can compare what the stub saw and billed with what the CLI reports.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, OriginalUri, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::post;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

/// Header carrying the error type; the SDK maps it to a typed `ConverseError` variant.
const ERROR_TYPE_HEADER: &str = "x-amzn-errortype";
/// Header carrying the request id; the SDK surfaces it on errors, which helps when reading logs.
const REQUEST_ID_HEADER: &str = "x-amzn-requestid";
/// Requests up to this size are accepted: real prompts can be large, and "input too long" tests
/// must reach the handler instead of being cut off by the framework's 2 MiB default.
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;
/// At most this many genes are moved by one default strategy, so plans stay small and reviewable.
const MAX_DEFAULT_STEPS: usize = 3;

/// Token counts of one answer, as Bedrock reports them in `usage`.
///
/// `input` excludes cached tokens, as on the real service; `totalTokens` on the wire is the sum
/// of all four fields.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Usage {
    pub input: u64,
    pub output: u64,
    pub cache_read: u64,
    pub cache_write: u64,
}

impl Usage {
    /// Usage without prompt caching.
    pub const fn new(input: u64, output: u64) -> Self {
        Self {
            input,
            output,
            cache_read: 0,
            cache_write: 0,
        }
    }

    /// The same usage with cache read and write tokens, for prompt-caching cost tests.
    #[must_use]
    pub const fn with_cache(self, cache_read: u64, cache_write: u64) -> Self {
        Self {
            cache_read,
            cache_write,
            ..self
        }
    }

    /// What Bedrock reports as `totalTokens`.
    pub const fn total(&self) -> u64 {
        self.input + self.output + self.cache_read + self.cache_write
    }

    fn to_wire(self) -> Value {
        json!({
            "inputTokens": self.input,
            "outputTokens": self.output,
            "totalTokens": self.total(),
            "cacheReadInputTokens": self.cache_read,
            "cacheWriteInputTokens": self.cache_write,
        })
    }
}

/// Usage given to replies built with the short constructors ([`Reply::tool`], [`Reply::text`],
/// [`Reply::max_tokens`]): non-zero so cost accounting has something to add up.
pub const DEFAULT_SCRIPTED_USAGE: Usage = Usage::new(100, 50);

/// One scripted answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// A `toolUse` block calling `name` with `input`; stop reason `tool_use`.
    Tool {
        name: String,
        input: Value,
        usage: Usage,
    },
    /// A `text` block; stop reason `end_turn`.
    Text { text: String, usage: Usage },
    /// A (truncated) `text` block; stop reason `max_tokens`.
    MaxTokens { text: String, usage: Usage },
    /// A modelled service error: the status, `x-amzn-ErrorType: <error_type>` and
    /// `{"message": ...}`.
    Error {
        status: u16,
        error_type: String,
        message: String,
    },
    /// `then`, after `delay`: for client timeouts and deadline tests. The request is recorded
    /// when it arrives, so it shows in the log even if the client gives up first.
    Slow { delay: Duration, then: Box<Reply> },
    /// An arbitrary body with `content-type: application/json`, for malformed answers.
    Raw { status: u16, body: String },
}

impl Reply {
    /// A tool call with [`DEFAULT_SCRIPTED_USAGE`].
    pub fn tool(name: impl Into<String>, input: Value) -> Self {
        Self::Tool {
            name: name.into(),
            input,
            usage: DEFAULT_SCRIPTED_USAGE,
        }
    }

    /// A text answer with [`DEFAULT_SCRIPTED_USAGE`].
    pub fn text(text: impl Into<String>) -> Self {
        Self::Text {
            text: text.into(),
            usage: DEFAULT_SCRIPTED_USAGE,
        }
    }

    /// A text answer cut at the output limit, with [`DEFAULT_SCRIPTED_USAGE`].
    pub fn max_tokens(text: impl Into<String>) -> Self {
        Self::MaxTokens {
            text: text.into(),
            usage: DEFAULT_SCRIPTED_USAGE,
        }
    }

    /// Any modelled error.
    pub fn error(status: u16, error_type: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Error {
            status,
            error_type: error_type.into(),
            message: message.into(),
        }
    }

    /// `then`, answered after `delay`.
    pub fn slow(delay: Duration, then: Self) -> Self {
        Self::Slow {
            delay,
            then: Box::new(then),
        }
    }

    /// A raw body, typically malformed JSON.
    pub fn raw(status: u16, body: impl Into<String>) -> Self {
        Self::Raw {
            status,
            body: body.into(),
        }
    }

    /// 429 `ThrottlingException`: retried, then the next model.
    pub fn throttled() -> Self {
        Self::error(
            429,
            "ThrottlingException",
            "Too many requests, please wait before trying again.",
        )
    }

    /// 408 `ModelTimeoutException`: retried, then the next model.
    pub fn model_timeout() -> Self {
        Self::error(
            408,
            "ModelTimeoutException",
            "Model has timed out in processing the request. Try your request again.",
        )
    }

    /// 500 `InternalServerException`: retried, then the next model.
    pub fn internal() -> Self {
        Self::error(
            500,
            "InternalServerException",
            "The server encountered an internal error while processing the request.",
        )
    }

    /// 503 `ServiceUnavailableException`: retried, then the next model.
    pub fn unavailable() -> Self {
        Self::error(
            503,
            "ServiceUnavailableException",
            "Bedrock is unable to process your request.",
        )
    }

    /// 400 `ValidationException` with the message that triggers history trimming.
    pub fn input_too_long() -> Self {
        Self::error(
            400,
            "ValidationException",
            "Input is too long for requested model.",
        )
    }

    /// 403 `AccessDeniedException`: never retried, and a security event.
    pub fn access_denied() -> Self {
        Self::error(
            403,
            "AccessDeniedException",
            "You don't have access to the model with the specified model ID.",
        )
    }

    /// 404 `ResourceNotFoundException`: never retried.
    pub fn not_found() -> Self {
        Self::error(
            404,
            "ResourceNotFoundException",
            "The requested model was not found.",
        )
    }

    /// The same reply with `usage` (on answers; errors and raw bodies carry none).
    #[must_use]
    pub fn with_usage(self, usage: Usage) -> Self {
        match self {
            Self::Tool { name, input, .. } => Self::Tool { name, input, usage },
            Self::Text { text, .. } => Self::Text { text, usage },
            Self::MaxTokens { text, .. } => Self::MaxTokens { text, usage },
            Self::Slow { delay, then } => Self::Slow {
                delay,
                then: Box::new(then.with_usage(usage)),
            },
            other @ (Self::Error { .. } | Self::Raw { .. }) => other,
        }
    }
}

/// One request the stub received, with what it answered.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    /// The model or inference-profile id, percent-decoded (empty for an unknown path).
    pub model_id: String,
    /// The request path as sent (still percent-encoded).
    pub path: String,
    /// The request body as JSON; a body that is not JSON is kept as a JSON string.
    pub body: Value,
    /// Request headers, names lowercased, in arrival order.
    pub headers: Vec<(String, String)>,
    /// The HTTP status the stub answered (the scripted one, even if the client gave up first).
    pub replied_status: u16,
    /// Token usage of a successful answer, so tests can sum costs; `None` for errors.
    pub usage: Option<Usage>,
}

impl Recorded {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One line of the `--log` file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    /// 1-based position of the request.
    pub seq: u64,
    pub model_id: String,
    pub status: u16,
    pub usage: Option<Usage>,
}

/// How to start a stub; [`StubServer::start`] uses the defaults.
#[derive(Debug, Clone, Default)]
pub struct StubOptions {
    /// Port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
    /// The first this-many requests answer 429 `ThrottlingException`, whatever is queued: for
    /// fallback demos without scripting.
    pub fail_first: usize,
    /// Append one JSON [`LogLine`] per request to this file (created or truncated on start).
    pub log: Option<PathBuf>,
}

#[derive(Debug, Default)]
struct Queues {
    global: VecDeque<Reply>,
    per_model: HashMap<String, VecDeque<Reply>>,
    requests: Vec<Recorded>,
    received: u64,
    tool_uses: u64,
    /// How long default (unscripted) answers wait before they are sent.
    default_delay: Duration,
}

#[derive(Debug)]
struct Shared {
    queues: Mutex<Queues>,
    log: Option<Mutex<File>>,
    fail_first: usize,
}

impl Shared {
    /// Locks the queues; a panicking test thread must not hide later requests, so poisoning is
    /// ignored (the data is plain queues and a log).
    fn lock(&self) -> MutexGuard<'_, Queues> {
        self.queues.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running stub; it stops when dropped.
#[derive(Debug)]
pub struct StubServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl StubServer {
    /// Starts a stub on a free loopback port with the default options.
    ///
    /// Panics if no loopback port can be bound: a test cannot do anything useful then.
    pub async fn start() -> Self {
        Self::start_with(StubOptions::default())
            .await
            .expect("bind the Bedrock stub on 127.0.0.1")
    }

    /// Starts a stub with `options`; errors if the port cannot be bound or the log not created.
    pub async fn start_with(options: StubOptions) -> std::io::Result<Self> {
        let log = match &options.log {
            Some(path) => Some(Mutex::new(File::create(path)?)),
            None => None,
        };
        let shared = Arc::new(Shared {
            queues: Mutex::new(Queues::default()),
            log,
            fail_first: options.fail_first,
        });
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, options.port)).await?;
        let addr = listener.local_addr()?;
        let app = Router::new()
            .route(
                "/model/{model_id}/converse",
                post(converse).fallback(unknown_operation),
            )
            .fallback(unknown_operation)
            .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
            .with_state(Arc::clone(&shared));
        let task = tokio::spawn(async move {
            // The only error is a failing accept loop; the stub then just stops answering, which
            // the tests see as connection errors.
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, shared, task })
    }

    /// `http://127.0.0.1:<port>`, for the SDK's `endpoint_url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Queues `reply` for the next request to any model (after that model's own queue).
    pub fn push(&self, reply: Reply) {
        self.shared.lock().global.push_back(reply);
    }

    /// Queues `reply` for the next request to `model_id`; it goes before the global queue.
    pub fn push_for(&self, model_id: impl Into<String>, reply: Reply) {
        self.shared
            .lock()
            .per_model
            .entry(model_id.into())
            .or_default()
            .push_back(reply);
    }

    /// Delays every later default (unscripted) answer by `delay`: slow work that still completes
    /// with a valid answer, for tests of what happens while a call is in flight.
    pub fn delay_defaults(&self, delay: Duration) {
        self.shared.lock().default_delay = delay;
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.lock().requests.clone()
    }

    /// How many requests arrived so far.
    pub fn request_count(&self) -> usize {
        self.shared.lock().requests.len()
    }

    /// How many scripted replies are still queued (global and per model), to assert that a test
    /// consumed everything it scripted.
    pub fn pending(&self) -> usize {
        let queues = self.shared.lock();
        queues.global.len() + queues.per_model.values().map(VecDeque::len).sum::<usize>()
    }

    /// Serves until the process is stopped; for the `bedrock-stub` binary.
    pub async fn run_forever(self) {
        std::future::pending::<()>().await;
    }
}

impl Drop for StubServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What one request will be answered with, decided before any delay.
struct Answer {
    status: u16,
    error_type: Option<String>,
    body: String,
    usage: Option<Usage>,
    delay: Duration,
}

async fn converse(
    State(shared): State<Arc<Shared>>,
    Path(model_id): Path<String>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let raw_body = String::from_utf8_lossy(&body).into_owned();
    let body_json = serde_json::from_slice::<Value>(&body).unwrap_or(Value::String(raw_body));
    let (answer, seq) = {
        let mut queues = shared.lock();
        queues.received += 1;
        let seq = queues.received;
        let scripted = if usize::try_from(seq).unwrap_or(usize::MAX) <= shared.fail_first {
            Some(Reply::throttled())
        } else if let Some(reply) = queues
            .per_model
            .get_mut(&model_id)
            .and_then(VecDeque::pop_front)
        {
            Some(reply)
        } else {
            queues.global.pop_front()
        };
        let reply = scripted.unwrap_or_else(|| {
            let reply = default_reply(&body_json, body.len());
            if queues.default_delay.is_zero() {
                reply
            } else {
                Reply::slow(queues.default_delay, reply)
            }
        });
        let answer = render(reply, &mut queues.tool_uses);
        queues.requests.push(Recorded {
            model_id: model_id.clone(),
            path: uri.path().to_owned(),
            body: body_json,
            headers: header_pairs(&headers),
            replied_status: answer.status,
            usage: answer.usage,
        });
        (answer, seq)
    };
    write_log(&shared, seq, &model_id, answer.status, answer.usage);
    if !answer.delay.is_zero() {
        tokio::time::sleep(answer.delay).await;
    }
    respond(
        answer.status,
        answer.error_type.as_deref(),
        answer.body,
        seq,
    )
}

async fn unknown_operation(
    State(shared): State<Arc<Shared>>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let raw_body = String::from_utf8_lossy(&body).into_owned();
    let body_json = serde_json::from_slice::<Value>(&body).unwrap_or(Value::String(raw_body));
    let seq = {
        let mut queues = shared.lock();
        queues.received += 1;
        let seq = queues.received;
        queues.requests.push(Recorded {
            model_id: String::new(),
            path: uri.path().to_owned(),
            body: body_json,
            headers: header_pairs(&headers),
            replied_status: 404,
            usage: None,
        });
        seq
    };
    write_log(&shared, seq, "", 404, None);
    let body = json!({ "message": format!("Unknown operation: {}", uri.path()) }).to_string();
    respond(404, Some("UnknownOperationException"), body, seq)
}

fn header_pairs(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// Appends one line to the log file, if any. A failed write is reported on stderr and otherwise
/// ignored: the answer matters more to the client than the log.
fn write_log(shared: &Shared, seq: u64, model_id: &str, status: u16, usage: Option<Usage>) {
    let Some(log) = &shared.log else {
        return;
    };
    let line = LogLine {
        seq,
        model_id: model_id.to_owned(),
        status,
        usage,
    };
    let Ok(mut text) = serde_json::to_string(&line) else {
        return;
    };
    text.push('\n');
    let mut file = log.lock().unwrap_or_else(PoisonError::into_inner);
    if let Err(err) = file.write_all(text.as_bytes()).and_then(|()| file.flush()) {
        eprintln!("bedrock stub: cannot write the request log: {err}");
    }
}

/// Turns a reply into the status, headers and body to send, numbering tool calls.
fn render(reply: Reply, tool_uses: &mut u64) -> Answer {
    let mut delay = Duration::ZERO;
    let mut reply = reply;
    while let Reply::Slow { delay: d, then } = reply {
        delay = delay.saturating_add(d);
        reply = *then;
    }
    let latency_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX).max(1);
    let success = |content: Value, stop_reason: &str, usage: Usage| Answer {
        status: 200,
        error_type: None,
        body: json!({
            "output": { "message": { "role": "assistant", "content": [content] } },
            "stopReason": stop_reason,
            "usage": usage.to_wire(),
            "metrics": { "latencyMs": latency_ms },
        })
        .to_string(),
        usage: Some(usage),
        delay,
    };
    match reply {
        Reply::Tool { name, input, usage } => {
            *tool_uses += 1;
            let block = json!({
                "toolUse": {
                    "toolUseId": format!("tooluse_{}", *tool_uses),
                    "name": name,
                    "input": input,
                }
            });
            success(block, "tool_use", usage)
        }
        Reply::Text { text, usage } => success(json!({ "text": text }), "end_turn", usage),
        Reply::MaxTokens { text, usage } => success(json!({ "text": text }), "max_tokens", usage),
        Reply::Error {
            status,
            error_type,
            message,
        } => Answer {
            status,
            error_type: Some(error_type),
            body: json!({ "message": message }).to_string(),
            usage: None,
            delay,
        },
        Reply::Raw { status, body } => Answer {
            status,
            error_type: None,
            body,
            usage: None,
            delay,
        },
        Reply::Slow { .. } => unreachable!("slow replies are unwrapped above"),
    }
}

fn respond(status: u16, error_type: Option<&str>, body: String, seq: u64) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(id) = HeaderValue::from_str(&format!("stub-request-{seq}")) {
        headers.insert(REQUEST_ID_HEADER, id);
    }
    if let Some(error_type) = error_type.and_then(|t| HeaderValue::from_str(t).ok()) {
        headers.insert(ERROR_TYPE_HEADER, error_type);
    }
    response
}

/// Which structured answer a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Analysis,
    Decision,
    Resolution,
    Strategy,
}

/// Keywords that name a kind in tool names, schema titles, system prompts and data roles.
const KIND_KEYWORDS: &[(&str, Kind)] = &[
    ("analy", Kind::Analysis),
    ("decision", Kind::Decision),
    ("decide", Kind::Decision),
    ("resolution", Kind::Resolution),
    ("resolve", Kind::Resolution),
    ("conflict", Kind::Resolution),
    ("strateg", Kind::Strategy),
    ("mutation", Kind::Strategy),
];

/// The kind whose keyword appears first in `text`: a prompt names its own task before it
/// mentions the others.
fn kind_in(text: &str) -> Option<Kind> {
    let text = text.to_ascii_lowercase();
    KIND_KEYWORDS
        .iter()
        .filter_map(|(word, kind)| text.find(word).map(|at| (at, *kind)))
        .min_by_key(|(at, _)| *at)
        .map(|(_, kind)| kind)
}

/// The default answer to a request nobody scripted: structured so an unattended run completes.
///
/// A forced tool (or `any` tool choice) is answered with that tool; a native JSON-schema output
/// format with a JSON text block; anything else with JSON inside prose, as a model without
/// structured output would. Usage is deterministic: a quarter of the request and answer sizes.
pub fn default_reply(request: &Value, request_len: usize) -> Reply {
    let data = request_data(request);
    let system = system_text(request);
    let forced_tool = forced_tool_name(request);
    let text_format = &request["outputConfig"]["textFormat"];
    let named = if let Some(tool) = &forced_tool {
        kind_in(tool)
    } else if text_format.is_object() {
        schema_kind(text_format)
    } else {
        None
    };
    let kind = named.or_else(|| kind_in(&system)).or_else(|| {
        data.as_ref()
            .and_then(|d| d["role"].as_str())
            .and_then(kind_in)
    });
    let answer = kind.map_or_else(
        || json!({ "note": "default answer of the Bedrock stub" }),
        |kind| answer_for(kind, data.as_ref()),
    );
    let answer_text = answer.to_string();
    let usage = Usage::new((request_len / 4) as u64, (answer_text.len() / 4) as u64);
    match forced_tool {
        Some(name) => Reply::Tool {
            name,
            input: answer,
            usage,
        },
        None if text_format.is_object() => Reply::Text {
            text: answer_text,
            usage,
        },
        None => Reply::Text {
            text: format!("Here is the result: {answer_text}"),
            usage,
        },
    }
}

/// The tool the request forces: `toolChoice.tool.name`, or the first tool under `toolChoice.any`.
fn forced_tool_name(request: &Value) -> Option<String> {
    let config = &request["toolConfig"];
    let choice = &config["toolChoice"];
    if let Some(name) = choice["tool"]["name"].as_str() {
        return Some(name.to_owned());
    }
    if choice.get("any").is_some() {
        return config["tools"]
            .as_array()?
            .iter()
            .find_map(|tool| tool["toolSpec"]["name"].as_str())
            .map(str::to_owned);
    }
    None
}

/// The kind named by a JSON-schema output format: the schema's `title`, else the format's name.
fn schema_kind(text_format: &Value) -> Option<Kind> {
    let definition = &text_format["structure"]["jsonSchema"];
    let schema = match &definition["schema"] {
        Value::String(text) => serde_json::from_str::<Value>(text).unwrap_or(Value::Null),
        other => other.clone(),
    };
    schema["title"]
        .as_str()
        .and_then(kind_in)
        .or_else(|| definition["name"].as_str().and_then(kind_in))
}

/// All system prompt text blocks, joined.
fn system_text(request: &Value) -> String {
    request["system"]
        .as_array()
        .map(|blocks| {
            blocks
                .iter()
                .filter_map(|block| block["text"].as_str())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

/// The JSON document the prompt carries: the last text block of the last user message that is a
/// whole JSON object.
pub fn request_data(request: &Value) -> Option<Value> {
    let message = request["messages"]
        .as_array()?
        .iter()
        .rev()
        .find(|m| m["role"] == "user")?;
    message["content"]
        .as_array()?
        .iter()
        .rev()
        .filter_map(|block| block["text"].as_str())
        .find_map(|text| {
            serde_json::from_str::<Value>(text.trim())
                .ok()
                .filter(Value::is_object)
        })
}

fn answer_for(kind: Kind, data: Option<&Value>) -> Value {
    let null = Value::Null;
    let data = data.unwrap_or(&null);
    match kind {
        Kind::Analysis => json!({
            "current_state_assessment": "The system is stable; small parameter moves are worth trying.",
            "strengths": [],
            "weaknesses": [],
            "opportunities": [],
            "threats": [],
            "recommended_focus_areas": [],
            "confidence_score": 0.6,
            "reasoning": "Default analysis of the Bedrock stub.",
        }),
        Kind::Decision => decision(data),
        Kind::Resolution => json!({
            "action": "retry_later",
            "retry_after_seconds": 600,
            "reasoning": "Default resolution of the Bedrock stub: wait and retry.",
        }),
        Kind::Strategy => default_strategy(&data["dna"]),
    }
}

/// APPROVE, unless the data says the local risk is above the risk ceiling.
fn decision(data: &Value) -> Value {
    let local_risk = data["local_risk"].as_f64();
    let ceiling = data["risk_ceiling"].as_f64();
    match (local_risk, ceiling) {
        (Some(risk), Some(ceiling)) if risk > ceiling => json!({
            "recommendation": "REJECT",
            "confidence": 0.8,
            "risk_assessment": {
                "overall_risk": risk.clamp(0.0, 1.0),
                "technical_risk": risk.clamp(0.0, 1.0),
                "business_risk": 0.5,
                "operational_risk": 0.5,
            },
            "benefits": [],
            "drawbacks": ["local risk is above the risk ceiling"],
            "mitigation_strategies": [],
            "reasoning": format!("Rejected: local risk {risk} is above the ceiling {ceiling}."),
            "estimated_impact": {},
        }),
        _ => json!({
            "recommendation": "APPROVE",
            "confidence": 0.8,
            "risk_assessment": {
                "overall_risk": 0.3,
                "technical_risk": 0.3,
                "business_risk": 0.2,
                "operational_risk": 0.2,
            },
            "benefits": [],
            "drawbacks": [],
            "mitigation_strategies": ["monitor"],
            "reasoning": "Default decision of the Bedrock stub: the risk is acceptable.",
            "estimated_impact": {},
        }),
    }
}

/// One legal move of one gene, as chosen by the default strategy.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneStep {
    pub gene: String,
    pub from: Value,
    pub to: Value,
}

/// A gene as the default strategy reads it from the prompt's DNA document.
#[derive(Debug, Clone, PartialEq)]
enum GeneShape {
    Int {
        value: i64,
        min: Option<i64>,
        max: Option<i64>,
        max_step: Option<i64>,
    },
    Float {
        value: f64,
        min: Option<f64>,
        max: Option<f64>,
        max_step: Option<f64>,
    },
    Bool(bool),
    Choice {
        value: String,
        choices: Vec<String>,
    },
}

/// Reads one gene; `None` for frozen or unreadable genes, which the strategy must not touch.
fn parse_gene(gene: &Value) -> Option<GeneShape> {
    if gene["frozen"].as_bool().unwrap_or(false) {
        return None;
    }
    let value = &gene["value"];
    let kind = gene["type"].as_str().map(str::to_ascii_lowercase);
    let kind = kind.as_deref().unwrap_or(match value {
        Value::Bool(_) => "bool",
        Value::String(_) => "choice",
        Value::Number(n) if n.is_i64() => "int",
        _ => "float",
    });
    match kind {
        "int" | "integer" => Some(GeneShape::Int {
            value: as_int(value)?,
            min: as_int(&gene["min"]),
            max: as_int(&gene["max"]),
            max_step: as_int(&gene["max_step"]),
        }),
        "float" | "number" => Some(GeneShape::Float {
            value: value.as_f64().filter(|v| v.is_finite())?,
            min: gene["min"].as_f64(),
            max: gene["max"].as_f64(),
            max_step: gene["max_step"].as_f64(),
        }),
        "bool" | "boolean" => Some(GeneShape::Bool(value.as_bool()?)),
        "choice" | "enum" => Some(GeneShape::Choice {
            value: value.as_str()?.to_owned(),
            choices: gene["choices"]
                .as_array()?
                .iter()
                .filter_map(|c| c.as_str().map(str::to_owned))
                .collect(),
        }),
        _ => None,
    }
}

/// An integer, also from an integral float (canonical JSON writes `3.0` as `3` and back).
fn as_int(value: &Value) -> Option<i64> {
    value.as_i64().or_else(|| {
        value
            .as_f64()
            .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
            .map(|f| f as i64)
    })
}

/// The next legal value of a gene, preferring the direction `up`; `None` if it cannot move.
fn move_gene(shape: &GeneShape, up: bool) -> Option<Value> {
    match shape {
        GeneShape::Int {
            value,
            min,
            max,
            max_step,
        } => {
            let step = match *max_step {
                Some(m) if m < 1 => return None,
                Some(m) => (m / 4).max(1),
                None => 1,
            };
            let lo = min.unwrap_or(i64::MIN);
            let hi = max.unwrap_or(i64::MAX);
            if lo > hi {
                return None;
            }
            [up, !up].into_iter().find_map(|dir| {
                let target = if dir {
                    value.saturating_add(step)
                } else {
                    value.saturating_sub(step)
                }
                .clamp(lo, hi);
                let moved = target.abs_diff(*value);
                let legal = target != *value
                    && (lo..=hi).contains(&target)
                    && max_step.is_none_or(|m| moved <= m.unsigned_abs());
                legal.then(|| json!(target))
            })
        }
        GeneShape::Float {
            value,
            min,
            max,
            max_step,
        } => {
            // A quarter of max_step, at least 1 as for ints, but never more than half of it so
            // float rounding cannot push a move over the limit.
            let step = match *max_step {
                Some(m) if !(m.is_finite() && m > 0.0) => return None,
                Some(m) => (m / 4.0).max(1.0).min(m / 2.0),
                None => match (*min, *max) {
                    (Some(lo), Some(hi)) if hi > lo => (hi - lo) / 20.0,
                    _ => (value.abs() * 0.1).max(0.1),
                },
            };
            let lo = min.unwrap_or(f64::NEG_INFINITY);
            let hi = max.unwrap_or(f64::INFINITY);
            if lo > hi {
                return None;
            }
            [up, !up].into_iter().find_map(|dir| {
                let target = if dir { value + step } else { value - step }.clamp(lo, hi);
                #[expect(
                    clippy::float_cmp,
                    reason = "the pipeline refuses a move to exactly the current value, so exact equality is the rule"
                )]
                let legal = target.is_finite()
                    && target != *value
                    && max_step.is_none_or(|m| (target - value).abs() <= m);
                legal.then(|| json!(target))
            })
        }
        GeneShape::Bool(value) => Some(json!(!value)),
        GeneShape::Choice { value, choices } => {
            let start = choices.iter().position(|c| c == value).map_or(0, |i| i + 1);
            (0..choices.len())
                .map(|offset| &choices[(start + offset) % choices.len()])
                .find(|c| *c != value)
                .map(|c| json!(c))
        }
    }
}

/// The genes the default strategy moves for `dna` (`{"generation": N, "genes": {...}}`): up to
/// three non-frozen genes, each by a small legal step.
///
/// Genes are taken in name order, starting at `generation` modulo the number of movable genes,
/// and the preferred direction alternates with the generation, so successive plans differ and
/// values oscillate instead of drifting to a bound.
pub fn default_steps(dna: &Value) -> Vec<GeneStep> {
    let generation = dna["generation"].as_u64().unwrap_or(0);
    let Some(genes) = dna["genes"].as_object() else {
        return Vec::new();
    };
    let mut names: Vec<&String> = genes.keys().collect();
    names.sort();
    let movable: Vec<(&String, GeneShape)> = names
        .into_iter()
        .filter_map(|name| {
            let shape = parse_gene(&genes[name.as_str()])?;
            move_gene(&shape, true).map(|_| (name, shape))
        })
        .collect();
    if movable.is_empty() {
        return Vec::new();
    }
    let count = movable.len();
    let start = usize::try_from(generation % count as u64).unwrap_or(0);
    (0..count.min(MAX_DEFAULT_STEPS))
        .filter_map(|offset| {
            let (name, shape) = &movable[(start + offset) % count];
            let up = (generation + offset as u64) % 2 == 0;
            let to = move_gene(shape, up)?;
            Some(GeneStep {
                gene: (*name).clone(),
                from: genes[name.as_str()]["value"].clone(),
                to,
            })
        })
        .collect()
}

/// A `MutationStrategy` whose primary steps (one gene each) are valid for `dna`.
pub fn default_strategy(dna: &Value) -> Value {
    let steps = default_steps(dna);
    let ids: Vec<String> = (1..=steps.len()).map(|i| format!("s{i}")).collect();
    let mutations: Vec<Value> = steps
        .iter()
        .zip(&ids)
        .map(|(step, id)| {
            json!({
                "id": id,
                "changes": [{ "gene": step.gene, "value": step.to }],
                "rationale": format!("Try {} = {} (was {}): a small legal step.", step.gene, step.to, step.from),
                "predicted_impact": 0.0,
            })
        })
        .collect();
    json!({
        "primary_mutations": mutations,
        "contingency_mutations": [],
        "execution_order": ids,
        "success_criteria": {},
        "risk_mitigation": [],
        "expected_outcomes": {},
        "timeline_estimate": "",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dna(generation: u64) -> Value {
        json!({
            "generation": generation,
            "genes": {
                "batch": {"type": "int", "value": 64, "min": 1, "max": 256, "max_step": 32},
                "cache_mb": {"type": "int", "value": 4096, "min": 16, "max": 4096, "max_step": 512},
                "codec": {"type": "choice", "value": "lz4", "choices": ["none", "lz4", "zstd"]},
                "frozen_int": {"type": "int", "value": 5, "min": 0, "max": 10, "max_step": 2, "frozen": true},
                "lr": {"type": "float", "value": 0.01, "min": 0.0001, "max": 0.1, "max_step": 0.005},
                "prefetch": {"type": "bool", "value": false},
                "region": {"type": "choice", "value": "eu", "choices": ["eu"]},
                "stuck": {"type": "int", "value": 3, "min": 3, "max": 3, "max_step": 1},
                "threads": {"type": "int", "value": 1, "min": 1, "max": 16, "max_step": 1},
                "timeout": {"type": "float", "value": 30.0, "min": 0.1, "max": 30.0, "max_step": 8.0},
            }
        })
    }

    /// Checks a step against the gene it changes, as the pipeline's validator would.
    fn assert_valid(dna: &Value, step: &GeneStep) {
        let gene = &dna["genes"][&step.gene];
        assert!(
            !gene["frozen"].as_bool().unwrap_or(false),
            "{step:?} moves a frozen gene"
        );
        assert_ne!(step.to, gene["value"], "{step:?} does not change the gene");
        assert_eq!(step.from, gene["value"]);
        match gene["type"].as_str().expect("well-formed fixture") {
            "int" | "float" => {
                let to = step.to.as_f64().expect("well-formed fixture");
                let from = gene["value"].as_f64().expect("well-formed fixture");
                assert!(
                    to >= gene["min"].as_f64().expect("well-formed fixture"),
                    "{step:?} below min"
                );
                assert!(
                    to <= gene["max"].as_f64().expect("well-formed fixture"),
                    "{step:?} above max"
                );
                assert!(
                    (to - from).abs() <= gene["max_step"].as_f64().expect("well-formed fixture"),
                    "{step:?} is above max_step"
                );
                if gene["type"] == "int" {
                    assert!(step.to.is_i64(), "{step:?} gives an int gene a float");
                }
            }
            "bool" => assert!(step.to.is_boolean()),
            "choice" => assert!(
                gene["choices"]
                    .as_array()
                    .expect("well-formed fixture")
                    .contains(&step.to)
            ),
            other => panic!("unexpected type {other}"),
        }
    }

    #[test]
    fn steps_are_always_valid_and_distinct() {
        for generation in 0..50 {
            let dna = dna(generation);
            let steps = default_steps(&dna);
            assert_eq!(steps.len(), 3, "generation {generation}");
            let mut genes: Vec<_> = steps.iter().map(|s| s.gene.clone()).collect();
            genes.dedup();
            assert_eq!(genes.len(), steps.len(), "a gene is moved twice");
            for step in &steps {
                assert_valid(&dna, step);
            }
        }
    }

    #[test]
    fn frozen_and_immovable_genes_are_never_touched() {
        for generation in 0..50 {
            for step in default_steps(&dna(generation)) {
                assert!(
                    !["frozen_int", "region", "stuck"].contains(&step.gene.as_str()),
                    "{step:?}"
                );
            }
        }
    }

    #[test]
    fn successive_generations_give_different_plans() {
        let plans: Vec<_> = (0..7).map(|g| default_steps(&dna(g))).collect();
        for pair in plans.windows(2) {
            assert_ne!(pair[0], pair[1]);
        }
    }

    #[test]
    fn numeric_steps_are_small() {
        // At most max(1, max_step / 4) for ints; at most half of max_step for floats.
        for generation in 0..50 {
            for step in default_steps(&dna(generation)) {
                match step.gene.as_str() {
                    "batch" => assert_eq!(
                        step.to.as_i64().expect("well-formed fixture").abs_diff(64),
                        8
                    ),
                    "cache_mb" => assert_eq!(step.to, json!(4096 - 128), "clamped at max"),
                    "threads" => assert_eq!(step.to, json!(2), "clamped at min"),
                    "timeout" => assert_eq!(step.to, json!(28.0)),
                    "lr" => {
                        let to = step.to.as_f64().expect("well-formed fixture");
                        assert!((to - 0.01).abs() <= 0.0025 + 1e-12, "{to}");
                    }
                    _ => {}
                }
            }
        }
    }

    #[test]
    fn bools_flip_and_choices_rotate() {
        let shape =
            parse_gene(&json!({"type": "bool", "value": true})).expect("well-formed fixture");
        assert_eq!(move_gene(&shape, true), Some(json!(false)));
        let shape = parse_gene(
            &json!({"type": "choice", "value": "zstd", "choices": ["none", "lz4", "zstd"]}),
        )
        .expect("well-formed fixture");
        assert_eq!(move_gene(&shape, true), Some(json!("none")));
        let shape =
            parse_gene(&json!({"type": "choice", "value": "gone", "choices": ["none", "lz4"]}))
                .expect("well-formed fixture");
        assert_eq!(move_gene(&shape, true), Some(json!("none")));
    }

    #[test]
    fn genes_that_cannot_move_are_skipped() {
        let cases = [
            json!({"type": "int", "value": 3, "min": 0, "max": 10, "max_step": 0}),
            json!({"type": "float", "value": 1.0, "min": 1.0, "max": 1.0, "max_step": 1.0}),
            json!({"type": "choice", "value": "a", "choices": ["a"]}),
            json!({"type": "int", "value": 50, "min": 0, "max": 10, "max_step": 2}),
        ];
        for gene in cases {
            let shape = parse_gene(&gene).expect("well-formed fixture");
            assert_eq!(move_gene(&shape, true), None, "{gene}");
        }
        assert_eq!(
            parse_gene(&json!({"type": "bool", "value": true, "frozen": true})),
            None
        );
    }

    #[test]
    fn few_genes_give_few_steps_and_no_genes_none() {
        let one = json!({"generation": 9, "genes": {"x": {"type": "int", "value": 1, "min": 0, "max": 2, "max_step": 1}}});
        let steps = default_steps(&one);
        assert_eq!(steps.len(), 1);
        assert_valid(&one, &steps[0]);
        assert!(default_steps(&json!({"generation": 1, "genes": {}})).is_empty());
        assert!(default_steps(&Value::Null).is_empty());
    }

    #[test]
    fn strategy_json_has_the_mutation_strategy_shape() {
        let strategy = default_strategy(&dna(4));
        let primary = strategy["primary_mutations"]
            .as_array()
            .expect("well-formed fixture");
        assert_eq!(primary.len(), 3);
        assert_eq!(strategy["execution_order"], json!(["s1", "s2", "s3"]));
        for m in primary {
            assert_eq!(
                m["changes"].as_array().expect("well-formed fixture").len(),
                1
            );
            assert!(m["rationale"].is_string());
        }
        let parsed: shared::domain::MutationStrategy =
            serde_json::from_value(strategy).expect("parses as the domain type");
        assert_eq!(parsed.primary_mutations.len(), 3);
    }

    #[test]
    fn default_steps_pass_the_domain_validator() {
        use shared::domain::{GeneChange, GeneDef, GeneName, GeneSchema, Genes, check_change};
        for generation in 0..20 {
            let dna = dna(generation);
            let mut schema = GeneSchema::new();
            let mut genes = Genes::new();
            for (name, gene) in dna["genes"].as_object().expect("well-formed fixture") {
                let name = GeneName::parse(name).expect("well-formed fixture");
                let def: GeneDef =
                    serde_json::from_value(gene.clone()).expect("well-formed fixture");
                let value = def
                    .spec
                    .value_from_json(&gene["value"])
                    .expect("well-formed fixture");
                genes.insert(name.clone(), value);
                schema.insert(name, def);
            }
            for step in default_steps(&dna) {
                let change: GeneChange =
                    serde_json::from_value(json!({"gene": step.gene, "value": step.to}))
                        .expect("well-formed fixture");
                check_change(&schema, &genes, &change)
                    .unwrap_or_else(|e| panic!("generation {generation}: {step:?}: {e}"));
            }
        }
    }

    fn request(body: &Value) -> Reply {
        default_reply(body, body.to_string().len())
    }

    #[test]
    fn forced_tool_gets_a_tool_answer() {
        let body = json!({
            "messages": [{"role": "user", "content": [{"text": dna_prompt()}]}],
            "toolConfig": {
                "tools": [{"toolSpec": {"name": "submit_strategy", "inputSchema": {"json": {}}}}],
                "toolChoice": {"tool": {"name": "submit_strategy"}}
            }
        });
        let Reply::Tool { name, input, usage } = request(&body) else {
            panic!("expected a tool answer");
        };
        assert_eq!(name, "submit_strategy");
        assert_eq!(
            input["primary_mutations"]
                .as_array()
                .expect("well-formed fixture")
                .len(),
            3
        );
        assert_eq!(usage.input, (body.to_string().len() / 4) as u64);
        assert_eq!(usage.output, (input.to_string().len() / 4) as u64);
    }

    fn dna_prompt() -> String {
        json!({"role": "strategize", "dna": dna(3)}).to_string()
    }

    #[test]
    fn json_schema_output_uses_the_schema_title() {
        let schema = json!({"title": "ResolutionStrategy", "type": "object"}).to_string();
        let body = json!({
            "system": [{"text": "You analyse systems."}],
            "messages": [{"role": "user", "content": [{"text": "{}"}]}],
            "outputConfig": {"textFormat": {"type": "json_schema", "structure": {"jsonSchema": {"schema": schema, "name": "answer"}}}}
        });
        let Reply::Text { text, .. } = request(&body) else {
            panic!("expected text");
        };
        let answer: Value = serde_json::from_str(&text).expect("well-formed fixture");
        assert_eq!(answer["action"], "retry_later");
        assert_eq!(answer["retry_after_seconds"], 600);
    }

    #[test]
    fn plain_requests_get_json_in_prose_by_system_prompt() {
        let data = json!({"role": "decide", "local_risk": 0.9, "risk_ceiling": 0.8}).to_string();
        let body = json!({
            "system": [{"text": "You decide whether a mutation may be applied."}],
            "messages": [
                {"role": "user", "content": [{"text": "older"}]},
                {"role": "assistant", "content": [{"text": "ok"}]},
                {"role": "user", "content": [{"text": data}]}
            ]
        });
        let Reply::Text { text, .. } = request(&body) else {
            panic!("expected text");
        };
        let json_part = text
            .strip_prefix("Here is the result: ")
            .expect("well-formed fixture");
        let answer: Value = serde_json::from_str(json_part).expect("well-formed fixture");
        assert_eq!(answer["recommendation"], "REJECT");

        let data = json!({"role": "decide", "local_risk": 0.5, "risk_ceiling": 0.8}).to_string();
        let body = json!({
            "system": [{"text": "Decision engine."}],
            "messages": [{"role": "user", "content": [{"text": data}]}]
        });
        let Reply::Text { text, .. } = request(&body) else {
            panic!("expected text");
        };
        assert!(text.contains("\"APPROVE\""), "{text}");
    }

    #[test]
    fn analysis_answer_parses_as_the_domain_type() {
        let body = json!({
            "messages": [{"role": "user", "content": [{"text": "{}"}]}],
            "toolConfig": {"tools": [{"toolSpec": {"name": "submit_analysis"}}], "toolChoice": {"any": {}}}
        });
        let Reply::Tool { name, input, .. } = request(&body) else {
            panic!("expected a tool answer");
        };
        assert_eq!(name, "submit_analysis");
        let _: shared::domain::EvolutionAnalysis =
            serde_json::from_value(input).expect("well-formed fixture");
    }

    #[test]
    fn render_wraps_answers_in_the_converse_shape() {
        let mut counter = 0;
        let answer = render(
            Reply::slow(
                Duration::from_millis(20),
                Reply::tool("t", json!({"a": 1})).with_usage(Usage::new(3, 4).with_cache(5, 6)),
            ),
            &mut counter,
        );
        assert_eq!(answer.status, 200);
        assert_eq!(answer.delay, Duration::from_millis(20));
        let body: Value = serde_json::from_str(&answer.body).expect("well-formed fixture");
        assert_eq!(body["stopReason"], "tool_use");
        assert_eq!(body["usage"]["totalTokens"], 18);
        assert_eq!(body["usage"]["cacheWriteInputTokens"], 6);
        assert_eq!(
            body["output"]["message"]["content"][0]["toolUse"]["toolUseId"],
            "tooluse_1"
        );
        assert_eq!(body["metrics"]["latencyMs"], 20);
    }
}
