//! The trace context every message carries (docs/architecture.md, "Tracing").
//!
//! Ids are derived from message ids, never drawn at random: a redelivery or a re-run of a
//! message rebuilds the same trace and span ids, as it rebuilds the same message ids
//! (docs/architecture.md, "Exactly once").

use sha2::{Digest, Sha256};

/// A trace id, the id of the span that sent a message (its parent), and whether the trace is
/// sampled: the three fields of a W3C `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
    pub sampled: bool,
}

/// Why a trace header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed trace header: {0}")]
pub struct TraceParseError(&'static str);

impl TraceContext {
    /// The context a message that starts a trace carries: the trace id is derived from the
    /// message's own id and the parent is the message's own span, so a handler sees a root.
    pub fn start(message_id: &str) -> Self {
        let digest = Sha256::new()
            .chain_update(b"evolve-trace\0")
            .chain_update(message_id.as_bytes())
            .finalize();
        let mut trace_id = [0; 16];
        trace_id.copy_from_slice(&digest[..16]);
        if trace_id == [0; 16] {
            trace_id[15] = 1;
        }
        Self {
            trace_id,
            parent_id: span_id_of(message_id),
            sampled: true,
        }
    }

    /// The context of a message sent while handling `cause_id` in this trace: same trace, the
    /// handler's span as parent.
    #[must_use]
    pub fn sent_from(&self, cause_id: &str) -> Self {
        Self {
            parent_id: span_id_of(cause_id),
            ..*self
        }
    }

    /// The parent of the span that handles `message_id`, or `None` when the message started
    /// its trace.
    pub fn parent_of(&self, message_id: &str) -> Option<[u8; 8]> {
        (self.parent_id != span_id_of(message_id)).then_some(self.parent_id)
    }

    pub fn trace_id_hex(&self) -> String {
        hex::encode(self.trace_id)
    }

    /// The W3C `traceparent` header: `00-<trace id>-<parent id>-<flags>`.
    pub fn traceparent(&self) -> String {
        format!(
            "00-{}-{}-{}",
            hex::encode(self.trace_id),
            hex::encode(self.parent_id),
            if self.sampled { "01" } else { "00" }
        )
    }

    /// Parses a version-00 `traceparent`; all-zero ids and upper-case hex are refused, as the
    /// W3C recommendation says.
    pub fn parse_traceparent(header: &str) -> Result<Self, TraceParseError> {
        let parts: Vec<&str> = header.split('-').collect();
        let [version, trace, parent, flags] = parts[..] else {
            return Err(TraceParseError("expected four dash-separated fields"));
        };
        if version != "00" {
            return Err(TraceParseError("unsupported version"));
        }
        let trace_id: [u8; 16] = lower_hex(trace)?;
        let parent_id: [u8; 8] = lower_hex(parent)?;
        let [flags]: [u8; 1] = lower_hex(flags)?;
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return Err(TraceParseError("all-zero id"));
        }
        Ok(Self {
            trace_id,
            parent_id,
            sampled: flags & 1 == 1,
        })
    }

    /// The X-Ray `AWSTraceHeader`: the trace id split into its 8-digit epoch part and the rest.
    /// The epoch part of a derived id is not a time; X-Ray accepts it as long as it is hex.
    pub fn xray_header(&self) -> String {
        let trace = hex::encode(self.trace_id);
        format!(
            "Root=1-{}-{};Parent={};Sampled={}",
            &trace[..8],
            &trace[8..],
            hex::encode(self.parent_id),
            u8::from(self.sampled)
        )
    }

    /// Parses an `AWSTraceHeader` with `Root`, `Parent` and `Sampled` (in any order; other keys
    /// such as `Lineage` are ignored).
    pub fn parse_xray(header: &str) -> Result<Self, TraceParseError> {
        let (mut root, mut parent, mut sampled) = (None, None, None);
        for field in header.split(';') {
            match field.trim().split_once('=') {
                Some(("Root", v)) => root = Some(v),
                Some(("Parent", v)) => parent = Some(v),
                Some(("Sampled", v)) => sampled = Some(v),
                Some(_) => {}
                None => return Err(TraceParseError("field without '='")),
            }
        }
        let root = root.ok_or(TraceParseError("no Root"))?;
        let Some(("1", rest)) = root.split_once('-') else {
            return Err(TraceParseError("Root is not version 1"));
        };
        let Some((epoch, unique)) = rest.split_once('-') else {
            return Err(TraceParseError("Root without its two parts"));
        };
        if epoch.len() != 8 || unique.len() != 24 {
            return Err(TraceParseError("Root parts of the wrong length"));
        }
        let trace_id: [u8; 16] = lower_hex(&format!("{epoch}{unique}"))?;
        let parent_id: [u8; 8] = lower_hex(parent.ok_or(TraceParseError("no Parent"))?)?;
        let sampled = match sampled {
            Some("1") => true,
            Some("0" | "?") | None => false,
            Some(_) => return Err(TraceParseError("Sampled is not 0, 1 or ?")),
        };
        Ok(Self {
            trace_id,
            parent_id,
            sampled,
        })
    }
}

