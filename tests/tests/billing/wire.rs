//! What travels between the Cost Explorer client and moto: a hop on loopback that keeps every
//! request (its `X-Amz-Target`, `Authorization` and JSON body) and forwards it unchanged, and
//! the queue of answers moto's `GetCostAndUsage` hands out.

use std::sync::{Arc, Mutex, PoisonError};

use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

/// The largest request body kept: a `GetCostAndUsage` request is a few hundred bytes.
const MAX_BODY: usize = 1 << 20;

type Seen = Arc<Mutex<Vec<(String, String, Value)>>>;

/// A recording hop in front of `target`, stopped when dropped.
#[derive(Debug)]
pub struct Recorder {
    url: String,
    seen: Seen,
    server: tokio::task::JoinHandle<()>,
}

impl Recorder {
    pub async fn start(target: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the recorder");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let seen = Seen::default();
        let client: Client<HttpConnector, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).build_http();
        let (kept, target) = (seen.clone(), target.to_owned());
        let app = axum::Router::new().fallback(move |request: Request<Body>| {
            forward(client.clone(), target.clone(), kept.clone(), request)
        });
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { url, seen, server }
    }

    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// `(X-Amz-Target, JSON body)` of every request, in arrival order.
    pub fn requests(&self) -> Vec<(String, Value)> {
        self.lock()
            .iter()
            .map(|(target, _, body)| (target.clone(), body.clone()))
            .collect()
    }

    /// The `Authorization` header of every request.
    pub fn authorizations(&self) -> Vec<String> {
        self.lock()
            .iter()
            .map(|(_, auth, _)| auth.clone())
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(String, String, Value)>> {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn forward(
    client: Client<HttpConnector, Full<Bytes>>,
    target: String,
    seen: Seen,
    request: Request<Body>,
) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
        return status(StatusCode::PAYLOAD_TOO_LARGE);
    };
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    seen.lock().unwrap_or_else(PoisonError::into_inner).push((
        header("x-amz-target"),
        header("authorization"),
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    ));
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut onward = Request::builder()
        .method(parts.method.clone())
        .uri(format!("{target}{path}"));
    for (name, value) in &parts.headers {
        if name != axum::http::header::HOST {
            onward = onward.header(name, value);
        }
    }
    let Ok(onward) = onward.body(Full::new(bytes)) else {
        return status(StatusCode::BAD_REQUEST);
    };
    let Ok(answer) = client.request(onward).await else {
        return status(StatusCode::BAD_GATEWAY);
    };
    let (parts, body) = answer.into_parts();
    let Ok(body) = body.collect().await else {
        return status(StatusCode::BAD_GATEWAY);
    };
    Response::from_parts(parts, Body::from(body.to_bytes()))
}

fn status(code: StatusCode) -> Response<Body> {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = code;
    response
}

/// Queues `results` as the answers of moto's next `GetCostAndUsage` requests (one each, in
/// order; a request with the same parameters as an earlier one gets that one's answer again).
pub async fn queue_results(moto: &str, results: &[Value]) {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let body = json!({ "results": results }).to_string();
    let request = Request::builder()
        .method("POST")
        .uri(format!("{moto}/moto-api/static/ce/cost-and-usage-results"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("request");
    let answer = client.request(request).await.expect("moto's API answers");
    assert_eq!(answer.status(), StatusCode::CREATED, "queueing the results");
}
