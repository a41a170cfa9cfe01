//! A fault-injecting HTTP proxy on loopback, between the real SDK clients and the stand-ins
//! (moto for DynamoDB, S3, SQS and SNS; the Converse stub for Bedrock).
//!
//! The suite's exactly-once rules (docs/architecture.md, "Exactly once") are claims about what
//! happens when the services misbehave: throttling, 5xx, timeouts, connections that drop, and
//! the nastiest one, a write that happened although the client saw a failure. The stand-ins never
//! misbehave on their own, so this proxy makes them: every request is recognised as a service
//! and operation (DynamoDB and SQS by `X-Amz-Target`, SNS by the form body's `Action`, Bedrock
//! by `POST /model/<id>/converse`, S3 by method and path), and at the rate configured for that
//! operation it is answered with a protocol-correct error that the SDK classifies as it would
//! the real service's, held and then dropped, dropped at once, or forwarded and its response
//! dropped.
//!
//! Faults are drawn from a seeded generator per operation (ChaCha8 seeded from the run's seed and
//! the operation's name), so the n-th request of an operation gets the same fault in every run
//! with that seed: a failing run can be replayed. The proxy counts the requests and the faults
//! it injected per operation ([`FaultProxy::counts`]), and faults can be switched off
//! ([`FaultProxy::set_enabled`]) to let a run settle before its invariants are read.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rand::{Rng as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The service a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Service {
    DynamoDb,
    Sqs,
    Sns,
    S3,
    Bedrock,
}

impl Service {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DynamoDb => "dynamodb",
            Self::Sqs => "sqs",
            Self::Sns => "sns",
            Self::S3 => "s3",
            Self::Bedrock => "bedrock",
        }
    }
}

/// What the proxy did to one request instead of passing it through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fault {
    /// The service's throttling error (DynamoDB `ProvisionedThroughputExceededException` or
    /// `ThrottlingException`, SQS `ThrottlingException`, SNS `Throttling`, S3 `SlowDown`,
    /// Bedrock 429 `ThrottlingException`); nothing reaches the backend.
    Throttle,
    /// A 500 or 503 in the service's own error shape; nothing reaches the backend.
    ServerError,
    /// The request is held for [`FaultPlan::timeout`] and the connection then closed without an
    /// answer, as a backend that stopped responding; nothing reaches the backend.
    Timeout,
    /// The connection is closed at once without an answer; nothing reaches the backend.
    Drop,
    /// The request is forwarded and applied, then the connection is closed before the answer:
    /// the write happened, the client saw a failure.
    DropAfterForward,
}

impl Fault {
    pub const ALL: [Self; 5] = [
        Self::Throttle,
        Self::ServerError,
        Self::Timeout,
        Self::Drop,
        Self::DropAfterForward,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Throttle => "throttle",
            Self::ServerError => "5xx",
            Self::Timeout => "timeout",
            Self::Drop => "drop",
            Self::DropAfterForward => "drop-after-forward",
        }
    }
}

/// Per-request probabilities of each fault (their sum must not exceed 1).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rates {
    pub throttle: f64,
    pub server_error: f64,
    pub timeout: f64,
    pub drop: f64,
    pub drop_after_forward: f64,
}

impl Rates {
    /// The same probability `each` for every fault.
    pub fn uniform(each: f64) -> Self {
        Self {
            throttle: each,
            server_error: each,
            timeout: each,
            drop: each,
            drop_after_forward: each,
        }
    }

    fn of(&self, fault: Fault) -> f64 {
        match fault {
            Fault::Throttle => self.throttle,
            Fault::ServerError => self.server_error,
            Fault::Timeout => self.timeout,
            Fault::Drop => self.drop,
            Fault::DropAfterForward => self.drop_after_forward,
        }
    }

    /// The fault a uniform draw in [0, 1) lands on, if any.
    fn pick(&self, draw: f64) -> Option<Fault> {
        let mut edge = 0.0;
        for fault in Fault::ALL {
            edge += self.of(fault);
            if draw < edge {
                return Some(fault);
            }
        }
        None
    }
}

