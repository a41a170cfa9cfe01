//! The webhook poster on hyper with rustls: the one piece of the notify function that needs an
//! HTTP client of its own (the `webhooks` feature, so no other function links it).

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use super::webhook::{PostError, Target, WebhookPoster, WebhookUrl};

/// The poster on hyper with rustls (AWS-LC crypto), built once at cold start; connections are
/// pooled across invocations. The root certificates are the Mozilla set compiled in
/// (`webpki-roots`): Slack's and Teams' endpoints chain to public roots, and reading and
/// parsing the platform's bundle instead cost notify half again the floor's cold start
/// (docs/2026-12-04-lean-lambdas.md).
#[derive(Clone)]
pub struct HyperPoster {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl fmt::Debug for HyperPoster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HyperPoster").finish_non_exhaustive()
    }
}

impl HyperPoster {
    /// Fails when the TLS provider supports none of the safe protocol versions.
    pub fn new() -> std::io::Result<Self> {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::aws_lc_rs::default_provider())
            .map_err(std::io::Error::other)?
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Ok(Self { client })
    }
}

#[async_trait]
impl WebhookPoster for HyperPoster {
    async fn post(
        &self,
        target: Target,
        url: &WebhookUrl,
        payload: &Value,
        timeout: Duration,
    ) -> Result<(), PostError> {
        let request = hyper::Request::post(url.uri().clone())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::USER_AGENT, "evolve-notify")
            .body(Full::new(Bytes::from(payload.to_string())))
            .map_err(|e| PostError::Request {
                target,
                reason: e.to_string(),
            })?;
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| {
                // hyper-util's errors name the failure (connect, closed), never the URI.
                PostError::Transport {
                    target,
                    reason: crate::telemetry::error_chain(&e),
                }
            })?;
            let status = response.status();
            // Read the body (at most 64 KiB) so the connection returns to the pool; its text is
            // not kept: services echo request details in it.
            let _ = http_body_util::Limited::new(response.into_body(), 64 * 1024)
                .collect()
                .await;
            if status.is_success() {
                Ok(())
            } else {
                Err(PostError::Status {
                    target,
                    status: status.as_u16(),
                })
            }
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or(Err(PostError::Timeout {
                target,
                timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            }))
    }
}
