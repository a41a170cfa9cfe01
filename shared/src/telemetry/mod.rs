//! The spans of the messages' traces, collected as they finish and encoded as OTLP JSON
//! (docs/architecture.md, "Tracing").
//!
//! A `message` span declares its trace, its own span id and its parent's (`trace_id`,
//! `span_id`, `parent_span_id`, derived from the envelope); the spans opened inside it (the
//! stage, the LLM calls, the store transaction) inherit the trace and get ids derived from
//! their parent's id, their name and their rank among its children. So a redelivery or a re-run
//! rebuilds the same ids, and nothing here draws a random number. Spans outside a trace (a
//! batch, a record before its body is read) are not collected.

pub mod export;
#[cfg(feature = "otlp")]
pub mod http;
pub mod otlp;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use chrono::{DateTime, Utc};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Filter};
use tracing_subscriber::registry::LookupSpan;

use crate::clock::{Clock, SystemClock};
use crate::domain::trace::derived_span_id;

/// The error and its sources on one line, for logs, DLQ reasons and export failures.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// An attribute's value, as OTLP types them.
#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    Str(String),
    Int(i64),
    Bool(bool),
    Double(f64),
}

/// OTLP's span kinds that the spans here use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    Internal,
    Client,
    Consumer,
}

impl SpanKind {
    fn parse(text: &str) -> Self {
        match text {
            "client" => Self::Client,
            "consumer" => Self::Consumer,
            _ => Self::Internal,
        }
    }
}

/// A span that has ended, with everything OTLP needs.
#[derive(Debug, Clone, PartialEq)]
pub struct FinishedSpan {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    pub name: String,
    pub kind: SpanKind,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub attributes: Vec<(String, AttrValue)>,
}

/// The [`tracing_subscriber::Layer`] that collects the traced spans. Clones share one
/// collection, so a binary keeps a handle to drain what the subscriber's copy collected.
///
/// It collects only while started: the CLI installs it at start-up and starts it for
/// `evolve demo --trace`; the functions and the worker start it when an OTLP endpoint is set.
#[derive(Debug, Clone)]
pub struct SpanCollector {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    on: AtomicBool,
    clock: RwLock<Arc<dyn Clock>>,
    finished: Mutex<Vec<FinishedSpan>>,
}

impl Default for SpanCollector {
    fn default() -> Self {
        Self {
            inner: Arc::new(Inner {
                on: AtomicBool::new(false),
                clock: RwLock::new(Arc::new(SystemClock)),
                finished: Mutex::new(Vec::new()),
            }),
        }
    }
}

impl SpanCollector {
    /// Starts collecting, timing the spans with `clock` (the demo's simulated time, say).
    pub fn start(&self, clock: Arc<dyn Clock>) {
        *self
            .inner
            .clock
            .write()
            .unwrap_or_else(PoisonError::into_inner) = clock;
        self.inner.on.store(true, Ordering::SeqCst);
    }

    pub fn is_started(&self) -> bool {
        self.inner.on.load(Ordering::SeqCst)
    }