/// The rates of one service, or of one of its operations.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub service: Service,
    /// `None`: every operation of the service without a rule of its own.
    pub operation: Option<String>,
    pub rates: Rates,
}

/// What to inject and how to draw it.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultPlan {
    /// Seeds every operation's generator: the same seed replays the same faults per operation.
    pub seed: u64,
    /// An operation's own rule wins over its service's; a request without a rule passes.
    pub rules: Vec<Rule>,
    /// How long a [`Fault::Timeout`] holds the request before it closes the connection.
    pub timeout: Duration,
}

impl FaultPlan {
    /// No faults at all (the proxy then only counts).
    pub fn none(seed: u64) -> Self {
        Self {
            seed,
            rules: Vec::new(),
            timeout: Duration::from_secs(2),
        }
    }

    /// `rates` for every operation of `service`.
    #[must_use]
    pub fn service(mut self, service: Service, rates: Rates) -> Self {
        self.rules.push(Rule {
            service,
            operation: None,
            rates,
        });
        self
    }

    /// `rates` for one operation, overriding its service's.
    #[must_use]
    pub fn operation(mut self, service: Service, operation: &str, rates: Rates) -> Self {
        self.rules.push(Rule {
            service,
            operation: Some(operation.to_owned()),
            rates,
        });
        self
    }

    fn rates(&self, service: Service, operation: &str) -> Option<Rates> {
        let exact = self
            .rules
            .iter()
            .find(|r| r.service == service && r.operation.as_deref() == Some(operation));
        exact
            .or_else(|| {
                self.rules
                    .iter()
                    .find(|r| r.service == service && r.operation.is_none())
            })
            .map(|r| r.rates)
    }
}

/// Requests and injected faults of one operation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OperationCounts {
    pub requests: u64,
    pub faults: BTreeMap<Fault, u64>,
}

impl OperationCounts {
    pub fn faulted(&self) -> u64 {
        self.faults.values().sum()
    }
}

/// Where the proxy sends what it passes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backends {
    /// moto: every AWS service but Bedrock.
    pub aws: String,
    /// The Converse stub; `None` sends Bedrock to `aws` too.
    pub bedrock: Option<String>,
}

#[derive(Debug, Default)]
struct State {
    generators: BTreeMap<(Service, String), ChaCha8Rng>,
    counts: BTreeMap<(Service, String), OperationCounts>,
}

#[derive(Debug)]
struct Inner {
    plan: FaultPlan,
    backends: Backends,
    enabled: AtomicBool,
    state: Mutex<State>,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// A running proxy; it stops accepting when dropped (connections in flight finish).
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    inner: Arc<Inner>,
    task: JoinHandle<()>,
}

/// Why a connection was closed without an answer; hyper closes the connection when the
/// service fails, which is exactly the fault.
#[derive(Debug)]
struct Dropped;

impl fmt::Display for Dropped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("connection dropped by the fault proxy")
    }
}

impl std::error::Error for Dropped {}

