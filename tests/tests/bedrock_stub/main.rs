//! The Bedrock stub speaks the real Converse wire protocol: the real `aws-sdk-bedrockruntime`
//! client, pointed at it, parses every scripted answer into the same typed values and typed errors
//! it would get from AWS, and the stub records exactly what the SDK sent.

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_bedrockruntime::Client;
use aws_sdk_bedrockruntime::config::Credentials;
use aws_sdk_bedrockruntime::error::{ProvideErrorMetadata as _, SdkError};
use aws_sdk_bedrockruntime::operation::converse::{ConverseError, ConverseOutput};
use aws_sdk_bedrockruntime::types::{
    ContentBlock, ConversationRole, JsonSchemaDefinition, Message, OutputConfig, OutputFormat,
    OutputFormatStructure, OutputFormatType, SpecificToolChoice, StopReason, SystemContentBlock,
    Tool, ToolChoice, ToolConfiguration, ToolInputSchema, ToolSpecification,
};
use aws_smithy_types::{Document, Number};
use serde_json::{Value, json};
use tests::bedrock_stub::{LogLine, Reply, StubServer, Usage};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A Claude 4.5 inference profile: the ':' must survive percent-encoding in the path.
const SONNET: &str = "global.anthropic.claude-sonnet-4-5-20250929-v1:0";
const HAIKU: &str = "us.anthropic.claude-haiku-4-5-20251001-v1:0";

/// A client for `url` with retries off, so request counts are exact.
fn client(url: &str) -> Client {
    client_with(url, RetryConfig::disabled(), None)
}

fn client_with(url: &str, retry: RetryConfig, operation_timeout: Option<Duration>) -> Client {
    let mut timeouts = TimeoutConfig::builder();
    if let Some(timeout) = operation_timeout {
        timeouts = timeouts.operation_timeout(timeout);
    }
    let config = aws_sdk_bedrockruntime::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(url)
        .credentials_provider(Credentials::new("test", "test", None, None, "static"))
        .retry_config(retry)
        .timeout_config(timeouts.build())
        .build();
    Client::from_conf(config)
}

fn user(text: &str) -> Message {
    Message::builder()
        .role(ConversationRole::User)
        .content(ContentBlock::Text(text.to_owned()))
        .build()
        .expect("role and content are set")
}

async fn ask(client: &Client, model: &str) -> Result<ConverseOutput, SdkError<ConverseError>> {
    client
        .converse()
        .model_id(model)
        .messages(user("hello"))
        .send()
        .await
}

fn content(output: &ConverseOutput) -> &[ContentBlock] {
    output
        .output()
        .expect("an output")
        .as_message()
        .expect("a message")
        .content()
}

fn text_of(output: &ConverseOutput) -> &str {
    match content(output).first() {
        Some(ContentBlock::Text(text)) => text,
        other => panic!("expected a text block, got {other:?}"),
    }
}

/// Converts a tool input back to JSON so it can be compared with what was scripted.
fn to_json(doc: &Document) -> Value {
    match doc {
        Document::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| (k.clone(), to_json(v))).collect())
        }
        Document::Array(items) => Value::Array(items.iter().map(to_json).collect()),
        Document::Number(Number::PosInt(n)) => json!(n),
        Document::Number(Number::NegInt(n)) => json!(n),
        Document::Number(Number::Float(f)) => json!(f),
        Document::String(s) => json!(s),
        Document::Bool(b) => json!(b),
        Document::Null => Value::Null,
    }
}

fn to_document(value: &Value) -> Document {
    match value {
        Value::Null => Document::Null,
        Value::Bool(b) => Document::Bool(*b),
        Value::Number(n) => Document::Number(if let Some(u) = n.as_u64() {
            Number::PosInt(u)
        } else if let Some(i) = n.as_i64() {
            Number::NegInt(i)
        } else {
            Number::Float(n.as_f64().unwrap_or(f64::NAN))
        }),
        Value::String(s) => Document::String(s.clone()),
        Value::Array(items) => Document::Array(items.iter().map(to_document).collect()),
        Value::Object(map) => Document::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), to_document(v)))
                .collect::<HashMap<_, _>>(),
        ),
    }
}

