//! Secrets Manager change events from EventBridge, delivered through SQS.
//!
//! The optional fast path of the cost model (architecture.md, "Events"): an
//! EventBridge rule on the default bus routes Secrets Manager events to an SQS
//! queue; [`consume`] long-polls it and hands each [`SecretChange`] to the
//! controller, which reconciles the RotatedSecrets naming that secret. Polling
//! stays the fallback, so a lost or dropped event only delays a sync.
//!
//! # Event shapes
//!
//! Checked against the AWS documentation:
//!
//! - CloudTrail API calls: `"source": "aws.secretsmanager"`,
//!   `"detail-type": "AWS API Call via CloudTrail"`, `detail.eventName` the
//!   operation, the secret in `detail.requestParameters.secretId` (name or ARN)
//!   and, for most writes, the full ARN in `detail.responseElements.arn`;
//!   before February 2024 some operations wrote `aRN` instead, so both are read
//!   (Secrets Manager User Guide, "Match AWS Secrets Manager events with
//!   Amazon EventBridge", monitoring-eventbridge.html, and "AWS CloudTrail
//!   entries for Secrets Manager", cloudtrail_log_entries.html). Failed calls
//!   are also logged, with `detail.errorCode`; they changed nothing.
//! - Events Secrets Manager itself logs to CloudTrail: RotationStarted,
//!   RotationSucceeded, RotationFailed, RotationAbandoned (User Guide,
//!   "Logging AWS Secrets Manager events with AWS CloudTrail",
//!   retrieve-ct-entries.html). They arrive as
//!   `"detail-type": "AWS Service Event via CloudTrail"` with
//!   `detail.eventType: "AwsServiceEvent"`, `requestParameters: null` and the
//!   secret ARN in `detail.additionalEventData.SecretId`; the User Guide's
//!   rotation pattern matches both detail-types with `$or`. Some users report
//!   `detail.serviceEventDetails.secretId` instead, which is read as a fallback.
//! - The native `"detail-type": "Secret Label Updated"` event, sent when a
//!   staging label other than AWSPENDING/AWSPREVIOUS moves: `detail.name`,
//!   `detail.labelUpdated`, `detail.versionId`, and the ARN in `resources`
//!   (User Guide, "Secret Label Updated event",
//!   event-detail-secret-label-updated-secretsmanager.html).
//! - Any of these wrapped in an SNS notification (`{"Type": "Notification",
//!   "Message": "<event JSON>"}`), for EventBridge -> SNS -> SQS set-ups without
//!   raw message delivery.
//!
//! Message bodies can carry request parameters; nothing from a body is ever
//! logged or put into an error, only the SQS message id.

use std::sync::Arc;
use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use aws_sdk_sqs::types::DeleteMessageBatchRequestEntry;
use serde_json::Value;
use tokio::sync::mpsc;

use super::arn::Arn;
use super::{Aws, counted};
use crate::backoff::Backoff;
use crate::telemetry::Metrics;

/// Long-poll wait of each ReceiveMessage (the SQS maximum).
pub const WAIT_TIME_SECONDS: i32 = 20;
/// Messages per ReceiveMessage (the SQS maximum, also the batch-delete maximum).
pub const MAX_MESSAGES: i32 = 10;
const BACKOFF: Backoff = Backoff {
    base: Duration::from_secs(1),
    max: Duration::from_secs(60),
};
/// Secrets Manager ARNs and names are far shorter; anything longer is not one.
const MAX_SECRET_ID_LEN: usize = 2048;

/// A Secrets Manager secret that may have changed; no secret material.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SecretChange {
    /// Region of the secret: from its ARN when the event has one, else the
    /// event's region. `None` when the event says nothing usable.
    pub region: Option<String>,
    /// The secret's full ARN when the event carries one, otherwise what the
    /// caller passed as `SecretId`: a name or a (possibly partial) ARN.
    pub secret_id: String,
    /// What happened: a CloudTrail `eventName` from a fixed set
    /// (`PutSecretValue`, `RotationSucceeded`, ...) or `SecretLabelUpdated`.
    /// Bounded, so it can be a metric label or a log field.
    pub event: &'static str,
}

impl SecretChange {
    /// The ARN, when `secret_id` is one.
    pub fn arn(&self) -> Option<&str> {
        self.secret_id
            .starts_with("arn:")
            .then_some(self.secret_id.as_str())
    }