impl FaultProxy {
    /// Starts a proxy on a free loopback port, with faults enabled.
    pub async fn start(plan: FaultPlan, backends: Backends) -> std::io::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let inner = Arc::new(Inner {
            plan,
            backends,
            enabled: AtomicBool::new(true),
            state: Mutex::new(State::default()),
            client: Client::builder(TokioExecutor::new()).build(connector),
        });
        let accepting = Arc::clone(&inner);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let inner = Arc::clone(&accepting);
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let inner = Arc::clone(&inner);
                        async move { inner.handle(request).await }
                    });
                    // An error here is a dropped connection: the fault itself, or the client
                    // going away.
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self { addr, inner, task })
    }

    /// `http://127.0.0.1:<port>`, for `AWS_ENDPOINT_URL` and the SDK's `endpoint_url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Turns injection on or off; requests are counted either way.
    pub fn set_enabled(&self, enabled: bool) {
        self.inner.enabled.store(enabled, Ordering::SeqCst);
    }

    /// Requests and injected faults per (service, operation).
    pub fn counts(&self) -> BTreeMap<(Service, String), OperationCounts> {
        self.inner.lock().counts.clone()
    }

    /// Faults injected in all, per fault kind.
    pub fn totals(&self) -> BTreeMap<Fault, u64> {
        let mut totals = BTreeMap::new();
        for counts in self.inner.lock().counts.values() {
            for (fault, n) in &counts.faults {
                *totals.entry(*fault).or_insert(0) += n;
            }
        }
        totals
    }

    /// One line per operation seen: `service.Operation faulted/requests (kind n, ...)`, for
    /// the figures a run prints.
    pub fn summary(&self) -> Vec<String> {
        self.counts()
            .into_iter()
            .map(|((service, operation), c)| {
                let kinds: Vec<String> = c
                    .faults
                    .iter()
                    .map(|(fault, n)| format!("{} {n}", fault.as_str()))
                    .collect();
                format!(
                    "{}.{operation} {}/{} ({})",
                    service.as_str(),
                    c.faulted(),
                    c.requests,
                    kinds.join(", ")
                )
            })
            .collect()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Inner {
    /// The counters and generators; a panicking test thread must not stop the proxy.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn handle(&self, request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Dropped> {
        let (parts, body) = request.into_parts();
        // A client that went away mid-body has nothing to be answered.
        let body = body.collect().await.map_err(|_| Dropped)?.to_bytes();
        let (service, operation) = recognise(&parts.method, &parts.uri, &parts.headers, &body);
        let fault = self.draw(service, &operation);
        match fault {
            Some(Fault::Throttle) => return Ok(throttled(service, &operation)),
            Some(Fault::ServerError) => return Ok(server_error(service, &operation)),
            Some(Fault::Timeout) => {
                tokio::time::sleep(self.plan.timeout).await;
                return Err(Dropped);
            }
            Some(Fault::Drop) => return Err(Dropped),
            Some(Fault::DropAfterForward) | None => {}
        }
        let response = self.forward(service, parts, body).await;
        if fault == Some(Fault::DropAfterForward) {
            return Err(Dropped);
        }
        Ok(response)
    }

    /// Counts the request and draws its fault from the operation's own generator.
    fn draw(&self, service: Service, operation: &str) -> Option<Fault> {
        let key = (service, operation.to_owned());
        let seed = self.plan.seed;
        let mut state = self.lock();
        let draw = state
            .generators
            .entry(key.clone())
            .or_insert_with(|| ChaCha8Rng::seed_from_u64(seed ^ fnv1a(key.0, &key.1)))
            .random::<f64>();
        let enabled = self.enabled.load(Ordering::SeqCst);
        let fault = enabled
            .then(|| self.plan.rates(service, operation))
            .flatten()
            .and_then(|rates| rates.pick(draw));
        let counts = state.counts.entry(key).or_default();
        counts.requests += 1;
        if let Some(fault) = fault {
            *counts.faults.entry(fault).or_insert(0) += 1;
        }
        fault
    }

    /// Sends the request on to its backend and reads the whole answer; a backend that cannot
    /// be reached is a 502, which the SDK retries like any 5xx.
    async fn forward(
        &self,
        service: Service,
        parts: hyper::http::request::Parts,
        body: Bytes,
    ) -> Response<Full<Bytes>> {
        let base = match (service, &self.backends.bedrock) {
            (Service::Bedrock, Some(stub)) => stub,
            _ => &self.backends.aws,
        };
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", hyper::http::uri::PathAndQuery::as_str);
        let Ok(uri) = format!("{base}{path}").parse::<hyper::Uri>() else {
            return plain(StatusCode::BAD_GATEWAY, "bad backend address");
        };
        let mut request = Request::builder()
            .method(parts.method)
            .uri(uri)
            .body(Full::new(body.clone()))
            .unwrap_or_default();
        let headers = request.headers_mut();
        for (name, value) in &parts.headers {
            if !hop_by_hop(name) {
                headers.append(name.clone(), value.clone());
            }
        }
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        let Ok(answer) = self.client.request(request).await else {
            return plain(StatusCode::BAD_GATEWAY, "backend unreachable");
        };
        let (mut parts, answer_body) = answer.into_parts();
        let Ok(collected) = answer_body.collect().await else {
            return plain(StatusCode::BAD_GATEWAY, "backend answer cut off");
        };
        let bytes = collected.to_bytes();
        let mut headers = hyper::HeaderMap::new();
        for (name, value) in &parts.headers {
            if !hop_by_hop(name) {
                headers.append(name.clone(), value.clone());
            }
        }
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
        parts.headers = headers;
        Response::from_parts(parts, Full::new(bytes))
    }
}