#[tokio::test]
async fn tool_use_answer_arrives_as_a_typed_tool_use_block() {
    let stub = StubServer::start().await;
    let input = json!({"action": "retry_later", "retry_after_seconds": 600, "nested": {"xs": [1, -2, 0.5, true, null]}});
    stub.push(Reply::tool("submit_resolution", input.clone()));
    let out = ask(&client(&stub.url()), SONNET)
        .await
        .expect("tool answer parses");
    assert_eq!(out.stop_reason(), &StopReason::ToolUse);
    let [ContentBlock::ToolUse(tool)] = content(&out) else {
        panic!("expected one toolUse block, got {:?}", content(&out));
    };
    assert_eq!(tool.name(), "submit_resolution");
    assert!(
        tool.tool_use_id().starts_with("tooluse_"),
        "{}",
        tool.tool_use_id()
    );
    assert_eq!(to_json(tool.input()), input);
    assert_eq!(tool.input(), &to_document(&input));
}

#[tokio::test]
async fn text_answer_and_usage_with_cache_tokens_are_parsed() {
    let stub = StubServer::start().await;
    stub.push(
        Reply::text("Here is the result: {}").with_usage(Usage::new(1200, 340).with_cache(800, 64)),
    );
    let out = ask(&client(&stub.url()), SONNET)
        .await
        .expect("text answer parses");
    assert_eq!(out.stop_reason(), &StopReason::EndTurn);
    assert_eq!(text_of(&out), "Here is the result: {}");
    let usage = out.usage().expect("usage");
    assert_eq!(usage.input_tokens(), 1200);
    assert_eq!(usage.output_tokens(), 340);
    assert_eq!(usage.cache_read_input_tokens(), Some(800));
    assert_eq!(usage.cache_write_input_tokens(), Some(64));
    assert_eq!(usage.total_tokens(), 1200 + 340 + 800 + 64);
    assert!(out.metrics().expect("metrics").latency_ms() >= 1);
    let recorded = stub.requests();
    assert_eq!(recorded.len(), 1);
    assert_eq!(
        recorded[0].usage,
        Some(Usage {
            input: 1200,
            output: 340,
            cache_read: 800,
            cache_write: 64
        })
    );
}

#[tokio::test]
async fn max_tokens_stop_reason_is_parsed() {
    let stub = StubServer::start().await;
    stub.push(Reply::max_tokens(
        "{\"primary_mutations\": [{\"id\": \"s1\"",
    ));
    let out = ask(&client(&stub.url()), HAIKU)
        .await
        .expect("answer parses");
    assert_eq!(out.stop_reason(), &StopReason::MaxTokens);
    assert!(text_of(&out).starts_with("{\"primary_mutations\""));
}

#[tokio::test]
async fn every_modelled_error_becomes_its_typed_variant() {
    type Check = fn(&ConverseError) -> bool;
    let cases: [(Reply, u16, &str, Check); 7] = [
        (
            Reply::throttled(),
            429,
            "ThrottlingException",
            ConverseError::is_throttling_exception,
        ),
        (
            Reply::model_timeout(),
            408,
            "ModelTimeoutException",
            ConverseError::is_model_timeout_exception,
        ),
        (
            Reply::internal(),
            500,
            "InternalServerException",
            ConverseError::is_internal_server_exception,
        ),
        (
            Reply::unavailable(),
            503,
            "ServiceUnavailableException",
            ConverseError::is_service_unavailable_exception,
        ),
        (
            Reply::input_too_long(),
            400,
            "ValidationException",
            ConverseError::is_validation_exception,
        ),
        (
            Reply::access_denied(),
            403,
            "AccessDeniedException",
            ConverseError::is_access_denied_exception,
        ),
        (
            Reply::not_found(),
            404,
            "ResourceNotFoundException",
            ConverseError::is_resource_not_found_exception,
        ),
    ];
    let stub = StubServer::start().await;
    let client = client(&stub.url());
    for (reply, status, code, check) in cases {
        let Reply::Error { message, .. } = reply.clone() else {
            panic!("error constructors build errors");
        };
        stub.push(reply);
        let err = ask(&client, SONNET).await.expect_err("an error status");
        let raw_status = err.raw_response().map(|r| r.status().as_u16());
        assert_eq!(raw_status, Some(status), "{code}");
        let service = err.into_service_error();
        assert!(check(&service), "{code}: got {service:?}");
        assert_eq!(service.code(), Some(code));
        assert_eq!(service.message(), Some(message.as_str()), "{code}");
        assert_eq!(
            stub.requests().last().map(|r| r.replied_status),
            Some(status)
        );
    }
    assert_eq!(stub.request_count(), 7, "retries are off: one request each");
    // The message the healing table keys on survives the trip.
    stub.push(Reply::input_too_long());
    let err = ask(&client, SONNET)
        .await
        .expect_err("validation error")
        .into_service_error();
    assert!(err.is_validation_exception());
    assert_eq!(
        err.message(),
        Some("Input is too long for requested model.")
    );
}

