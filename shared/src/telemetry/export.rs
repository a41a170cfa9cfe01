//! Sending the collected spans to an OTLP/HTTP collector at the end of each invocation or
//! message (docs/architecture.md, "Tracing"), and the functions' subscriber that feeds the
//! collector. An export that fails is logged and dropped: a trace is never worth a record.

use std::str::FromStr;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use tracing::warn;
use tracing_subscriber::filter::{EnvFilter, LevelFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

use super::{FinishedSpan, SpanCollector, otlp, spans_only};
use crate::clock::SystemClock;

/// The standard variables: the traces endpoint is used as given, the base endpoint gets
/// `/v1/traces` appended, as the OTLP exporter specification says.
pub const TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
pub const ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The collector did not answer, or answered 429 or 5xx: the next batch may get through.
    #[error("trace collector unavailable: {0}")]
    Unavailable(String),
    /// The collector refused the batch (another 4xx) or the endpoint is no URL: retrying the
    /// same request cannot help.
    #[error("trace collector refused the spans: {0}")]
    Refused(String),
}

impl ExportError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// Where finished spans go, as OTLP JSON.
#[async_trait]
pub trait SpanExporter: Send + Sync + std::fmt::Debug {
    async fn export(&self, body: serde_json::Value) -> Result<(), ExportError>;
}

/// The collector of this process and where its spans go.
#[derive(Debug, Clone)]
pub struct TraceExport {
    collector: SpanCollector,
    exporter: Arc<dyn SpanExporter>,
    service: String,
}

impl TraceExport {
    /// Starts `collector` on the wall clock and sends what it collects to `exporter`, under the
    /// OTLP `service.name` `service`.
    pub fn new(collector: SpanCollector, exporter: Arc<dyn SpanExporter>, service: &str) -> Self {
        collector.start(Arc::new(SystemClock));
        Self {
            collector,
            exporter,
            service: service.to_owned(),
        }
    }

    /// Sends the spans finished since the last flush. Never fails: a failure is logged.
    pub async fn flush(&self) {
        let spans: Vec<FinishedSpan> = self.collector.drain();
        if spans.is_empty() {
            return;
        }
        let count = spans.len();
        if let Err(e) = self
            .exporter
            .export(otlp::encode(&self.service, &spans))
            .await
        {
            warn!(error = %e, retryable = e.is_retryable(), spans = count, "trace export failed; the spans are dropped");
        }
    }
}

/// The traces URL the environment names, if any.
pub fn traces_url(var: impl Fn(&str) -> Option<String>) -> Option<String> {
    let nonempty = |name: &str| var(name).filter(|v| !v.trim().is_empty());
    nonempty(TRACES_ENDPOINT).or_else(|| {
        nonempty(ENDPOINT).map(|base| format!("{}/v1/traces", base.trim_end_matches('/')))
    })
}

static COLLECTOR: OnceLock<SpanCollector> = OnceLock::new();

/// The process's collector: the subscriber (the functions' [`init_subscriber`], the CLI's)
/// feeds it, a [`TraceExport`] or `evolve demo --trace` starts and drains it.
pub fn collector() -> SpanCollector {
    COLLECTOR.get_or_init(SpanCollector::default).clone()
}

/// The functions' subscriber: the log lines of the Lambda runtime's default one (JSON under
/// `AWS_LAMBDA_LOG_FORMAT=JSON`, the level of `AWS_LAMBDA_LOG_LEVEL` or `RUST_LOG`), plus the
/// span collector the trace export reads.
pub fn init_subscriber() {
    let format = std::env::var("AWS_LAMBDA_LOG_FORMAT").unwrap_or_default();
    let level = std::env::var("AWS_LAMBDA_LOG_LEVEL").or_else(|_| std::env::var("RUST_LOG"));
    let level =
        LevelFilter::from_str(level.as_deref().unwrap_or("INFO")).unwrap_or(LevelFilter::INFO);
    let filter = EnvFilter::builder()
        .with_default_directive(level.into())
        .from_env_lossy();
    let fmt = tracing_subscriber::fmt::layer()
        .with_target(false)
        .without_time();
    let logs: Box<dyn Layer<Registry> + Send + Sync> = if format.eq_ignore_ascii_case("json") {
        Box::new(fmt.json().with_filter(filter))
    } else {
        Box::new(fmt.with_filter(filter))
    };
    let collector = collector();
    let _ = tracing_subscriber::registry()
        .with(logs)
        .with(collector.with_filter(spans_only()))
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn the_traces_endpoint_wins_and_the_base_endpoint_gets_its_path() {
        assert_eq!(traces_url(env(&[])), None);
        assert_eq!(
            traces_url(env(&[(ENDPOINT, "http://collector:4318/")])).as_deref(),
            Some("http://collector:4318/v1/traces")
        );
        assert_eq!(
            traces_url(env(&[
                (ENDPOINT, "http://collector:4318"),
                (TRACES_ENDPOINT, "http://other:4318/custom")
            ]))
            .as_deref(),
            Some("http://other:4318/custom")
        );
        assert_eq!(traces_url(env(&[(ENDPOINT, " ")])), None);
    }
}
