//! AWS clients (one per region, from the SDK's standard credential chain) and
//! the classification of AWS errors into what reconcile can act on.

pub mod arn;
pub mod events;
pub mod kms;
pub mod ratelimit;
pub mod secrets;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, SdkConfig, timeout::TimeoutConfig};
use aws_sdk_secretsmanager::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_types::error::display::DisplayErrorContext;

use crate::telemetry::Metrics;
use ratelimit::WriteLimiter;

/// What an AWS failure means for reconcile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AwsErrorKind {
    NotFound,
    AccessDenied,
    Throttled,
    /// Endpoint unreachable, timed out, or a 5xx: try again later.
    Unavailable,
    /// AWS rejected the request as invalid: retrying the same request won't help.
    Invalid,
    Other,
}

impl AwsErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotFound => "aws_not_found",
            Self::AccessDenied => "aws_access_denied",
            Self::Throttled => "aws_throttled",
            Self::Unavailable => "aws_unavailable",
            Self::Invalid => "aws_invalid_request",
            Self::Other => "aws_other",
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Self::NotFound => "AwsNotFound",
            Self::AccessDenied => "AwsAccessDenied",
            Self::Throttled => "AwsThrottled",
            Self::Unavailable => "AwsUnavailable",
            Self::Invalid => "AwsInvalidRequest",
            Self::Other => "AwsError",
        }
    }

    pub fn is_transient(self) -> bool {
        matches!(self, Self::Throttled | Self::Unavailable | Self::Other)
    }

    fn from_code(code: &str) -> Self {
        match code {
            "ResourceNotFoundException" | "NotFoundException" => Self::NotFound,
            "AccessDeniedException"
            | "AccessDenied"
            | "UnrecognizedClientException"
            | "InvalidSignatureException"
            | "ExpiredTokenException"
            | "KMSAccessDeniedException" => Self::AccessDenied,
            "ThrottlingException" | "TooManyRequestsException" | "RequestLimitExceeded" => Self::Throttled,
            "InternalServiceError"
            | "InternalFailure"
            | "ServiceUnavailable"
            | "KMSInternalException"
            | "DependencyTimeoutException" => Self::Unavailable,
            "InvalidRequestException"
            | "InvalidParameterException"
            | "ValidationException"
            | "MalformedPolicyDocumentException"
            | "DecryptionFailure"
            | "EncryptionFailure"
            | "PublicPolicyException"
            | "ResourceExistsException"
            | "LimitExceededException"
            | "DisabledException"
            | "KMSInvalidStateException"
            | "NotFoundException.KMS" => Self::Invalid,
            _ => Self::Other,
        }
    }
}

/// An AWS call that failed. The message comes from AWS's error metadata or
/// the transport, never from request or response payloads.
#[derive(Debug, Clone, thiserror::Error)]
#[error("AWS {operation} failed ({}): {message}", self.code.as_deref().unwrap_or("no error code"))]
pub struct AwsError {
    pub operation: &'static str,
    pub kind: AwsErrorKind,
    pub code: Option<String>,
    pub message: String,
}

impl AwsError {
    pub fn from_sdk<E, R>(operation: &'static str, err: SdkError<E, R>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug,
    {
        let (kind, code, message) = match &err {
            SdkError::ServiceError(ctx) => {
                let e = ctx.err();
                let code = e.code().map(str::to_owned);
                let kind = code
                    .as_deref()
                    .map_or(AwsErrorKind::Other, AwsErrorKind::from_code);
                let msg = e.message().unwrap_or("no message").to_owned();
                (kind, code, msg)
            }
            SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_) => (
                AwsErrorKind::Unavailable,
                None,
                DisplayErrorContext(&err).to_string(),
            ),
            _ => (AwsErrorKind::Other, None, DisplayErrorContext(&err).to_string()),
        };
        let mut message = message;
        crate::api::conditions::truncate(&mut message, 400);
        Self {
            operation,
            kind,
            code,
            message,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.kind == AwsErrorKind::NotFound
    }
}

/// Runs one AWS call of any service, counting it by operation and outcome
/// under `rotor_aws_calls`.
pub async fn counted<T, E, R>(
    metrics: &Metrics,
    operation: &'static str,
    fut: impl Future<Output = Result<T, SdkError<E, R>>>,
) -> Result<T, AwsError>
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    let start = Instant::now();
    let res = fut.await.map_err(|e| AwsError::from_sdk(operation, e));
    let outcome = match &res {
        Ok(_) => "success",
        Err(e) => e.kind.as_str(),
    };
    metrics.aws_call(operation, outcome, start.elapsed());
    res
}

/// Secrets Manager and KMS clients for one region.
#[derive(Clone)]
pub struct RegionClients {
    pub region: String,
    pub secrets: aws_sdk_secretsmanager::Client,
    pub kms: aws_sdk_kms::Client,
    /// Budget for rotor's writes in this region (Secrets Manager and KMS).
    pub writes: Arc<WriteLimiter>,
    /// Key owners read by scans for an unfinished CreateKey.
    pub key_owners: Arc<kms::KeyOwners>,
}