fn hop_by_hop(name: &HeaderName) -> bool {
    [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::CONTENT_LENGTH,
        header::TE,
        header::TRAILER,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
    ]
    .contains(name)
        || name.as_str() == "keep-alive"
}

/// FNV-1a of the operation's name: a stable per-operation salt for the seed.
fn fnv1a(service: Service, operation: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in service
        .as_str()
        .bytes()
        .chain([b'.'])
        .chain(operation.bytes())
    {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// The service and operation of a request, as the SDK sent it.
pub fn recognise(
    method: &Method,
    uri: &hyper::Uri,
    headers: &hyper::HeaderMap,
    body: &[u8],
) -> (Service, String) {
    if let Some(target) = headers.get("x-amz-target").and_then(|v| v.to_str().ok()) {
        if let Some(operation) = target.strip_prefix("DynamoDB_20120810.") {
            return (Service::DynamoDb, operation.to_owned());
        }
        if let Some(operation) = target.strip_prefix("AmazonSQS.") {
            return (Service::Sqs, operation.to_owned());
        }
    }
    let path = uri.path();
    if *method == Method::POST && path.starts_with("/model/") {
        let operation = if path.ends_with("/converse") {
            "Converse"
        } else if path.ends_with("/converse-stream") {
            "ConverseStream"
        } else {
            "InvokeModel"
        };
        return (Service::Bedrock, operation.to_owned());
    }
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/x-www-form-urlencoded"));
    if form {
        let text = String::from_utf8_lossy(body);
        if let Some(action) = text
            .split('&')
            .find_map(|pair| pair.strip_prefix("Action="))
        {
            // Every form-encoded (query protocol) call the suite makes is SNS's.
            return (Service::Sns, action.to_owned());
        }
    }
    (Service::S3, s3_operation(method, uri))
}

/// S3's REST operations by method and path: `/<bucket>` or `/<bucket>/<key>` (path style).
fn s3_operation(method: &Method, uri: &hyper::Uri) -> String {
    let segments = uri
        .path()
        .trim_start_matches('/')
        .splitn(2, '/')
        .filter(|s| !s.is_empty())
        .count();
    let query = uri.query().unwrap_or_default();
    let name = match (method.as_str(), segments) {
        ("PUT", 2) => "PutObject",
        ("GET", 2) => "GetObject",
        ("HEAD", 2) => "HeadObject",
        ("DELETE", 2) => "DeleteObject",
        ("PUT", _) => "CreateBucket",
        ("GET", _) if query.contains("list-type=2") => "ListObjectsV2",
        ("GET", _) => "ListObjects",
        ("HEAD", _) => "HeadBucket",
        ("DELETE", _) => "DeleteBucket",
        ("POST", _) if query.contains("delete") => "DeleteObjects",
        _ => "Other",
    };
    name.to_owned()
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response
}

fn respond(status: StatusCode, headers: &[(&str, &str)], body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            response.headers_mut().insert(name, value);
        }
    }
    response
        .headers_mut()
        .insert("x-amzn-requestid", HeaderValue::from_static("fault-proxy"));
    response
}