    /// Whether this change may concern the secret called `name` in `region`,
    /// whose ARN (if known, e.g. `status.arn`) is `arn`.
    ///
    /// Deliberately lenient: a false match costs one reconcile, a missed one
    /// delays the sync until the next poll. An ARN matches `arn` exactly, or by
    /// region and name (a secret deleted and re-created under the same name has
    /// a new ARN suffix, and callers may pass partial ARNs without the suffix).
    /// A bare name matches by name, and by region when the event has one.
    pub fn matches(&self, arn: Option<&str>, name: &str, region: &str) -> bool {
        let Some(change_arn) = self.arn() else {
            return self.secret_id == name && self.region.as_deref().is_none_or(|r| r == region);
        };
        if arn == Some(change_arn) {
            return true;
        }
        Arn::secret(change_arn).is_some_and(|a| a.region == region && a.names(name))
    }
}

/// Why a message body could not be understood. Carries no text from the body:
/// bodies can hold request parameters, and this error is logged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("message body is empty")]
    Empty,
    /// Not JSON. Only serde_json's category and position are kept: its
    /// messages can quote the input.
    #[error("{layer} is not valid JSON ({category} at line {line}, column {column})")]
    InvalidJson {
        /// `message body` or `SNS Message`.
        layer: &'static str,
        category: &'static str,
        line: usize,
        column: usize,
    },
    #[error("SNS notification without a JSON string Message")]
    InvalidSnsEnvelope,
    #[error("message is not an EventBridge event (no source or detail-type)")]
    NotAnEvent,
    #[error("Secrets Manager {event} event names no secret")]
    MissingSecretId { event: &'static str },
    #[error("Secrets Manager {event} event names a secret that is not a valid name or ARN")]
    InvalidSecretId { event: &'static str },
}

/// Parses one SQS message body. `Ok(None)` for events that cannot change what
/// rotor mirrors: other sources, read-only or failed calls, stages other than
/// AWSCURRENT. Errors for bodies that are not a recognisable event.
pub fn parse_message(body: &str) -> Result<Option<SecretChange>, ParseError> {
    if body.trim().is_empty() {
        return Err(ParseError::Empty);
    }
    let value = parse_json(body, "message body")?;
    // EventBridge -> SNS -> SQS without raw delivery: the event is a string
    // inside an SNS envelope. Unwrapped once only.
    let value = if value.get("Type").and_then(Value::as_str) == Some("Notification") {
        let inner = value
            .get("Message")
            .and_then(Value::as_str)
            .ok_or(ParseError::InvalidSnsEnvelope)?;
        parse_json(inner, "SNS Message")?
    } else {
        value
    };
    parse_event(&value)
}

fn parse_json(text: &str, layer: &'static str) -> Result<Value, ParseError> {
    serde_json::from_str(text).map_err(|e| ParseError::InvalidJson {
        layer,
        category: match e.classify() {
            serde_json::error::Category::Io => "I/O error",
            serde_json::error::Category::Syntax => "syntax error",
            serde_json::error::Category::Data => "unexpected data",
            serde_json::error::Category::Eof => "unexpected end of input",
        },
        line: e.line(),
        column: e.column(),
    })
}

/// CloudTrail-recorded API calls that can move AWSCURRENT or change whether
/// the secret exists, is replicated, or rotates. Everything else (reads such
/// as GetSecretValue or DescribeSecret, tags, policies) is ignored.
const API_CALLS: &[&str] = &[
    "CreateSecret",
    "PutSecretValue",
    "UpdateSecret",
    "UpdateSecretVersionStage",
    "RotateSecret",
    "CancelRotateSecret",
    "DeleteSecret",
    "RestoreSecret",
    "ReplicateSecretToRegions",
    "RemoveRegionsFromReplication",
    "StopReplicationToReplica",
];

/// Events Secrets Manager itself records in CloudTrail about rotation.
const SERVICE_EVENTS: &[&str] = &[
    "RotationStarted",
    "RotationSucceeded",
    "RotationFailed",
    "RotationAbandoned",
];

const LABEL_UPDATED: &str = "SecretLabelUpdated";
const AWSCURRENT: &str = super::secrets::AWSCURRENT;

fn parse_event(event: &Value) -> Result<Option<SecretChange>, ParseError> {
    let (Some(source), Some(detail_type)) = (
        event.get("source").and_then(Value::as_str),
        event.get("detail-type").and_then(Value::as_str),
    ) else {
        return Err(ParseError::NotAnEvent);
    };
    if source != "aws.secretsmanager" {
        return Ok(None);
    }
    let detail = event.get("detail").unwrap_or(&Value::Null);
    match detail_type {
        // docs.amazonaws.cn spells it "Amazon API Call via CloudTrail".
        "AWS API Call via CloudTrail" | "Amazon API Call via CloudTrail" => {
            let Some(name) = known(detail, API_CALLS) else {
                return Ok(None);
            };
            if detail.get("errorCode").is_some_and(|c| !c.is_null()) {
                return Ok(None); // the call failed: nothing changed
            }
            if !may_move_awscurrent(name, detail) {
                return Ok(None);
            }
            let id = first_string(&[
                str_at(detail, &["responseElements", "arn"]),
                str_at(detail, &["responseElements", "aRN"]),
                str_at(detail, &["responseElements", "ARN"]),
                str_at(detail, &["requestParameters", "secretId"]),
                str_at(detail, &["requestParameters", "name"]),
                resource_arn(event),
            ]);
            change(event, detail, name, id)
        }
        "AWS Service Event via CloudTrail" | "Amazon Service Event via CloudTrail" => {
            let Some(name) = known(detail, SERVICE_EVENTS) else {
                return Ok(None);
            };
            let id = first_string(&[
                str_at(detail, &["additionalEventData", "SecretId"]),
                str_at(detail, &["serviceEventDetails", "secretId"]),
                str_at(detail, &["responseElements", "arn"]),
                resource_arn(event),
            ]);
            change(event, detail, name, id)
        }
        "Secret Label Updated" => {
            if str_at(detail, &["labelUpdated"]).is_some_and(|l| l != AWSCURRENT) {
                return Ok(None); // a custom label: AWSCURRENT did not move
            }
            let id = first_string(&[resource_arn(event), str_at(detail, &["name"])]);
            change(event, detail, LABEL_UPDATED, id)
        }
        _ => Ok(None),
    }
}

/// `detail.eventName` if it is in `set`, as the set's `'static` string.
fn known(detail: &Value, set: &[&'static str]) -> Option<&'static str> {
    let name = detail.get("eventName").and_then(Value::as_str)?;
    set.iter().copied().find(|k| *k == name)
}

/// Staging a version as AWSPENDING (what a rotation Lambda does first) leaves
/// AWSCURRENT where it was; the later move, or RotationSucceeded, is the event
/// that matters. Only filtered when the request says so explicitly.
fn may_move_awscurrent(name: &str, detail: &Value) -> bool {
    let params = detail.get("requestParameters").unwrap_or(&Value::Null);
    match name {
        // Without versionStages, PutSecretValue moves AWSCURRENT.
        "PutSecretValue" => match params.get("versionStages").and_then(Value::as_array) {
            Some(stages) => stages.iter().any(|s| s.as_str() == Some(AWSCURRENT)),
            None => true,
        },
        "UpdateSecretVersionStage" => match params.get("versionStage").and_then(Value::as_str) {
            Some(stage) => stage == AWSCURRENT,
            None => true,
        },
        _ => true,
    }
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter()
        .try_fold(v, |v, key| v.get(key))?
        .as_str()
        .filter(|s| !s.is_empty())
}

fn first_string<'a>(candidates: &[Option<&'a str>]) -> Option<&'a str> {
    candidates.iter().copied().flatten().next()
}

