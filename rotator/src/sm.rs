//! The Secrets Manager calls the steps make. Errors keep the AWS error code
//! and message (AWS messages name ARNs and version ids, never values).

use std::collections::HashMap;

use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::error::{ProvideErrorMetadata, SdkError};

use crate::error::ErrorKind;

fn aws_error<E: ProvideErrorMetadata, R>(op: &'static str, e: SdkError<E, R>) -> ErrorKind {
    let detail = match &e {
        SdkError::ServiceError(s) => {
            let err = s.err();
            format!(
                "{}: {}",
                err.code().unwrap_or("error"),
                err.message().unwrap_or("no message")
            )
        }
        SdkError::TimeoutError(_) => "timed out".to_owned(),
        SdkError::DispatchFailure(_) => "could not reach the endpoint".to_owned(),
        _ => "no valid response".to_owned(),
    };
    ErrorKind::Aws { op, detail }
}

fn is_not_found<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> bool {
    matches!(e, SdkError::ServiceError(s) if s.err().code() == Some("ResourceNotFoundException"))
}

pub struct Metadata {
    pub rotation_enabled: bool,
    pub stages: HashMap<String, Vec<String>>,
}

impl Metadata {
    /// The version id carrying `stage`, if any.
    pub fn version_with(&self, stage: &str) -> Option<&str> {
        self.stages
            .iter()
            .find(|(_, s)| s.iter().any(|s| s == stage))
            .map(|(v, _)| v.as_str())
    }
}

pub async fn describe(sm: &Client, secret_id: &str) -> Result<Metadata, ErrorKind> {
    let out = sm
        .describe_secret()
        .secret_id(secret_id)
        .send()
        .await
        .map_err(|e| aws_error("DescribeSecret", e))?;
    Ok(Metadata {
        rotation_enabled: out.rotation_enabled().unwrap_or(false),
        stages: out.version_ids_to_stages().cloned().unwrap_or_default(),
    })
}

/// The SecretString of a version; `Ok(None)` when that version or stage has
/// no value (ResourceNotFoundException).
pub async fn value(
    sm: &Client,
    secret_id: &str,
    version_id: Option<&str>,
    stage: &str,
) -> Result<Option<String>, ErrorKind> {
    match sm
        .get_secret_value()
        .secret_id(secret_id)
        .set_version_id(version_id.map(str::to_owned))
        .version_stage(stage)
        .send()
        .await
    {
        Ok(out) => match out.secret_string() {
            Some(s) => Ok(Some(s.to_owned())),
            None => Err(ErrorKind::SecretFormat {
                which: "the",
                problem: format!(
                    "the {stage} version has no SecretString (binary secrets are not supported)"
                ),
            }),
        },
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(aws_error("GetSecretValue", e)),
    }
}

pub async fn put_pending(
    sm: &Client,
    secret_id: &str,
    token: &str,
    secret_string: String,
) -> Result<(), ErrorKind> {
    sm.put_secret_value()
        .secret_id(secret_id)
        .client_request_token(token)
        .secret_string(secret_string)
        .version_stages("AWSPENDING")
        .send()
        .await
        .map_err(|e| aws_error("PutSecretValue", e))?;
    Ok(())
}

pub async fn move_current(
    sm: &Client,
    secret_id: &str,
    to: &str,
    from: Option<&str>,
) -> Result<(), ErrorKind> {
    sm.update_secret_version_stage()
        .secret_id(secret_id)
        .version_stage("AWSCURRENT")
        .move_to_version_id(to)
        .set_remove_from_version_id(from.map(str::to_owned))
        .send()
        .await
        .map_err(|e| aws_error("UpdateSecretVersionStage", e))?;
    Ok(())
}
