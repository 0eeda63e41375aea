//! AWS on the test bed: SDK clients for moto (or a proxy in front of it),
//! what a rotation Lambda does, the events Secrets Manager sends, SQS queues,
//! and moto's test-only endpoints (`hack/moto_server.py`).

use std::time::Instant;

use serde_json::{Value, json};

use crate::{ACCOUNT, REGION, http, uuid_like};

/// One SDK's client for `endpoint` in `region`, with the test bed's dummy
/// credentials (moto checks no signatures).
macro_rules! client {
    ($sdk:ident, $endpoint:expr, $region:expr) => {{
        let conf = $sdk::Config::builder()
            .behavior_version($sdk::config::BehaviorVersion::latest())
            .region($sdk::config::Region::new($region.to_owned()))
            .endpoint_url($endpoint)
            .credentials_provider($sdk::config::Credentials::new(
                "testing", "testing", None, None, "testbed",
            ))
            .build();
        $sdk::Client::from_conf(conf)
    }};
}

pub fn secrets_manager(endpoint: &str) -> aws_sdk_secretsmanager::Client {
    client!(aws_sdk_secretsmanager, endpoint, REGION)
}

/// Secrets Manager in another region of the same endpoint (replicas).
pub fn secrets_manager_in(endpoint: &str, region: &str) -> aws_sdk_secretsmanager::Client {
    client!(aws_sdk_secretsmanager, endpoint, region)
}

pub fn kms(endpoint: &str) -> aws_sdk_kms::Client {
    client!(aws_sdk_kms, endpoint, REGION)
}

/// KMS in another region of the same endpoint.
pub fn kms_in(endpoint: &str, region: &str) -> aws_sdk_kms::Client {
    client!(aws_sdk_kms, endpoint, region)
}

pub fn sqs(endpoint: &str) -> aws_sdk_sqs::Client {
    client!(aws_sdk_sqs, endpoint, REGION)
}

// ------------------------------------------------------------ rotations

/// The version holding AWSCURRENT.
pub async fn current_version(sm: &aws_sdk_secretsmanager::Client, id: &str) -> Result<String, String> {
    let out = sm
        .describe_secret()
        .secret_id(id)
        .send()
        .await
        .map_err(|e| format!("DescribeSecret {id}: {e:?}"))?;
    out.version_ids_to_stages()
        .into_iter()
        .flatten()
        .find(|(_, s)| s.iter().any(|s| s == "AWSCURRENT"))
        .map(|(v, _)| v.clone())
        .ok_or_else(|| format!("{id} has no AWSCURRENT version"))
}

/// What a rotation Lambda does: stage `value` as AWSPENDING in a new
/// version, then move AWSCURRENT to it from `old`. Returns the new version
/// and when the move was sent.
pub async fn rotate(
    sm: &aws_sdk_secretsmanager::Client,
    id: &str,
    old: &str,
    value: &str,
) -> Result<(String, Instant), String> {
    let token = uuid_like();
    sm.put_secret_value()
        .secret_id(id)
        .client_request_token(&token)
        .secret_string(value)
        .version_stages("AWSPENDING")
        .send()
        .await
        .map_err(|e| format!("PutSecretValue (AWSPENDING) {id}: {e:?}"))?;
    let moved = Instant::now();
    sm.update_secret_version_stage()
        .secret_id(id)
        .version_stage("AWSCURRENT")
        .move_to_version_id(&token)
        .remove_from_version_id(old)
        .send()
        .await
        .map_err(|e| format!("UpdateSecretVersionStage (move AWSCURRENT) {id}: {e:?}"))?;
    Ok((token, moved))
}

/// The EventBridge event (CloudTrail shape) that AWS sends for the move in
/// [`rotate`].
pub fn stage_moved_event(arn: &str, name: &str, token: &str, old: &str) -> Value {
    json!({
        "version": "0", "id": uuid_like(),
        "detail-type": "AWS API Call via CloudTrail", "source": "aws.secretsmanager",
        "account": ACCOUNT, "region": REGION, "resources": [],
        "detail": {
            "eventVersion": "1.08",
            "eventSource": "secretsmanager.amazonaws.com", "eventName": "UpdateSecretVersionStage",
            "awsRegion": REGION, "eventType": "AwsApiCall", "readOnly": false,
            "requestParameters": {
                "secretId": arn, "versionStage": "AWSCURRENT",
                "moveToVersionId": token, "removeFromVersionId": old,
            },
            "responseElements": {"arn": arn, "name": name},
        }
    })
}

// ------------------------------------------------------------ SQS

/// Creates queue `name` (messages come back after `visibility_seconds` if
/// not deleted, when given); returns its URL.
pub async fn create_queue(
    sqs: &aws_sdk_sqs::Client,
    name: &str,
    visibility_seconds: Option<u32>,
) -> Result<String, String> {
    let mut req = sqs.create_queue().queue_name(name);
    if let Some(s) = visibility_seconds {
        req = req.attributes(
            aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout,
            s.to_string(),
        );
    }
    req.send()
        .await
        .map_err(|e| format!("CreateQueue {name}: {e:?}"))?
        .queue_url()
        .map(str::to_owned)
        .ok_or_else(|| format!("CreateQueue {name}: no queue URL"))
}

/// Messages in a queue, visible or in flight.
pub async fn queued_messages(sqs: &aws_sdk_sqs::Client, url: &str) -> Result<u64, String> {
    use aws_sdk_sqs::types::QueueAttributeName::{
        ApproximateNumberOfMessages, ApproximateNumberOfMessagesNotVisible,
    };
    let out = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(ApproximateNumberOfMessages)
        .attribute_names(ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .map_err(|e| format!("GetQueueAttributes {url}: {e:?}"))?;
    let attrs = out.attributes().cloned().unwrap_or_default();
    Ok(
        [ApproximateNumberOfMessages, ApproximateNumberOfMessagesNotVisible]
            .iter()
            .map(|a| attrs.get(a).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0))
            .sum(),
    )
}

// ------------------------------------------------------------ moto's test endpoints

/// A call to one of moto's test-only endpoints (`/rotor-test/...`,
/// hack/moto_server.py) on `endpoint`; the JSON answer. Blocking.
pub fn moto_test(endpoint: &str, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
    let body = body.map(Value::to_string);
    match http::request(method, http::authority(endpoint), path, body.as_deref())? {
        (200, text) => {
            serde_json::from_str(&text).map_err(|e| format!("{method} {path}: bad JSON {text:?}: {e}"))
        }
        (status, text) => Err(format!("{method} {path}: HTTP {status}: {text}")),
    }
}
