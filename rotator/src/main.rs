//! `bootstrap`: the rotation function on the Lambda runtime API
//! (`provided.al2023`). Configuration comes from environment variables; see
//! docs/rotation-function.md.

use std::sync::Arc;

use lambda_runtime::{Diagnostic, LambdaEvent, service_fn};
use rotator::{Config, Request, Rotator};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_ansi(false)
        .without_time() // CloudWatch stamps each line
        .init();
    let config = Config::from_env()?;
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    // AWS's templates honour SECRETS_MANAGER_ENDPOINT (e.g. a VPC endpoint's
    // DNS name); AWS_ENDPOINT_URL(_SECRETS_MANAGER) work as in every SDK.
    if let Ok(url) = std::env::var("SECRETS_MANAGER_ENDPOINT") {
        loader = loader.endpoint_url(url);
    }
    let sm = aws_sdk_secretsmanager::Client::new(&loader.load().await);
    let rotator = Arc::new(Rotator::new(config, sm)?);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Request>| {
        let rotator = rotator.clone();
        async move {
            match rotator.handle(&event.payload).await {
                Ok(()) => Ok(serde_json::Value::Null),
                // errorType names the step (`setSecretFailed`); the message
                // says which check failed, without values.
                Err(e) => Err(Diagnostic {
                    error_type: format!("{}Failed", e.step),
                    error_message: e.to_string(),
                }),
            }
        }
    }))
    .await
}
