//! The one place that speaks the SDK: a Converse request built and sent, its output read
//! (answer, usage) and its errors classified for the healing policy. The policy sees only the
//! [`Converse`] port and our own types, so it runs against a scripted fake in its tests.

use std::fmt::Debug;

use aws_sdk_bedrockruntime::Client;
use aws_sdk_bedrockruntime::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_bedrockruntime::operation::converse::{ConverseError, ConverseOutput};
use aws_sdk_bedrockruntime::types::{
    ContentBlock, ConversationRole, ConverseOutput as Output, InferenceConfiguration,
    JsonSchemaDefinition, Message, OutputConfig, OutputFormat, OutputFormatStructure,
    OutputFormatType, SpecificToolChoice, SystemContentBlock, Tool, ToolChoice, ToolConfiguration,
    ToolInputSchema, ToolSpecification,
};

use super::{
    Duration, Failure, ModelEntry, Prompt, RawAnswer, RawContent, RoleSettings, StructuredOutput,
    Usage, Value, from_document, to_document,
};

/// One Converse request in the adapter's terms.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub model: &'a ModelEntry,
    pub prompt: &'a Prompt,
    pub schema: &'a Value,
    pub settings: RoleSettings,
    pub max_tokens: u32,
}

/// What Bedrock answered: the content (malformed when it is not a message) and the usage it
/// bills, which counts whether or not the content is usable.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub answer: Result<RawAnswer, String>,
    pub usage: Usage,
}

/// The Converse port: one request, one reply or a classified failure.
#[async_trait::async_trait]
pub trait Converse: Debug + Send + Sync {
    async fn converse(&self, request: Request<'_>) -> Result<Reply, Failure>;
}

/// [`Converse`] over the SDK's Bedrock Runtime client.
#[derive(Debug, Clone)]
pub struct SdkConverse(Client);

impl SdkConverse {
    pub fn new(client: Client) -> Self {
        Self(client)
    }
}

#[async_trait::async_trait]
impl Converse for SdkConverse {
    async fn converse(&self, request: Request<'_>) -> Result<Reply, Failure> {
        let output = send(&self.0, request).await.map_err(|e| classify(&e))?;
        Ok(Reply {
            answer: raw_answer(&output),
            usage: usage_of(&output),
        })
    }
}

type ConverseSdkError = SdkError<ConverseError, aws_sdk_bedrockruntime::config::http::HttpResponse>;

async fn send(client: &Client, request: Request<'_>) -> Result<ConverseOutput, ConverseSdkError> {
    let Request {
        model: entry,
        prompt,
        schema,
        settings,
        max_tokens,
    } = request;
    let inference = InferenceConfiguration::builder()
        .max_tokens(i32::try_from(max_tokens).unwrap_or(i32::MAX))
        .temperature(settings.temperature)
        .build();
    let user = |text: String| {
        Message::builder()
            .role(ConversationRole::User)
            .content(ContentBlock::Text(text))
            .build()
    };
    let request = client
        .converse()
        .model_id(&entry.id)
        .inference_config(inference);
    let request = match entry.structured_output {
        StructuredOutput::JsonSchema => {
            let format = JsonSchemaDefinition::builder()
                .schema(schema.to_string())
                .name(prompt.tool_name)
                .description(prompt.tool_description)
                .build()
                .and_then(|definition| {
                    OutputFormat::builder()
                        .r#type(OutputFormatType::JsonSchema)
                        .structure(OutputFormatStructure::JsonSchema(definition))
                        .build()
                });
            let format = format.map_err(SdkError::construction_failure)?;
            request
                .system(SystemContentBlock::Text(prompt.system.clone()))
                .messages(user(prompt.user.clone()).map_err(SdkError::construction_failure)?)
                .output_config(OutputConfig::builder().text_format(format).build())
        }
        StructuredOutput::ToolUse => {
            let tool = ToolSpecification::builder()
                .name(prompt.tool_name)
                .description(prompt.tool_description)
                .input_schema(ToolInputSchema::Json(to_document(schema)))
                .build()
                .map_err(SdkError::construction_failure)?;
            let choice = SpecificToolChoice::builder()
                .name(prompt.tool_name)
                .build()
                .map_err(SdkError::construction_failure)?;
            let config = ToolConfiguration::builder()
                .tools(Tool::ToolSpec(tool))
                .tool_choice(ToolChoice::Tool(choice))
                .build()
                .map_err(SdkError::construction_failure)?;
            request
                .system(SystemContentBlock::Text(prompt.system.clone()))
                .messages(user(prompt.user.clone()).map_err(SdkError::construction_failure)?)
                .tool_config(config)
        }
        StructuredOutput::Text => {
            // Titan takes no system prompt: instructions and schema go before the data.
            let text = format!(
                "{}\n\nReply with one JSON object that matches this JSON schema:\n{schema}\n\nData:\n{}",
                prompt.system, prompt.user
            );
            request.messages(user(text).map_err(SdkError::construction_failure)?)
        }
    };
    request.send().await
}

fn usage_of(output: &ConverseOutput) -> Usage {
    let to_u64 = |v: i32| u64::try_from(v).unwrap_or(0);
    output.usage().map_or_else(Usage::default, |u| Usage {
        input_tokens: to_u64(u.input_tokens()),
        output_tokens: to_u64(u.output_tokens()),
        cache_read_tokens: u.cache_read_input_tokens().map_or(0, to_u64),
        cache_write_tokens: u.cache_write_input_tokens().map_or(0, to_u64),
    })
}

/// The answer's content in our own terms; an output that is not a message is malformed.
fn raw_answer(output: &ConverseOutput) -> Result<RawAnswer, String> {
    let Some(Output::Message(message)) = output.output() else {
        return Err("the response carries no message".into());
    };
    let mut blocks = Vec::new();
    for block in message.content() {
        match block {
            ContentBlock::Text(text) => blocks.push(RawContent::Text { text: text.clone() }),
            ContentBlock::ToolUse(tool) => blocks.push(RawContent::ToolUse {
                name: tool.name().to_owned(),
                input: from_document(tool.input()).map_err(|e| e.to_string())?,
            }),
            _ => {}
        }
    }
    Ok(RawAnswer {
        blocks,
        stop_reason: output.stop_reason().as_str().to_owned(),
    })
}

/// Maps an SDK error onto the healing table.
fn classify(error: &ConverseSdkError) -> Failure {
    match error {
        SdkError::ServiceError(service) => {
            let e = service.err();
            let message = e.message().unwrap_or_default().to_owned();
            if e.is_throttling_exception() {
                Failure::Throttled(message)
            } else if e.is_model_timeout_exception() {
                Failure::ModelTimeout(message)
            } else if e.is_validation_exception() {
                if message.to_ascii_lowercase().contains("too long") {
                    Failure::InputTooLong(message)
                } else {
                    Failure::Validation(message)
                }
            } else if e.is_access_denied_exception() {
                Failure::AccessDenied(message)
            } else if e.is_resource_not_found_exception() {
                Failure::NotFound(message)
            } else {
                Failure::Server {
                    status: service.raw().status().as_u16(),
                    message: e
                        .code()
                        .map_or(message.clone(), |c| format!("{c}: {message}")),
                }
            }
        }
        SdkError::TimeoutError(_) => Failure::Timeout(Duration::ZERO),
        SdkError::DispatchFailure(e) => Failure::Transport(format!("{e:?}")),
        SdkError::ResponseError(e) => Failure::Malformed(format!("{e:?}")),
        SdkError::ConstructionFailure(e) => Failure::Validation(format!("{e:?}")),
        other => Failure::Transport(other.to_string()),
    }
}