#[tokio::test]
async fn malformed_bodies_give_errors_not_panics() {
    let stub = StubServer::start().await;
    let client = client(&stub.url());
    for body in ["{\"output\":", "not json", "{\"output\": {\"message\": 5}}"] {
        stub.push(Reply::raw(200, body));
        let err = ask(&client, SONNET)
            .await
            .expect_err("a malformed answer fails");
        assert!(
            matches!(err, SdkError::ResponseError(_) | SdkError::ServiceError(_)),
            "{body:?}: {err:?}"
        );
    }
    // Beware: the SDK accepts an empty 200 body, filling required fields with placeholders; the
    // caller must check that the output really is a message.
    stub.push(Reply::raw(200, ""));
    let out = ask(&client, SONNET).await.expect("the SDK is lenient here");
    assert!(
        out.output().is_none_or(|o| o.as_message().is_err()),
        "{out:?}"
    );
    assert!(
        !StopReason::values().contains(&out.stop_reason().as_str()),
        "{out:?}"
    );
    // An error status with a non-JSON body and no error type is unhandled, still not a panic.
    stub.push(Reply::raw(500, "<html>oops</html>"));
    let err = ask(&client, SONNET).await.expect_err("error status");
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(500));
    assert_eq!(stub.request_count(), 5);
}