/// The id of the span that handles the message `message_id`.
pub fn span_id_of(message_id: &str) -> [u8; 8] {
    derived_span_id(&["message", message_id])
}

/// A span id derived from `parts`, never all zero (an invalid id).
pub fn derived_span_id(parts: &[&str]) -> [u8; 8] {
    let mut hasher = Sha256::new();
    hasher.update(b"evolve-span\0");
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    let digest = hasher.finalize();
    let mut id = [0; 8];
    id.copy_from_slice(&digest[..8]);
    if id == [0; 8] {
        id[7] = 1;
    }
    id
}

fn lower_hex<const N: usize>(text: &str) -> Result<[u8; N], TraceParseError> {
    if text.len() != N * 2 || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(TraceParseError("not lower-case hex of the right length"));
    }
    let mut out = [0; N];
    hex::decode_to_slice(text, &mut out).map_err(|_| TraceParseError("not hex"))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const W3C: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_w3c_example_parses_and_formats_back() {
        let ctx = TraceContext::parse_traceparent(W3C).expect("the W3C example");
        assert_eq!(ctx.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex::encode(ctx.parent_id), "00f067aa0ba902b7");
        assert!(ctx.sampled);
        assert_eq!(ctx.traceparent(), W3C);
    }

    #[test]
    fn the_xray_header_splits_the_trace_id_after_eight_digits() {
        let ctx = TraceContext::parse_traceparent(W3C).expect("the W3C example");
        assert_eq!(
            ctx.xray_header(),
            "Root=1-4bf92f35-77b34da6a3ce929d0e0e4736;Parent=00f067aa0ba902b7;Sampled=1"
        );
        assert_eq!(
            TraceContext::parse_xray(&ctx.xray_header()).expect("round trip"),
            ctx
        );
    }

    #[test]
    fn an_xray_header_from_aws_parses_whatever_its_field_order() {
        let ctx = TraceContext::parse_xray(
            "Sampled=0;Root=1-5759e988-bd862e3fe1be46a994272793;Lineage=a87bd80c:0;Parent=53995c3f42cd8ad8",
        )
        .expect("an AWS header");
        assert_eq!(ctx.trace_id_hex(), "5759e988bd862e3fe1be46a994272793");
        assert_eq!(hex::encode(ctx.parent_id), "53995c3f42cd8ad8");
        assert!(!ctx.sampled);
    }

    #[test]
    fn malformed_headers_are_refused() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bz-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
        ] {
            assert!(TraceContext::parse_traceparent(bad).is_err(), "{bad:?}");
        }
        for bad in [
            "Parent=00f067aa0ba902b7",
            "Root=2-4bf92f35-77b34da6a3ce929d0e0e4736;Parent=00f067aa0ba902b7",
            "Root=1-4bf92f3-577b34da6a3ce929d0e0e4736;Parent=00f067aa0ba902b7",
            "Root=1-4bf92f35-77b34da6a3ce929d0e0e4736",
            "Root=1-4bf92f35-77b34da6a3ce929d0e0e4736;Parent=00f067aa0ba902b7;Sampled=2",
            "Root",
        ] {
            assert!(TraceContext::parse_xray(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ids_are_derived_from_message_ids() {
        let a = TraceContext::start("msg_a");
        assert_eq!(a, TraceContext::start("msg_a"));
        assert_ne!(a.trace_id, TraceContext::start("msg_b").trace_id);
        assert_eq!(a.parent_of("msg_a"), None);
        let child = a.sent_from("msg_a");
        assert_eq!(child.trace_id, a.trace_id);
        assert_eq!(child.parent_of("msg_c"), Some(span_id_of("msg_a")));
        assert_eq!(
            TraceContext::parse_traceparent(&child.traceparent()).expect("round trip"),
            child
        );
    }
}