    /// The spans finished since the last drain, in the order they finished.
    pub fn drain(&self) -> Vec<FinishedSpan> {
        std::mem::take(
            &mut *self
                .inner
                .finished
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    fn now(&self) -> DateTime<Utc> {
        self.inner
            .clock
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .now()
    }
}

/// A span still open: its identity once known, and what it will be exported with.
#[derive(Debug)]
struct Open {
    ids: Option<Ids>,
    name: String,
    kind: SpanKind,
    start: DateTime<Utc>,
    attributes: Vec<(String, AttrValue)>,
    children: u32,
}

#[derive(Debug, Clone, Copy)]
struct Ids {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent: Option<[u8; 8]>,
}

/// The fields of a span: identity fields apart, `otel.name` and `otel.kind` apart.
#[derive(Debug, Default)]
struct Fields {
    trace_id: Option<[u8; 16]>,
    span_id: Option<[u8; 8]>,
    parent_span_id: Option<[u8; 8]>,
    name: Option<String>,
    kind: Option<SpanKind>,
    attributes: Vec<(String, AttrValue)>,
}

impl Fields {
    fn put(&mut self, field: &Field, value: AttrValue) {
        let hex_of = |v: &AttrValue| match v {
            AttrValue::Str(s) => Some(s.clone()),
            _ => None,
        };
        match field.name() {
            "trace_id" => self.trace_id = hex_of(&value).and_then(|s| decode(&s)),
            "span_id" => self.span_id = hex_of(&value).and_then(|s| decode(&s)),
            "parent_span_id" => self.parent_span_id = hex_of(&value).and_then(|s| decode(&s)),
            "otel.name" => self.name = hex_of(&value),
            "otel.kind" => self.kind = hex_of(&value).map(|k| SpanKind::parse(&k)),
            name => {
                self.attributes.retain(|(k, _)| k != name);
                self.attributes.push((name.to_owned(), value));
            }
        }
    }
}

fn decode<const N: usize>(text: &str) -> Option<[u8; N]> {
    let mut out = [0; N];
    hex::decode_to_slice(text, &mut out).ok().map(|()| out)
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, AttrValue::Str(value.to_owned()));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, AttrValue::Int(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(
            field,
            AttrValue::Int(i64::try_from(value).unwrap_or(i64::MAX)),
        );
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, AttrValue::Bool(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, AttrValue::Double(value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.put(field, AttrValue::Str(format!("{value:?}")));
    }
}

impl<S> tracing_subscriber::Layer<S> for SpanCollector
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if !self.is_started() {
            return;
        }
        let Some(span) = ctx.span(id) else { return };
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        let name = fields.name.take().unwrap_or_else(|| span.name().to_owned());
        let ids = match (fields.trace_id, fields.span_id) {
            (Some(trace_id), Some(span_id)) => Some(Ids {
                trace_id,
                span_id,
                parent: fields.parent_span_id,
            }),
            // Inside a trace: the nearest traced ancestor is the parent.
            _ => span.scope().skip(1).find_map(|ancestor| {
                let mut extensions = ancestor.extensions_mut();
                let open = extensions.get_mut::<Open>()?;
                let parent = open.ids?;
                let rank = open.children;
                open.children += 1;
                Some(Ids {
                    trace_id: parent.trace_id,
                    span_id: derived_span_id(&[
                        &hex::encode(parent.span_id),
                        &name,
                        &rank.to_string(),
                    ]),
                    parent: Some(parent.span_id),
                })
            }),
        };
        span.extensions_mut().insert(Open {
            ids,
            name,
            kind: fields.kind.unwrap_or(SpanKind::Internal),
            start: self.now(),
            attributes: fields.attributes,
            children: 0,
        });
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut extensions = span.extensions_mut();
        let Some(open) = extensions.get_mut::<Open>() else {
            return;
        };
        let mut fields = Fields {
            attributes: std::mem::take(&mut open.attributes),
            ..Fields::default()
        };
        values.record(&mut fields);
        open.attributes = fields.attributes;
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let Some(open) = span.extensions_mut().remove::<Open>() else {
            return;
        };
        let Some(ids) = open.ids else { return };
        let finished = FinishedSpan {
            trace_id: ids.trace_id,
            span_id: ids.span_id,
            parent_span_id: ids.parent,
            name: open.name,
            kind: open.kind,
            start: open.start,
            end: self.now().max(open.start),
            attributes: open.attributes,
        };
        self.inner
            .finished
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(finished);
    }
}

/// The per-layer filter the collector is installed with: spans at `info` and above, whatever
/// the log level, so the logs' verbosity does not change the traces.
pub fn spans_only<S>() -> impl Filter<S> {
    tracing_subscriber::filter::filter_fn(|m: &Metadata<'_>| {
        m.is_span() && *m.level() <= tracing::Level::INFO
    })
}

#[cfg(test)]
mod tests;
