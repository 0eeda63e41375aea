//! A smoke test of the fault-injecting proxy between rotor and moto
//! (hack/aws_proxy.py, driven by `testbed::AwsProxy`): point rotor (or an SDK
//! client) at `AwsProxy::url` instead of the test bed's moto; count the AWS
//! calls it makes and inject errors, throttling, dropped connections,
//! latency, or lost responses after a successful write. Each test starts its
//! own proxy, so counts and faults never leak between tests.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::AwsProxy;

#[tokio::test]
async fn proxy_counts_and_injects_faults() {
    use crate::common::{secrets_manager, testbed, uuid_like};
    use aws_sdk_secretsmanager::config::retry::RetryConfig;
    use aws_sdk_secretsmanager::error::ProvideErrorMetadata;

    let proxy = AwsProxy::start(&testbed().aws_endpoint);
    assert_eq!(proxy.port.to_string(), proxy.url.rsplit(':').next().unwrap());
    assert!(proxy.calls().is_empty());
    // One attempt per call, so each injected fault is seen exactly once.
    let sm = aws_sdk_secretsmanager::Client::from_conf(
        secrets_manager(&proxy.url)
            .config()
            .to_builder()
            .retry_config(RetryConfig::disabled())
            .build(),
    );
    let direct = secrets_manager(&testbed().aws_endpoint);
    let prefix = format!("it/proxy-{}/", &uuid_like()[..8]);
    let (a, b) = (format!("{prefix}a"), format!("{prefix}b"));
    let exists = |name: String| {
        let direct = direct.clone();
        async move { direct.describe_secret().secret_id(name).send().await.is_ok() }
    };
    let counts = |pairs: &[(&str, u64)]| -> BTreeMap<String, u64> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    };

    // Plain forwarding, counted per operation.
    sm.create_secret()
        .name(&a)
        .secret_string("v1")
        .send()
        .await
        .expect("create through the proxy");
    sm.describe_secret().secret_id(&a).send().await.unwrap();
    let want = counts(&[("CreateSecret", 1), ("DescribeSecret", 1)]);
    assert_eq!(proxy.calls(), want);
    assert_eq!(proxy.forwarded(), want);

    // An injected error fails once and never reaches moto.
    proxy.fault("CreateSecret", 1, "error", Some("InternalFailure"));
    let err = sm
        .create_secret()
        .name(&b)
        .secret_string("v1")
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("InternalFailure"));
    assert!(!exists(b.clone()).await, "a faulted call must not reach moto");
    sm.create_secret()
        .name(&b)
        .secret_string("v1")
        .send()
        .await
        .expect("the fault is used up");
    assert_eq!(proxy.calls()["CreateSecret"], 3);
    assert_eq!(proxy.forwarded()["CreateSecret"], 2);

    // Throttling until cleared.
    proxy.fault("DescribeSecret", -1, "throttle", None);
    for _ in 0..2 {
        let err = sm.describe_secret().secret_id(&a).send().await.unwrap_err();
        assert_eq!(err.code(), Some("ThrottlingException"));
    }
    proxy.clear_faults();
    sm.describe_secret().secret_id(&a).send().await.unwrap();

    // `after`: the write happens, the response is lost.
    proxy.fault("PutSecretValue", 1, "after", None);
    let err = sm
        .put_secret_value()
        .secret_id(&a)
        .secret_string("v2")
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("InternalFailure"));
    let value = direct
        .get_secret_value()
        .secret_id(&a)
        .version_stage("AWSCURRENT")
        .send()
        .await
        .unwrap();
    assert_eq!(value.secret_string(), Some("v2"), "`after` forwards the write");

    // A dropped connection is a dispatch failure, not a service error.
    proxy.fault("*", 1, "drop", None);
    let err = sm.list_secrets().send().await.unwrap_err();
    assert!(err.code().is_none(), "expected a connection error, got {err:?}");
    sm.list_secrets().send().await.expect("next call goes through");

    // Latency.
    proxy.fault_spec(json!({"operation": "ListSecrets", "kind": "delay", "seconds": 1}));
    let start = Instant::now();
    sm.list_secrets().send().await.unwrap();
    assert!(start.elapsed() >= Duration::from_secs(1));

    assert_eq!(
        proxy.calls(),
        counts(&[
            ("CreateSecret", 3),
            ("DescribeSecret", 4),
            ("ListSecrets", 3),
            ("PutSecretValue", 1),
        ])
    );
    assert_eq!(
        proxy.forwarded(),
        counts(&[
            ("CreateSecret", 2),
            ("DescribeSecret", 2),
            ("ListSecrets", 2),
            ("PutSecretValue", 1),
        ])
    );

    proxy.fault("*", -1, "error", None);
    proxy.reset();
    assert!(proxy.calls().is_empty() && proxy.forwarded().is_empty());
    sm.describe_secret()
        .secret_id(&a)
        .send()
        .await
        .expect("reset clears faults");

    for name in [a, b] {
        direct
            .delete_secret()
            .secret_id(name)
            .force_delete_without_recovery(true)
            .send()
            .await
            .unwrap();
    }
}
