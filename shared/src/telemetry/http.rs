//! The OTLP/HTTP exporter on the hyper and rustls stack the webhook client already uses (the
//! `otlp` feature): one HTTP stack in a binary, not a second one for traces
//! (docs/2026-12-06-tracing.md).

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::export::{ExportError, SpanExporter};

/// How long one export may take: the invocation waits for it.
const TIMEOUT: Duration = Duration::from_secs(2);

/// `POST <url>` of OTLP JSON, built once at cold start; connections are pooled.
#[derive(Clone)]
pub struct OtlpHttp {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    url: hyper::Uri,
}

impl fmt::Debug for OtlpHttp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtlpHttp")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl OtlpHttp {
    /// An exporter to `url` (`http` or `https`). The roots are the compiled-in Mozilla set, as
    /// for the webhooks.
    pub fn new(url: &str) -> Result<Self, ExportError> {
        let url: hyper::Uri = url
            .parse()
            .map_err(|e| ExportError::Refused(format!("endpoint {url:?}: {e}")))?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::aws_lc_rs::default_provider())
            .map_err(|e| ExportError::Refused(format!("TLS: {e}")))?
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Ok(Self { client, url })
    }
}

#[async_trait]
impl SpanExporter for OtlpHttp {
    async fn export(&self, body: serde_json::Value) -> Result<(), ExportError> {
        let request = hyper::Request::post(self.url.clone())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| ExportError::Refused(e.to_string()))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                // hyper-util's errors name the failure, never the URL.
                .map_err(|e| ExportError::Unavailable(super::error_chain(&e)))?;
            let status = response.status();
            // Read the body so the connection returns to the pool.
            let _ = http_body_util::Limited::new(response.into_body(), 64 * 1024)
                .collect()
                .await;
            if status.is_success() {
                Ok(())
            } else if status.is_server_error() || status.as_u16() == 429 {
                Err(ExportError::Unavailable(format!("HTTP {status}")))
            } else {
                Err(ExportError::Refused(format!("HTTP {status}")))
            }
        };
        tokio::time::timeout(TIMEOUT, exchange)
            .await
            .unwrap_or_else(|_| Err(ExportError::Unavailable("timed out".into())))
    }
}

/// The export the environment asks for (`OTEL_EXPORTER_OTLP_*`), of the process's collector;
/// `None` when no endpoint is set. A bad endpoint is logged and leaves tracing off: it never
/// stops a function.
pub fn from_env(service: &str) -> Option<super::export::TraceExport> {
    let url = super::export::traces_url(|name| std::env::var(name).ok())?;
    match OtlpHttp::new(&url) {
        Ok(exporter) => Some(super::export::TraceExport::new(
            super::export::collector(),
            std::sync::Arc::new(exporter),
            service,
        )),
        Err(e) => {
            tracing::warn!(error = %e, "no trace export");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;

    use super::*;

    /// A collector on loopback answering each path with the status it names.
    async fn collector() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        let app = axum::Router::new().fallback(
            |uri: axum::http::Uri, headers: axum::http::HeaderMap, body: String| async move {
                let json = headers
                    .get(axum::http::header::CONTENT_TYPE)
                    .is_some_and(|v| v == "application/json");
                if !json || serde_json::from_str::<serde_json::Value>(&body).is_err() {
                    return StatusCode::UNSUPPORTED_MEDIA_TYPE;
                }
                match uri.path() {
                    "/busy/v1/traces" => StatusCode::SERVICE_UNAVAILABLE,
                    "/bad/v1/traces" => StatusCode::BAD_REQUEST,
                    _ => StatusCode::OK,
                }
            },
        );
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        base
    }

    #[tokio::test]
    async fn a_post_is_json_and_the_collectors_answer_says_whether_to_retry() {
        let base = collector().await;
        let body = serde_json::json!({"resourceSpans": []});
        let post = |path: &str| OtlpHttp::new(&format!("{base}{path}/v1/traces")).expect("url");
        assert!(post("").export(body.clone()).await.is_ok());
        let busy = post("/busy").export(body.clone()).await.expect_err("503");
        assert!(busy.is_retryable(), "{busy}");
        let bad = post("/bad").export(body.clone()).await.expect_err("400");
        assert!(!bad.is_retryable(), "{bad}");
        let closed = OtlpHttp::new("http://127.0.0.1:9/v1/traces").expect("url");
        assert!(
            closed
                .export(body)
                .await
                .expect_err("no collector")
                .is_retryable()
        );
        assert!(OtlpHttp::new("not a url").is_err());
    }
}
