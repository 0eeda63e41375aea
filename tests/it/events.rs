//! The SQS events consumer against moto's real SQS wire protocol: each test
//! uses its own queue, so it does not disturb tests running beside it.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use rotor::aws::events::{SecretChange, consume};
use rotor::telemetry::Metrics;
use serde_json::json;
use tokio::sync::mpsc;

use crate::common::{REGION, eventually, queue, queued_messages, sqs, testbed, uuid_like};

const ACCOUNT: &str = "123456789012";
const FAKE_SECRET: &str = "hunter2-DoNotLeakMe";

fn secret_arn(name: &str) -> String {
    format!("arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:{name}-AbC123")
}

#[tokio::test]
async fn consumes_changes_and_deletes_every_message() {
    let (sqs, url) = queue("rotor-events").await;
    let put_arn = secret_arn("it/put");
    let rotated_arn = secret_arn("it/rotated");

    let cloudtrail = json!({
        "version": "0", "id": uuid_like(),
        "detail-type": "AWS API Call via CloudTrail", "source": "aws.secretsmanager",
        "account": ACCOUNT, "region": REGION, "resources": [],
        "detail": {
            "eventSource": "secretsmanager.amazonaws.com", "eventName": "PutSecretValue",
            "awsRegion": REGION, "eventType": "AwsApiCall",
            "requestParameters": {"secretId": "it/put", "clientRequestToken": uuid_like()},
            "responseElements": {"arn": put_arn, "versionStages": ["AWSCURRENT"]},
        }
    });
    let service_event = json!({
        "version": "0", "id": uuid_like(),
        "detail-type": "AWS Service Event via CloudTrail", "source": "aws.secretsmanager",
        "account": ACCOUNT, "region": REGION, "resources": [],
        "detail": {
            "eventSource": "secretsmanager.amazonaws.com", "eventName": "RotationSucceeded",
            "awsRegion": REGION, "eventType": "AwsServiceEvent",
            "requestParameters": null, "responseElements": null,
            "additionalEventData": {"SecretId": rotated_arn},
        }
    });
    let sns_wrapped = json!({
        "Type": "Notification", "MessageId": uuid_like(),
        "TopicArn": format!("arn:aws:sns:{REGION}:{ACCOUNT}:rotor-events"),
        "Message": json!({
            "version": "0", "id": uuid_like(),
            "detail-type": "AWS API Call via CloudTrail", "source": "aws.secretsmanager",
            "account": ACCOUNT, "region": REGION, "resources": [],
            "detail": {
                "eventSource": "secretsmanager.amazonaws.com", "eventName": "UpdateSecretVersionStage",
                "awsRegion": REGION,
                "requestParameters": {"secretId": "it/staged", "versionStage": "AWSCURRENT",
                                      "moveToVersionId": uuid_like()},
            }
        }).to_string(),
    });
    let malformed = format!(r#"{{"detail": {{"requestParameters": {{"secretString": "{FAKE_SECRET}""#);
    let irrelevant = json!({
        "version": "0", "id": uuid_like(),
        "detail-type": "AWS API Call via CloudTrail", "source": "aws.secretsmanager",
        "account": ACCOUNT, "region": REGION, "resources": [],
        "detail": {
            "eventSource": "secretsmanager.amazonaws.com", "eventName": "GetSecretValue",
            "awsRegion": REGION, "readOnly": true,
            "requestParameters": {"secretId": put_arn},
        }
    });
    for body in [
        cloudtrail.to_string(),
        service_event.to_string(),
        sns_wrapped.to_string(),
        malformed,
        irrelevant.to_string(),
    ] {
        sqs.send_message()
            .queue_url(&url)
            .message_body(body)
            .send()
            .await
            .expect("send message");
    }
    assert_eq!(queued_messages(&sqs, &url).await, 5);

    let metrics = Arc::new(Metrics::default());
    let (tx, mut rx) = mpsc::channel(16);
    let consumer = tokio::spawn(consume(sqs.clone(), url.clone(), tx, metrics.clone()));

    let mut got = BTreeSet::new();
    while got.len() < 3 {
        let change: SecretChange = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("changes arrive within 10 s")
            .expect("consumer still running");
        got.insert((change.event, change.secret_id, change.region));
    }
    let region = Some(REGION.to_owned());
    let want = BTreeSet::from([
        ("PutSecretValue", put_arn, region.clone()),
        ("RotationSucceeded", rotated_arn, region.clone()),
        ("UpdateSecretVersionStage", "it/staged".to_owned(), region),
    ]);
    assert_eq!(got, want);

    // All five deleted, the malformed and the irrelevant one included.
    eventually("the queue to be empty", Duration::from_secs(10), || async {
        (queued_messages(&sqs, &url).await == 0).then_some(())
    })
    .await;
    // Nothing comes back after the 2 s visibility timeout, so nothing is delivered twice.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(queued_messages(&sqs, &url).await, 0);
    assert!(rx.try_recv().is_err(), "no change beyond the three");

    let m = metrics.encode();
    assert!(
        m.contains(r#"rotor_aws_calls_total{operation="ReceiveMessage",outcome="success"}"#),
        "{m}"
    );
    assert!(
        m.contains(r#"rotor_aws_calls_total{operation="DeleteMessageBatch",outcome="success"}"#),
        "{m}"
    );
    assert!(!m.contains(FAKE_SECRET));

    // Closing the receiver stops the consumer, even in the middle of a long poll.
    drop(rx);
    tokio::time::timeout(Duration::from_secs(5), consumer)
        .await
        .expect("consumer exits once the receiver is closed")
        .expect("consumer does not panic");

    sqs.delete_queue().queue_url(&url).send().await.ok();
}

#[tokio::test]
async fn keeps_going_through_errors_and_stops_when_closed() {
    let sqs = sqs();
    let missing = format!(
        "{}/{ACCOUNT}/rotor-missing-{}",
        testbed().aws_endpoint.trim_end_matches('/'),
        uuid_like()
    );
    let metrics = Arc::new(Metrics::default());
    let (tx, rx) = mpsc::channel(16);
    let consumer = tokio::spawn(consume(sqs, missing, tx, metrics.clone()));

    // Backoff starts at 0.5–1 s, then 1–2 s: at least two failed attempts in 3.5 s.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert!(!consumer.is_finished(), "consumer gave up on an AWS error");
    let m = metrics.encode();
    let failures: u64 = m
        .lines()
        .filter(|l| {
            l.starts_with(r#"rotor_aws_calls_total{operation="ReceiveMessage""#)
                && !l.contains(r#"outcome="success""#)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(failures >= 2, "expected repeated failed receives:\n{m}");

    drop(rx);
    tokio::time::timeout(Duration::from_secs(3), consumer)
        .await
        .expect("consumer exits during its backoff once the receiver is closed")
        .expect("consumer does not panic");
}