/// A JSON-protocol error (DynamoDB, SQS): `__type` names the error, which the SDK's retry
/// classifier reads; SQS's query-compatible header carries the same code.
fn json_error(
    status: StatusCode,
    prefix: &str,
    code: &str,
    message: &str,
    sqs: bool,
) -> Response<Full<Bytes>> {
    let body = serde_json::json!({"__type": format!("{prefix}#{code}"), "message": message});
    let fault = if status.is_server_error() {
        "Receiver"
    } else {
        "Sender"
    };
    let query_error = format!("{code};{fault}");
    let mut headers = vec![("content-type", "application/x-amz-json-1.0")];
    if sqs {
        headers.push(("x-amzn-query-error", &query_error));
    }
    respond(status, &headers, body.to_string())
}

/// An SNS (query protocol) error document.
fn sns_error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    let kind = if status.is_server_error() {
        "Receiver"
    } else {
        "Sender"
    };
    let body = format!(
        "<ErrorResponse xmlns=\"http://sns.amazonaws.com/doc/2010-03-31/\"><Error><Type>{kind}\
         </Type><Code>{code}</Code><Message>{message}</Message></Error><RequestId>fault-proxy\
         </RequestId></ErrorResponse>"
    );
    respond(status, &[("content-type", "text/xml")], body)
}

/// An S3 (REST-XML) error document.
fn s3_error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}\
         </Message><RequestId>fault-proxy</RequestId><HostId>fault-proxy</HostId></Error>"
    );
    respond(status, &[("content-type", "application/xml")], body)
}

/// A Converse (REST-JSON) error: the type in `x-amzn-ErrorType`.
fn bedrock_error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "message": message }).to_string();
    respond(
        status,
        &[
            ("content-type", "application/json"),
            ("x-amzn-errortype", code),
        ],
        body,
    )
}

const DYNAMODB: &str = "com.amazonaws.dynamodb.v20120810";
const SQS: &str = "com.amazonaws.sqs";

/// The service's throttling error; DynamoDB's alternates by operation name length between its
/// table-capacity and its request-rate forms, so both shapes occur.
fn throttled(service: Service, operation: &str) -> Response<Full<Bytes>> {
    let message = "Rate exceeded (injected by the fault proxy)";
    match service {
        Service::DynamoDb => json_error(
            StatusCode::BAD_REQUEST,
            DYNAMODB,
            if operation.len() % 2 == 0 {
                "ThrottlingException"
            } else {
                "ProvisionedThroughputExceededException"
            },
            message,
            false,
        ),
        Service::Sqs => json_error(
            StatusCode::BAD_REQUEST,
            SQS,
            "ThrottlingException",
            message,
            true,
        ),
        Service::Sns => sns_error(StatusCode::BAD_REQUEST, "Throttling", message),
        Service::S3 => s3_error(StatusCode::SERVICE_UNAVAILABLE, "SlowDown", message),
        Service::Bedrock => bedrock_error(
            StatusCode::TOO_MANY_REQUESTS,
            "ThrottlingException",
            message,
        ),
    }
}