#[tokio::test]
async fn slow_answer_hits_the_client_operation_timeout() {
    let stub = StubServer::start().await;
    stub.push(Reply::slow(Duration::from_secs(5), Reply::text("too late")));
    let client = client_with(
        &stub.url(),
        RetryConfig::disabled(),
        Some(Duration::from_millis(300)),
    );
    let started = Instant::now();
    let err = ask(&client, SONNET).await.expect_err("the client gives up");
    assert!(matches!(err, SdkError::TimeoutError(_)), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // The request was recorded on arrival, with the status it would have had.
    assert_eq!(stub.request_count(), 1);
    assert_eq!(stub.requests()[0].replied_status, 200);

    // A short delay inside the timeout is just a slower answer.
    stub.push(Reply::slow(
        Duration::from_millis(50),
        Reply::text("in time"),
    ));
    let out = ask(&client, SONNET).await.expect("answered in time");
    assert_eq!(text_of(&out), "in time");
    assert!(out.metrics().expect("metrics").latency_ms() >= 50);
}

#[tokio::test]
async fn request_log_records_model_id_body_and_headers() {
    let stub = StubServer::start().await;
    stub.push(Reply::text("ok"));
    let client = client(&stub.url());
    client
        .converse()
        .model_id(SONNET)
        .system(SystemContentBlock::Text("You analyse systems.".to_owned()))
        .messages(user("{\"role\":\"analyze\"}"))
        .send()
        .await
        .expect("answered");
    let requests = stub.requests();
    let [request] = requests.as_slice() else {
        panic!("expected one request, got {requests:?}");
    };
    assert_eq!(request.model_id, SONNET, "':' round-trips");
    assert!(
        request.path.contains("%3A"),
        "sent encoded: {}",
        request.path
    );
    assert_eq!(request.body["system"][0]["text"], "You analyse systems.");
    assert_eq!(request.body["messages"][0]["role"], "user");
    assert_eq!(
        request.body["messages"][0]["content"][0]["text"],
        "{\"role\":\"analyze\"}"
    );
    assert_eq!(request.header("content-type"), Some("application/json"));
    let auth = request.header("Authorization").expect("signed");
    assert!(
        auth.starts_with("AWS4-HMAC-SHA256 Credential=test/"),
        "{auth}"
    );
    assert!(auth.contains("/us-east-1/bedrock/aws4_request"), "{auth}");
    assert!(request.header("x-amz-date").is_some());
    assert_eq!(request.replied_status, 200);
    assert_eq!(request.usage, Some(Usage::new(100, 50)));
}

#[tokio::test]
async fn per_model_queue_goes_first_then_global_then_default() {
    let stub = StubServer::start().await;
    stub.push(Reply::text("global"));
    stub.push_for(HAIKU, Reply::text("haiku"));
    let client = client(&stub.url());
    let out = ask(&client, HAIKU).await.expect("answered");
    assert_eq!(text_of(&out), "haiku");
    let out = ask(&client, SONNET).await.expect("answered");
    assert_eq!(text_of(&out), "global");
    assert_eq!(stub.pending(), 0);
    let out = ask(&client, HAIKU).await.expect("answered by default");
    assert!(
        text_of(&out).starts_with("Here is the result: {"),
        "{}",
        text_of(&out)
    );
    let models: Vec<_> = stub.requests().into_iter().map(|r| r.model_id).collect();
    assert_eq!(models, [HAIKU, SONNET, HAIKU]);
}

fn dna_prompt(generation: u64) -> String {
    json!({
        "role": "strategize",
        "dna": {
            "generation": generation,
            "genes": {
                "cache_mb": {"type": "int", "value": 256, "min": 16, "max": 4096, "max_step": 512},
                "codec": {"type": "choice", "value": "lz4", "choices": ["none", "lz4"]},
                "pinned": {"type": "float", "value": 1.0, "min": 0.0, "max": 2.0, "max_step": 0.5, "frozen": true},
                "timeout": {"type": "float", "value": 2.5, "min": 0.1, "max": 30.0, "max_step": 2.0},
            }
        }
    })
    .to_string()
}

#[tokio::test]
async fn default_responder_answers_a_forced_tool_with_a_valid_strategy() {
    let stub = StubServer::start().await;
    let schema = to_document(&json!({"type": "object"}));
    let tools = ToolConfiguration::builder()
        .tools(Tool::ToolSpec(
            ToolSpecification::builder()
                .name("submit_strategy")
                .input_schema(ToolInputSchema::Json(schema))
                .build()
                .expect("tool spec"),
        ))
        .tool_choice(ToolChoice::Tool(
            SpecificToolChoice::builder()
                .name("submit_strategy")
                .build()
                .expect("tool choice"),
        ))
        .build()
        .expect("tool config");
    let client = client(&stub.url());
    let mut plans = Vec::new();
    for generation in [7, 8] {
        let out = client
            .converse()
            .model_id("amazon.nova-pro-v1:0")
            .messages(user(&dna_prompt(generation)))
            .tool_config(tools.clone())
            .send()
            .await
            .expect("answered");
        assert_eq!(out.stop_reason(), &StopReason::ToolUse);
        let [ContentBlock::ToolUse(tool)] = content(&out) else {
            panic!("expected a tool use");
        };
        assert_eq!(tool.name(), "submit_strategy");
        let strategy = to_json(tool.input());
        let steps = strategy["primary_mutations"].as_array().expect("steps");
        assert_eq!(steps.len(), 3, "three movable genes: {strategy}");
        for step in steps {
            let gene = step["changes"][0]["gene"].as_str().expect("gene name");
            assert_ne!(gene, "pinned", "frozen genes stay put");
        }
        plans.push(strategy);
    }
    assert_ne!(plans[0], plans[1], "successive generations differ");
    let requests = stub.requests();
    let usage = requests[0].usage.expect("usage on success");
    let body_len = requests[0].body.to_string().len() as u64;
    // The SDK's own serialization may differ in whitespace; the estimate is a quarter of it.
    assert!(
        usage.input.abs_diff(body_len / 4) <= body_len / 40 + 2,
        "{usage:?}"
    );
    assert!(usage.output > 0);
}

#[tokio::test]
async fn default_responder_answers_json_schema_output_with_json_text() {
    let stub = StubServer::start().await;
    let schema = json!({"title": "EvolutionAnalysis", "type": "object"}).to_string();
    let format = OutputFormat::builder()
        .r#type(OutputFormatType::JsonSchema)
        .structure(OutputFormatStructure::JsonSchema(
            JsonSchemaDefinition::builder()
                .schema(schema)
                .name("analysis")
                .build()
                .expect("schema definition"),
        ))
        .build()
        .expect("output format");
    let out = client(&stub.url())
        .converse()
        .model_id(SONNET)
        .system(SystemContentBlock::Text(
            "You analyse an evolving system.".to_owned(),
        ))
        .messages(user("{\"role\":\"analyze\"}"))
        .output_config(OutputConfig::builder().text_format(format).build())
        .send()
        .await
        .expect("answered");
    let answer: Value = serde_json::from_str(text_of(&out)).expect("the whole text is JSON");
    assert_eq!(answer["confidence_score"], 0.6);
    let sent = &stub.requests()[0].body;
    assert_eq!(sent["outputConfig"]["textFormat"]["type"], "json_schema");
}

#[tokio::test]
async fn default_responder_rejects_above_the_risk_ceiling_in_prose() {
    let stub = StubServer::start().await;
    let client = client(&stub.url());
    let mut verdicts = Vec::new();
    for risk in [0.95, 0.4] {
        let data = json!({"role": "decide", "local_risk": risk, "risk_ceiling": 0.8}).to_string();
        let out = client
            .converse()
            .model_id("amazon.titan-text-premier-v1:0")
            .system(SystemContentBlock::Text(
                "Make a decision about one mutation.".to_owned(),
            ))
            .messages(user(&data))
            .send()
            .await
            .expect("answered");
        let text = text_of(&out);
        let json_start = text.find('{').expect("JSON inside the prose");
        let answer: Value = serde_json::from_str(&text[json_start..]).expect("JSON");
        verdicts.push(answer["recommendation"].clone());
    }
    assert_eq!(verdicts, [json!("REJECT"), json!("APPROVE")]);
}

#[tokio::test]
async fn sdk_retries_throttling_against_the_stub() {
    let stub = StubServer::start().await;
    stub.push(Reply::throttled());
    stub.push(Reply::unavailable());
    stub.push(Reply::text("third time"));
    let retry = RetryConfig::standard()
        .with_max_attempts(3)
        .with_initial_backoff(Duration::from_millis(10));
    let out = ask(&client_with(&stub.url(), retry, None), SONNET)
        .await
        .expect("succeeds on the third attempt");
    assert_eq!(text_of(&out), "third time");
    let statuses: Vec<_> = stub.requests().iter().map(|r| r.replied_status).collect();
    assert_eq!(statuses, [429, 503, 200]);
}

#[tokio::test]
async fn unknown_paths_get_unknown_operation() {
    let stub = StubServer::start().await;
    let mut stream = tokio::net::TcpStream::connect(stub.addr())
        .await
        .expect("connect");
    stream
        .write_all(
            b"GET /foundation-models HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        )
        .await
        .expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    assert!(response.starts_with("HTTP/1.1 404"), "{response}");
    assert!(
        response
            .to_ascii_lowercase()
            .contains("x-amzn-errortype: unknownoperationexception"),
        "{response}"
    );
    assert_eq!(stub.requests()[0].replied_status, 404);
}

#[tokio::test]
async fn dropping_the_stub_stops_it() {
    let stub = StubServer::start().await;
    let addr = stub.addr();
    drop(stub);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            break;
        }
        assert!(Instant::now() < deadline, "still accepting after drop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Kills the child process on drop, so a failing assertion does not leave it running.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn binary_prints_its_url_fails_first_and_logs_requests() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("requests.jsonl");
    let mut child = Child(
        Command::new(env!("CARGO_BIN_EXE_bedrock-stub"))
            .args(["--port", "0", "--fail-first", "1", "--log"])
            .arg(&log)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start bedrock-stub"),
    );
    let stdout = child.0.stdout.take().expect("piped stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("first line");
    let url = line
        .trim_end()
        .strip_prefix("listening on ")
        .expect("the listening line")
        .to_owned();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    assert!(!url.ends_with(":0"), "a real port: {url}");

    let client = client(&url);
    let err = ask(&client, SONNET).await.expect_err("first request fails");
    assert!(err.into_service_error().is_throttling_exception());
    let out = ask(&client, HAIKU)
        .await
        .expect("then the default responder");
    let usage = out.usage().expect("usage");

    let lines: Vec<LogLine> = std::fs::read_to_string(&log)
        .expect("log written")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(
        (lines[0].seq, lines[0].status, lines[0].usage),
        (1, 429, None)
    );
    assert_eq!(lines[0].model_id, SONNET);
    assert_eq!((lines[1].seq, lines[1].status), (2, 200));
    assert_eq!(lines[1].model_id, HAIKU);
    let logged = lines[1].usage.expect("usage logged");
    assert_eq!(
        logged.input,
        u64::try_from(usage.input_tokens()).expect("positive")
    );
    assert_eq!(
        logged.output,
        u64::try_from(usage.output_tokens()).expect("positive")
    );
}