/// The first Secrets Manager secret ARN in the event's top-level `resources`.
fn resource_arn(event: &Value) -> Option<&str> {
    event
        .get("resources")?
        .as_array()?
        .iter()
        .filter_map(Value::as_str)
        .find(|r| Arn::secret(r).is_some())
}

fn change(
    event: &Value,
    detail: &Value,
    name: &'static str,
    id: Option<&str>,
) -> Result<Option<SecretChange>, ParseError> {
    let id = id.ok_or(ParseError::MissingSecretId { event: name })?;
    if id.len() > MAX_SECRET_ID_LEN || id.chars().any(char::is_control) {
        return Err(ParseError::InvalidSecretId { event: name });
    }
    // The ARN names the secret's own region; the event's region is where the
    // call was made, the same for a call by name.
    let region = Arn::secret(id)
        .map(|a| a.region)
        .or_else(|| str_at(event, &["region"]))
        .or_else(|| str_at(detail, &["awsRegion"]))
        .filter(|r| is_region(r))
        .map(str::to_owned);
    Ok(Some(SecretChange {
        region,
        secret_id: id.to_owned(),
        event: name,
    }))
}

fn is_region(r: &str) -> bool {
    (1..=32).contains(&r.len())
        && r.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The region in a queue URL (`https://sqs.REGION.amazonaws.com/ACCOUNT/NAME`,
/// the legacy `https://REGION.queue.amazonaws.com/...`, or the `.com.cn`
/// forms); `None` for other hosts such as a local endpoint.
pub fn queue_region(queue_url: &str) -> Option<&str> {
    let host = queue_url.split_once("://")?.1.split(['/', ':']).next()?;
    let region = if let Some(rest) = host.strip_prefix("sqs.") {
        rest.split('.').next()?
    } else {
        let (region, rest) = host.split_once('.')?;
        rest.starts_with("queue.amazonaws.com").then_some(region)?
    };
    is_region(region).then_some(region)
}

impl Aws {
    /// An SQS client for the events queue, sharing rotor's credential chain,
    /// HTTP stack and `AWS_ENDPOINT_URL`. The region comes from the queue URL
    /// (falling back to the default region), and the per-attempt timeout is
    /// raised above the 20 s long poll, which rotor's default would cut off.
    pub fn sqs(&self, queue_url: &str) -> aws_sdk_sqs::Client {
        let region = queue_region(queue_url).unwrap_or(&self.default_region);
        let wait = Duration::from_secs(WAIT_TIME_SECONDS as u64);
        aws_sdk_sqs::Client::from_conf(
            aws_sdk_sqs::config::Builder::from(&self.base)
                .region(aws_config::Region::new(region.to_owned()))
                .timeout_config(
                    TimeoutConfig::builder()
                        .connect_timeout(Duration::from_secs(5))
                        .operation_attempt_timeout(wait + Duration::from_secs(10))
                        .operation_timeout(wait + Duration::from_secs(40))
                        .build(),
                )
                .build(),
        )
    }
}

/// Consumes the events queue until `tx` is closed.
///
/// Long-polls ReceiveMessage (20 s, 10 messages), sends each change to `tx`
/// (waiting for room: the controller applies back-pressure), then deletes the
/// batch with DeleteMessageBatch: handled messages and also malformed or
/// irrelevant ones, which would otherwise come back forever. Those are logged
/// by message id only. A message whose change could not be handed over (the
/// receiver went away) is left for the visibility timeout to return.
///
/// Never panics and never gives up on AWS errors: it logs, counts the call in
/// `rotor_aws_calls{operation="ReceiveMessage"|"DeleteMessageBatch"}`, backs
/// off (1 s doubling to 60 s, jittered) and tries again. It returns as soon as
/// `tx` is closed, even in the middle of a long poll.
///
/// Run it on the leader only: a message consumed elsewhere is deleted and
/// never seen by the replica that writes.
pub async fn consume(
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
    tx: mpsc::Sender<SecretChange>,
    metrics: Arc<Metrics>,
) {
    tracing::info!("consuming Secrets Manager events from SQS");
    let mut failures = 0u32;
    loop {
        let receive = sqs
            .receive_message()
            .queue_url(&queue_url)
            .max_number_of_messages(MAX_MESSAGES)
            .wait_time_seconds(WAIT_TIME_SECONDS)
            .send();
        let received = tokio::select! {
            _ = tx.closed() => break,
            r = counted(&metrics, "ReceiveMessage", receive) => r,
        };
        let messages = match received {
            Ok(out) => {
                failures = 0;
                out.messages.unwrap_or_default()
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let delay = BACKOFF.delay(failures, Duration::MAX);
                tracing::warn!(error = %e, retry_in = ?delay, "receiving Secrets Manager events failed");
                tokio::select! {
                    _ = tx.closed() => break,
                    _ = tokio::time::sleep(delay) => continue,
                }
            }
        };

        let mut done = Vec::with_capacity(messages.len());
        for (i, m) in messages.iter().enumerate() {
            let message_id = m.message_id().unwrap_or("-");
            match parse_message(m.body().unwrap_or_default()) {
                Ok(Some(change)) => {
                    tracing::debug!(
                        message_id,
                        event = change.event,
                        region = change.region.as_deref(),
                        "Secrets Manager change event"
                    );
                    if tx.send(change).await.is_err() {
                        break; // receiver gone: leave the rest on the queue
                    }
                }
                Ok(None) => {
                    tracing::debug!(message_id, "ignoring event that cannot change a secret")
                }
                Err(e) => {
                    tracing::warn!(message_id, error = %e, "dropping unreadable event message")
                }
            }
            if let Some(receipt) = m.receipt_handle() {
                done.push((i, receipt));
            }
        }
        delete(&sqs, &queue_url, &done, &metrics).await;
        if tx.is_closed() {
            break;
        }
    }
    tracing::info!("stopped consuming Secrets Manager events: receiver closed");
}

/// Deletes handled messages. A failure is only logged: the messages come back
/// after the visibility timeout and are handled again, which is harmless.
async fn delete(sqs: &aws_sdk_sqs::Client, queue_url: &str, done: &[(usize, &str)], metrics: &Metrics) {
    if done.is_empty() {
        return;
    }
    let entries = done.iter().filter_map(|(i, receipt)| {
        DeleteMessageBatchRequestEntry::builder()
            .id(i.to_string())
            .receipt_handle(*receipt)
            .build()
            .ok()
    });
    let req = sqs
        .delete_message_batch()
        .queue_url(queue_url)
        .set_entries(Some(entries.collect()))
        .send();
    match counted(metrics, "DeleteMessageBatch", req).await {
        Ok(out) if !out.failed().is_empty() => {
            tracing::warn!(
                failed = out.failed().len(),
                "some event messages were not deleted; they will be received again"
            );
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(
            error = %e,
            "deleting event messages failed; they will be received again"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ARN: &str = "arn:aws:secretsmanager:us-west-2:012345678901:secret:app/db-a1b2c3";

    fn parse(v: Value) -> Result<Option<SecretChange>, ParseError> {
        parse_message(&v.to_string())
    }

    fn api_call(name: &str, detail: Value) -> Value {
        let mut d = json!({
            "eventVersion": "1.08",
            "eventSource": "secretsmanager.amazonaws.com",
            "eventName": name,
            "awsRegion": "us-west-2",
            "eventType": "AwsApiCall",
        });
        d.as_object_mut()
            .unwrap()
            .extend(detail.as_object().unwrap().clone());
        json!({
            "version": "0",
            "id": "6a7e8feb-b491-4cf7-a9f1-bf3703467718",
            "detail-type": "AWS API Call via CloudTrail",
            "source": "aws.secretsmanager",
            "account": "012345678901",
            "time": "2024-02-06T16:43:48Z",
            "region": "us-west-2",
            "resources": [],
            "detail": d,
        })
    }

    /// The RotationSucceeded entry as CloudTrail delivers it to EventBridge.
    fn service_event(name: &str, secret_id: &str) -> Value {
        json!({
            "version": "0",
            "id": "dd5fd657-7361-f5d2-0c0f-0fe27390611b",
            "detail-type": "AWS Service Event via CloudTrail",
            "source": "aws.secretsmanager",
            "account": "012345678901",
            "time": "2021-08-13T19:17:16Z",
            "region": "us-west-2",
            "resources": [],
            "detail": {
                "eventVersion": "1.08",
                "userIdentity": {"accountId": "012345678901", "invokedBy": "secretsmanager.amazonaws.com"},
                "eventSource": "secretsmanager.amazonaws.com",
                "eventName": name,
                "awsRegion": "us-west-2",
                "sourceIPAddress": "secretsmanager.amazonaws.com",
                "requestParameters": null,
                "responseElements": null,
                "additionalEventData": {"SecretId": secret_id},
                "readOnly": false,
                "eventType": "AwsServiceEvent",
                "managementEvent": true,
            }
        })
    }

    fn change(region: Option<&str>, id: &str, event: &'static str) -> Option<SecretChange> {
        Some(SecretChange {
            region: region.map(str::to_owned),
            secret_id: id.to_owned(),
            event,
        })
    }

    #[test]
    fn put_secret_value_prefers_the_response_arn() {
        let e = api_call(
            "PutSecretValue",
            json!({
                "requestParameters": {"secretId": "app/db", "clientRequestToken": "t"},
                "responseElements": {"arn": ARN, "versionId": "t", "versionStages": ["AWSCURRENT"]},
            }),
        );
        assert_eq!(parse(e), Ok(change(Some("us-west-2"), ARN, "PutSecretValue")));
    }

    #[test]
    fn reads_the_pre_2024_arn_spelling() {
        let e = api_call(
            "UpdateSecret",
            json!({"requestParameters": {"secretId": "app/db"}, "responseElements": {"aRN": ARN}}),
        );
        assert_eq!(parse(e), Ok(change(Some("us-west-2"), ARN, "UpdateSecret")));
    }

    #[test]
    fn falls_back_to_the_request_secret_id_and_event_region() {
        let e = api_call(
            "RotateSecret",
            json!({"requestParameters": {"secretId": "app/db"}, "responseElements": null}),
        );
        assert_eq!(parse(e), Ok(change(Some("us-west-2"), "app/db", "RotateSecret")));

        let mut e = api_call(
            "DeleteSecret",
            json!({"requestParameters": {"secretId": "app/db"}}),
        );
        e.as_object_mut().unwrap().remove("region");
        e["detail"]["awsRegion"] = json!("eu-central-1");
        assert_eq!(
            parse(e),
            Ok(change(Some("eu-central-1"), "app/db", "DeleteSecret"))
        );
    }

    #[test]
    fn region_comes_from_the_arn_over_the_event() {
        let replica = "arn:aws:secretsmanager:eu-west-1:012345678901:secret:app/db-a1b2c3";
        let e = api_call(
            "RestoreSecret",
            json!({"requestParameters": {"secretId": replica}}),
        );
        assert_eq!(parse(e), Ok(change(Some("eu-west-1"), replica, "RestoreSecret")));
    }

    #[test]
    fn create_secret_names_the_secret_in_request_name() {
        let e = api_call(
            "CreateSecret",
            json!({"requestParameters": {"name": "app/db", "secretString": "HIDDEN_DUE_TO_SECURITY_REASONS"}}),
        );
        assert_eq!(parse(e), Ok(change(Some("us-west-2"), "app/db", "CreateSecret")));
    }

    #[test]
    fn every_state_changing_call_is_accepted() {
        for name in API_CALLS {
            let e = api_call(name, json!({"requestParameters": {"secretId": ARN}}));
            assert_eq!(parse(e).unwrap().map(|c| c.event), Some(*name), "{name}");
        }
    }

    #[test]
    fn read_only_and_unrelated_calls_are_ignored() {
        for name in [
            "GetSecretValue",
            "BatchGetSecretValue",
            "DescribeSecret",
            "ListSecrets",
            "ListSecretVersionIds",
            "GetRandomPassword",
            "GetResourcePolicy",
            "TagResource",
            "SomethingNew",
        ] {
            let e = api_call(name, json!({"requestParameters": {"secretId": ARN}}));
            assert_eq!(parse(e), Ok(None), "{name}");
        }
    }

    #[test]
    fn failed_calls_are_ignored() {
        let e = api_call(
            "PutSecretValue",
            json!({
                "requestParameters": {"secretId": ARN},
                "errorCode": "AccessDenied",
                "errorMessage": "no",
            }),
        );
        assert_eq!(parse(e), Ok(None));
    }

    #[test]
    fn staging_awspending_is_ignored_but_moving_awscurrent_is_not() {
        let pending = api_call(
            "PutSecretValue",
            json!({"requestParameters": {"secretId": ARN, "versionStages": ["AWSPENDING"]}}),
        );
        assert_eq!(parse(pending), Ok(None));
        let current = api_call(
            "PutSecretValue",
            json!({"requestParameters": {"secretId": ARN, "versionStages": ["AWSCURRENT", "x"]}}),
        );
        assert!(parse(current).unwrap().is_some());

        let stage = |s: &str| {
            api_call(
                "UpdateSecretVersionStage",
                json!({"requestParameters": {"secretId": ARN, "versionStage": s, "moveToVersionId": "v2"}}),
            )
        };
        assert_eq!(parse(stage("AWSPENDING")), Ok(None));
        assert_eq!(parse(stage("custom")), Ok(None));
        assert_eq!(
            parse(stage("AWSCURRENT")),
            Ok(change(Some("us-west-2"), ARN, "UpdateSecretVersionStage"))
        );
    }

    #[test]
    fn rotation_service_events() {
        for name in SERVICE_EVENTS {
            assert_eq!(
                parse(service_event(name, ARN)),
                Ok(change(Some("us-west-2"), ARN, name)),
                "{name}"
            );
        }
        assert_eq!(parse(service_event("EndSecretVersionDelete", ARN)), Ok(None));
    }

    #[test]
    fn service_event_fallback_fields() {
        let mut e = service_event("RotationSucceeded", ARN);
        e["detail"].as_object_mut().unwrap().remove("additionalEventData");
        e["detail"]["serviceEventDetails"] = json!({"secretId": ARN});
        assert_eq!(
            parse(e.clone()),
            Ok(change(Some("us-west-2"), ARN, "RotationSucceeded"))
        );

        e["detail"].as_object_mut().unwrap().remove("serviceEventDetails");
        e["resources"] = json!(["arn:aws:lambda:us-west-2:012345678901:function:f", ARN]);
        assert_eq!(
            parse(e.clone()),
            Ok(change(Some("us-west-2"), ARN, "RotationSucceeded"))
        );

        e["resources"] = json!([]);
        assert_eq!(
            parse(e),
            Err(ParseError::MissingSecretId {
                event: "RotationSucceeded"
            })
        );
    }

    #[test]
    fn secret_label_updated() {
        let e = |label: &str| {
            json!({
                "version": "0",
                "id": "6a7e8feb-b491-4cf7-a9f1-bf3703467718",
                "detail-type": "Secret Label Updated",
                "source": "aws.secretsmanager",
                "account": "012345678901",
                "time": "2024-02-06T16:43:48Z",
                "region": "us-west-2",
                "resources": [ARN],
                "detail": {"name": "app/db", "labelUpdated": label, "versionId": "a1b2"}
            })
        };
        assert_eq!(
            parse(e("AWSCURRENT")),
            Ok(change(Some("us-west-2"), ARN, LABEL_UPDATED))
        );
        assert_eq!(parse(e("blue")), Ok(None));

        let mut by_name = e("AWSCURRENT");
        by_name["resources"] = json!([]);
        assert_eq!(
            parse(by_name),
            Ok(change(Some("us-west-2"), "app/db", LABEL_UPDATED))
        );
    }

    #[test]
    fn other_sources_and_detail_types_are_ignored() {
        let mut e = service_event("RotationSucceeded", ARN);
        e["source"] = json!("aws.kms");
        assert_eq!(parse(e), Ok(None));
        let mut e = service_event("RotationSucceeded", ARN);
        e["detail-type"] = json!("Scheduled Event");
        assert_eq!(parse(e), Ok(None));
    }

    #[test]
    fn sns_wrapped_events_are_unwrapped() {
        let inner = service_event("RotationSucceeded", ARN).to_string();
        let body = json!({
            "Type": "Notification",
            "MessageId": "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
            "TopicArn": "arn:aws:sns:us-west-2:012345678901:rotor",
            "Message": inner,
            "Timestamp": "2024-02-06T16:43:48.000Z",
            "SignatureVersion": "1",
        });
        assert_eq!(
            parse(body),
            Ok(change(Some("us-west-2"), ARN, "RotationSucceeded"))
        );
        assert_eq!(
            parse(json!({"Type": "Notification", "Message": {"not": "a string"}})),
            Err(ParseError::InvalidSnsEnvelope)
        );
        assert!(matches!(
            parse(json!({"Type": "Notification", "Message": "{oops"})),
            Err(ParseError::InvalidJson {
                layer: "SNS Message",
                ..
            })
        ));
    }

    #[test]
    fn malformed_bodies_are_errors() {
        assert_eq!(parse_message(""), Err(ParseError::Empty));
        assert_eq!(parse_message("  \n"), Err(ParseError::Empty));
        assert!(matches!(
            parse_message("{\"source\": "),
            Err(ParseError::InvalidJson {
                layer: "message body",
                category: "unexpected end of input",
                ..
            })
        ));
        assert_eq!(parse(json!([1, 2])), Err(ParseError::NotAnEvent));
        assert_eq!(parse(json!({"hello": "world"})), Err(ParseError::NotAnEvent));
        assert_eq!(
            parse(api_call("PutSecretValue", json!({"requestParameters": {}}))),
            Err(ParseError::MissingSecretId {
                event: "PutSecretValue"
            })
        );
        assert_eq!(
            parse(api_call(
                "PutSecretValue",
                json!({"requestParameters": {"secretId": "x".repeat(MAX_SECRET_ID_LEN + 1)}})
            )),
            Err(ParseError::InvalidSecretId {
                event: "PutSecretValue"
            })
        );
    }

    #[test]
    fn errors_never_carry_the_body() {
        const SECRET: &str = "hunter2-Sup3rS3cret-value";
        let bodies = [
            // Broken JSON around a secret string.
            format!(r#"{{"detail": {{"requestParameters": {{"secretString": "{SECRET}"#),
            format!(r#"{{"secretString": "{SECRET}" "#),
            SECRET.to_owned(),
            // Valid JSON, but the secret where an id belongs.
            json!({
                "source": "aws.secretsmanager",
                "detail-type": "AWS API Call via CloudTrail",
                "detail": {"eventName": "PutSecretValue",
                           "requestParameters": {"secretId": {"secretString": SECRET}}}
            })
            .to_string(),
            json!({
                "source": "aws.secretsmanager",
                "detail-type": "AWS API Call via CloudTrail",
                "detail": {"eventName": "PutSecretValue",
                           "requestParameters": {"secretId": format!("{SECRET}\u{7}")}}
            })
            .to_string(),
            json!({"Type": "Notification", "Message": format!("{{\"x\": \"{SECRET}")}).to_string(),
            json!({"Type": "Notification", "Message": {"secretString": SECRET}}).to_string(),
            json!({"secretString": SECRET}).to_string(),
        ];
        for body in &bodies {
            let err = parse_message(body).expect_err(body);
            let shown = format!("{err} {err:?} {:#?}", err);
            assert!(!shown.contains(SECRET), "leaked through {shown}");
            assert!(!shown.contains("hunter2"), "leaked through {shown}");
        }
    }

    #[test]
    fn matching_a_change_to_a_rotated_secret() {
        let by_arn = SecretChange {
            region: Some("us-west-2".into()),
            secret_id: ARN.into(),
            event: "RotationSucceeded",
        };
        assert!(by_arn.matches(Some(ARN), "app/db", "us-west-2"));
        // Status not written yet, or the secret was re-created: by name + region.
        assert!(by_arn.matches(None, "app/db", "us-west-2"));
        assert!(by_arn.matches(
            Some("arn:aws:secretsmanager:us-west-2:012345678901:secret:app/db-zzzzzz"),
            "app/db",
            "us-west-2"
        ));
        assert!(!by_arn.matches(None, "app/db", "eu-west-1"));
        assert!(!by_arn.matches(None, "app", "us-west-2"));
        assert!(!by_arn.matches(None, "app/db-a1b2c3-x", "us-west-2"));
        assert!(!by_arn.matches(None, "app/d", "us-west-2"));

        let partial = SecretChange {
            secret_id: "arn:aws:secretsmanager:us-west-2:012345678901:secret:app/db".into(),
            ..by_arn.clone()
        };
        assert!(partial.matches(Some(ARN), "app/db", "us-west-2"));

        let by_name = SecretChange {
            region: Some("us-west-2".into()),
            secret_id: "app/db".into(),
            event: "RotateSecret",
        };
        assert!(by_name.matches(Some(ARN), "app/db", "us-west-2"));
        assert!(!by_name.matches(Some(ARN), "app/db", "eu-west-1"));
        assert!(!by_name.matches(Some(ARN), "app/other", "us-west-2"));
        let anywhere = SecretChange {
            region: None,
            ..by_name
        };
        assert!(anywhere.matches(None, "app/db", "eu-west-1"));

        assert_eq!(by_arn.arn(), Some(ARN));
        assert_eq!(anywhere.arn(), None);
    }

    #[test]
    fn queue_regions() {
        assert_eq!(
            queue_region("https://sqs.eu-west-1.amazonaws.com/012345678901/rotor"),
            Some("eu-west-1")
        );
        assert_eq!(
            queue_region("https://sqs.cn-north-1.amazonaws.com.cn/012345678901/rotor"),
            Some("cn-north-1")
        );
        assert_eq!(
            queue_region("https://us-east-2.queue.amazonaws.com/012345678901/rotor"),
            Some("us-east-2")
        );
        assert_eq!(queue_region("http://127.0.0.1:5000/123456789012/rotor"), None);
        assert_eq!(queue_region("http://localhost:4566/000000000000/q"), None);
        assert_eq!(queue_region("not a url"), None);
    }
}