/// A 500 or a 503, alternating by operation name length so both shapes occur.
fn server_error(service: Service, operation: &str) -> Response<Full<Bytes>> {
    let unavailable = operation.len() % 2 == 0;
    let message = "Internal failure (injected by the fault proxy)";
    match (service, unavailable) {
        (Service::DynamoDb, false) => json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            DYNAMODB,
            "InternalServerError",
            message,
            false,
        ),
        (Service::DynamoDb, true) => json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            DYNAMODB,
            "ServiceUnavailable",
            message,
            false,
        ),
        (Service::Sqs, false) => json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            SQS,
            "InternalError",
            message,
            true,
        ),
        (Service::Sqs, true) => json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            SQS,
            "ServiceUnavailable",
            message,
            true,
        ),
        (Service::Sns, false) => {
            sns_error(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", message)
        }
        (Service::Sns, true) => sns_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            message,
        ),
        (Service::S3, false) => {
            s3_error(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", message)
        }
        (Service::S3, true) => s3_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            message,
        ),
        (Service::Bedrock, false) => bedrock_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServerException",
            message,
        ),
        (Service::Bedrock, true) => bedrock_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailableException",
            message,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recognised(
        method: &Method,
        uri: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (Service, String) {
        let mut map = hyper::HeaderMap::new();
        for (name, value) in headers {
            map.insert(
                HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_str(value).expect("value"),
            );
        }
        recognise(method, &uri.parse().expect("uri"), &map, body.as_bytes())
    }

    #[test]
    fn requests_are_recognised_by_service_and_operation() {
        let json = [("x-amz-target", "DynamoDB_20120810.TransactWriteItems")];
        assert_eq!(
            recognised(&Method::POST, "/", &json, "{}"),
            (Service::DynamoDb, "TransactWriteItems".into())
        );
        let sqs = [("x-amz-target", "AmazonSQS.SendMessage")];
        assert_eq!(
            recognised(&Method::POST, "/", &sqs, "{}"),
            (Service::Sqs, "SendMessage".into())
        );
        let form = [(
            "content-type",
            "application/x-www-form-urlencoded; charset=utf-8",
        )];
        assert_eq!(
            recognised(
                &Method::POST,
                "/",
                &form,
                "Action=Publish&Version=2010-03-31"
            ),
            (Service::Sns, "Publish".into())
        );
        assert_eq!(
            recognised(
                &Method::POST,
                "/model/us.anthropic.claude%3A0/converse",
                &[],
                "{}"
            ),
            (Service::Bedrock, "Converse".into())
        );
        assert_eq!(
            recognised(&Method::PUT, "/bucket/evolution-events/a.json", &[], ""),
            (Service::S3, "PutObject".into())
        );
        assert_eq!(
            recognised(&Method::GET, "/bucket?list-type=2&prefix=x", &[], ""),
            (Service::S3, "ListObjectsV2".into())
        );
    }

    #[test]
    fn rates_split_the_unit_interval_in_order() {
        let rates = Rates {
            throttle: 0.1,
            server_error: 0.1,
            timeout: 0.0,
            drop: 0.1,
            drop_after_forward: 0.1,
        };
        assert_eq!(rates.pick(0.05), Some(Fault::Throttle));
        assert_eq!(rates.pick(0.15), Some(Fault::ServerError));
        assert_eq!(rates.pick(0.25), Some(Fault::Drop));
        assert_eq!(rates.pick(0.35), Some(Fault::DropAfterForward));
        assert_eq!(rates.pick(0.45), None);
    }

    #[test]
    fn draws_follow_the_rates_and_replay_with_the_seed() {
        let draws = |seed: u64| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed ^ fnv1a(Service::Bedrock, "Converse"));
            (0..1_000)
                .map(|_| Rates::uniform(0.04).pick(rng.random::<f64>()))
                .collect::<Vec<_>>()
        };
        let first = draws(7);
        let faulted = first.iter().filter(|f| f.is_some()).count();
        assert!((150..250).contains(&faulted), "{faulted} of 1000 at 20%");
        assert_eq!(first, draws(7), "the same seed replays the same faults");
        assert_ne!(first, draws(8));
    }

    #[test]
    fn an_operation_rule_wins_over_its_service_rule() {
        let plan = FaultPlan::none(1)
            .service(Service::Sqs, Rates::uniform(0.1))
            .operation(Service::Sqs, "DeleteMessage", Rates::default());
        assert_eq!(
            plan.rates(Service::Sqs, "SendMessage"),
            Some(Rates::uniform(0.1))
        );
        assert_eq!(
            plan.rates(Service::Sqs, "DeleteMessage"),
            Some(Rates::default())
        );
        assert_eq!(plan.rates(Service::S3, "PutObject"), None);
    }
}