/// One write's share of a region's budget (`Aws::write_token`), spent by
/// `Aws::write_with`.
#[must_use = "a token is spent by the write it was taken for"]
pub struct WriteToken(());

/// Lazily built per-region clients sharing one credential chain and HTTP stack.
pub struct Aws {
    base: SdkConfig,
    default_region: String,
    /// The account rotor's credentials belong to, asked once.
    account: tokio::sync::OnceCell<String>,
    regions: Mutex<HashMap<String, RegionClients>>,
    write_rate: f64,
    metrics: Arc<Metrics>,
}

impl Aws {
    /// Loads configuration from the standard chain: `AWS_REGION`,
    /// `AWS_ENDPOINT_URL`, IRSA web identity, EKS Pod Identity, instance roles.
    pub async fn from_env(write_rate: f64, metrics: Arc<Metrics>) -> Result<Self, String> {
        let base = aws_config::defaults(BehaviorVersion::latest())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .operation_attempt_timeout(Duration::from_secs(20))
                    .operation_timeout(Duration::from_secs(60))
                    .build(),
            )
            .load()
            .await;
        let default_region = base
            .region()
            .map(|r| r.to_string())
            .ok_or("no AWS region configured: set AWS_REGION (the chart sets it from values.aws.region)")?;
        Ok(Self {
            base,
            default_region,
            account: tokio::sync::OnceCell::new(),
            regions: Mutex::default(),
            write_rate,
            metrics,
        })
    }

    /// The account id of rotor's credentials (STS GetCallerIdentity, which
    /// needs no IAM permission), cached after the first answer.
    pub async fn account(&self) -> Result<String, AwsError> {
        self.account
            .get_or_try_init(|| async {
                let sts = aws_sdk_sts::Client::new(&self.base);
                let out = self
                    .call("GetCallerIdentity", sts.get_caller_identity().send())
                    .await?;
                Ok(out.account().unwrap_or_default().to_owned())
            })
            .await
            .cloned()
    }

    pub fn default_region(&self) -> &str {
        &self.default_region
    }

    pub fn region(&self, region: Option<&str>) -> RegionClients {
        let region = region.unwrap_or(&self.default_region);
        let mut regions = self
            .regions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        regions
            .entry(region.to_owned())
            .or_insert_with(|| {
                let r = aws_config::Region::new(region.to_owned());
                RegionClients {
                    region: region.to_owned(),
                    secrets: aws_sdk_secretsmanager::Client::from_conf(
                        aws_sdk_secretsmanager::config::Builder::from(&self.base)
                            .region(r.clone())
                            .build(),
                    ),
                    kms: aws_sdk_kms::Client::from_conf(
                        aws_sdk_kms::config::Builder::from(&self.base).region(r).build(),
                    ),
                    writes: Arc::new(WriteLimiter::new(self.write_rate)),
                    key_owners: Arc::default(),
                }
            })
            .clone()
    }

    /// Runs one AWS call, counting it by operation and outcome.
    pub async fn call<T, E, R>(
        &self,
        operation: &'static str,
        fut: impl Future<Output = Result<T, SdkError<E, R>>>,
    ) -> Result<T, AwsError>
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug,
    {
        counted(&self.metrics, operation, fut).await
    }

    /// Waits for a token of the region's write budget, for a write that
    /// must record its attempt only once it can go (`create_key`).
    pub async fn write_token(&self, rc: &RegionClients) -> WriteToken {
        rc.writes.acquire().await;
        WriteToken(())
    }

    /// Runs one AWS write within the region's write budget; throttling
    /// responses shrink the budget, successes grow it back.
    pub async fn write<T, E, R>(
        &self,
        rc: &RegionClients,
        operation: &'static str,
        fut: impl Future<Output = Result<T, SdkError<E, R>>>,
    ) -> Result<T, AwsError>
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug,
    {
        let token = self.write_token(rc).await;
        self.write_with(token, rc, operation, fut).await
    }

    /// Runs one AWS write on a token already taken.
    pub async fn write_with<T, E, R>(
        &self,
        _token: WriteToken,
        rc: &RegionClients,
        operation: &'static str,
        fut: impl Future<Output = Result<T, SdkError<E, R>>>,
    ) -> Result<T, AwsError>
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug,
    {
        let res = self.call(operation, fut).await;
        match &res {
            Err(e) if e.kind == AwsErrorKind::Throttled => rc.writes.throttled(),
            _ => rc.writes.succeeded(),
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_codes() {
        assert_eq!(
            AwsErrorKind::from_code("ResourceNotFoundException"),
            AwsErrorKind::NotFound
        );
        assert_eq!(
            AwsErrorKind::from_code("ThrottlingException"),
            AwsErrorKind::Throttled
        );
        assert_eq!(
            AwsErrorKind::from_code("AccessDeniedException"),
            AwsErrorKind::AccessDenied
        );
        assert_eq!(AwsErrorKind::from_code("Whatever"), AwsErrorKind::Other);
        assert!(AwsErrorKind::Throttled.is_transient());
        assert!(!AwsErrorKind::AccessDenied.is_transient());
    }
}
