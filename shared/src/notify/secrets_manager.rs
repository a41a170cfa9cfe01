//! The webhook secret in AWS Secrets Manager (the `webhooks` feature: only notify links the
//! client).

use async_trait::async_trait;
use aws_sdk_secretsmanager::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use super::secrets::{SecretError, WebhookSource, Webhooks};

/// The secret in AWS Secrets Manager (`GetSecretValue` of its current version).
#[derive(Debug, Clone)]
pub struct SecretsManagerWebhooks {
    client: aws_sdk_secretsmanager::Client,
    secret_id: String,
}

impl SecretsManagerWebhooks {
    pub fn new(client: aws_sdk_secretsmanager::Client, secret_id: impl Into<String>) -> Self {
        Self {
            client,
            secret_id: secret_id.into(),
        }
    }
}

#[async_trait]
impl WebhookSource for SecretsManagerWebhooks {
    async fn webhooks(&self) -> Result<Webhooks, SecretError> {
        let output = self
            .client
            .get_secret_value()
            .secret_id(&self.secret_id)
            .send()
            .await
            .map_err(|e| SecretError::Unavailable(describe(&e)))?;
        let text = output.secret_string().ok_or_else(|| {
            SecretError::Invalid(
                "the secret has no string value (binary secrets are not read)".into(),
            )
        })?;
        Webhooks::parse(text)
    }
}

/// The error code and status of a failed `GetSecretValue` (never a secret value: failed calls
/// carry none).
fn describe<E>(error: &SdkError<E, aws_sdk_secretsmanager::config::http::HttpResponse>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match error {
        SdkError::ServiceError(service) => format!(
            "GetSecretValue: {} (HTTP {}): {}",
            service.err().code().unwrap_or("Unknown"),
            service.raw().status().as_u16(),
            service.err().message().unwrap_or("")
        ),
        _ => format!("GetSecretValue: {}", DisplayErrorContext(error)),
    }
}
