//! Mirroring AWSCURRENT into a Kubernetes Secret, on the real test bed.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

use crate::common::{Env, condition, eventually};

const DB_JSON: &str =
    r#"{"username":"admin","password":"Zq8-wVn3-secret-1","host":"db.example","port":3306}"#;

#[tokio::test]
async fn json_secret_is_mirrored_with_status_and_events() {
    let mut env = Env::new().await;
    let arn = env.create_aws_secret("db", DB_JSON, Some(&env.owner("db"))).await;
    env.start_rotor(&[]);
    env.apply_rs(
        "db",
        json!({"secretsManager": {"name": env.aws_name("db")}, "refreshInterval": "2s"}),
    )
    .await;

    let rs = env.wait_condition("db", "Ready", "True", "Ready").await;
    let status = rs.status.as_ref().unwrap();
    assert_eq!(status.arn.as_deref(), Some(arn.as_str()));
    assert_eq!(status.observed_generation, rs.metadata.generation);
    assert!(status.current_version_id.is_some());
    assert_eq!(status.synced_version_id, status.current_version_id);
    assert!(status.last_sync_time.is_some());
    assert_eq!(condition(&rs, "Synced").unwrap().status, "True");
    assert_eq!(condition(&rs, "SecretReady").unwrap().status, "True");

    let data = env.secret_data("db").await.expect("Secret written");
    assert_eq!(data["username"], "admin");
    assert_eq!(data["password"], "Zq8-wVn3-secret-1");
    assert_eq!(data["port"], "3306");
    assert_eq!(data.len(), 4);

    let secret = env.secret_api().get("db").await.unwrap();
    assert_eq!(secret.type_.as_deref(), Some("Opaque"));
    assert_eq!(
        secret.metadata.annotations.as_ref().unwrap()["rotor.dev/version-id"],
        *status.synced_version_id.as_ref().unwrap()
    );
    let owner = &secret.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(owner.kind, "RotatedSecret");
    assert_eq!(owner.controller, Some(true));
    assert_eq!(Some(&owner.uid), rs.metadata.uid.as_ref());

    eventually("a Synced event", Duration::from_secs(10), || async {
        env.events()
            .await
            .iter()
            .any(|e| e.reason.as_deref() == Some("Synced"))
            .then_some(())
    })
    .await;

    // Deleted by someone: recreated from AWS.
    env.secret_api().delete("db", &Default::default()).await.unwrap();
    eventually("Secret recreated", Duration::from_secs(20), || async {
        env.secret_data("db")
            .await
            .filter(|d| d.get("username").is_some_and(|u| u == "admin"))
    })
    .await;

    env.rotor.as_ref().unwrap().wait_ready().await;
    let metrics = env.rotor.as_ref().unwrap().metrics().await;
    assert!(
        metrics.contains("rotor_aws_calls_total{operation=\"GetSecretValue\",outcome=\"success\"}"),
        "{metrics}"
    );
    assert!(!metrics.contains("Zq8-wVn3"), "secret value in metrics");
    env.assert_no_leak(&["Zq8-wVn3-secret-1"]).await;
}

#[tokio::test]
async fn plain_string_lands_under_value_with_target_options() {
    let mut env = Env::new().await;
    env.create_aws_secret("token", "plain-token-Hx81kq", Some(&env.owner("api-token")))
        .await;
    env.start_rotor(&[]);
    env.apply_rs(
        "api-token",
        json!({
            "secretsManager": {"name": env.aws_name("token")},
            "target": {"name": "token-secret", "labels": {"team": "a"}, "annotations": {"note": "x"}},
        }),
    )
    .await;
    env.wait_condition("api-token", "Ready", "True", "Ready").await;
    let data = env.secret_data("token-secret").await.unwrap();
    assert_eq!(data.len(), 1);
    assert_eq!(data["value"], "plain-token-Hx81kq");
    let s = env.secret_api().get("token-secret").await.unwrap();
    assert_eq!(s.metadata.labels.as_ref().unwrap()["team"], "a");
    assert_eq!(
        s.metadata.labels.as_ref().unwrap()["app.kubernetes.io/managed-by"],
        "rotor"
    );
    assert_eq!(s.metadata.annotations.as_ref().unwrap()["note"], "x");
    env.assert_no_leak(&["plain-token-Hx81kq"]).await;
}

#[tokio::test]
async fn template_renders_and_a_template_error_keeps_the_last_good_secret() {
    let mut env = Env::new().await;
    env.create_aws_secret("db", DB_JSON, Some(&env.owner("db"))).await;
    env.start_rotor(&[]);
    let spec = |template: &str| {
        json!({
            "secretsManager": {"name": env.aws_name("db")},
            "refreshInterval": "2s",
            "target": {"template": {"DATABASE_URL": template}},
        })
    };
    env.apply_rs(
        "db",
        spec("mysql://{{ username }}:{{ password }}@{{ host }}:{{ port }}/app"),
    )
    .await;
    env.wait_condition("db", "Ready", "True", "Ready").await;
    let data = env.secret_data("db").await.unwrap();
    assert_eq!(data.len(), 1);
    assert_eq!(
        data["DATABASE_URL"],
        "mysql://admin:Zq8-wVn3-secret-1@db.example:3306/app"
    );

    // A typo: an undefined variable is an error, not an empty password.
    let rs = env
        .apply_rs("db", spec("mysql://{{ username }}:{{ passwrd }}@{{ host }}"))
        .await;
    let generation = rs.metadata.generation;
    let rs = env
        .wait_rs("db", "Synced=False RenderError at the new generation", |rs| {
            condition(rs, "Synced")
                .is_some_and(|c| c.reason == "RenderError" && c.observed_generation == generation)
        })
        .await;
    let msg = &condition(&rs, "Synced").unwrap().message;
    assert!(msg.contains("DATABASE_URL") && msg.contains("undefined"), "{msg}");
    assert_eq!(condition(&rs, "Ready").unwrap().status, "False");
    assert_eq!(
        env.secret_data("db").await.unwrap()["DATABASE_URL"],
        "mysql://admin:Zq8-wVn3-secret-1@db.example:3306/app",
        "the last good Secret stays"
    );
    eventually("a RenderError warning event", Duration::from_secs(10), || async {
        env.events()
            .await
            .iter()
            .any(|e| e.reason.as_deref() == Some("RenderError") && e.type_.as_deref() == Some("Warning"))
            .then_some(())
    })
    .await;
    env.assert_no_leak(&["Zq8-wVn3-secret-1"]).await;
}

#[tokio::test]
async fn rotation_is_followed_within_the_refresh_interval() {
    let mut env = Env::new().await;
    env.create_aws_secret("db", DB_JSON, Some(&env.owner("db"))).await;
    env.start_rotor(&[]);
    env.apply_rs(
        "db",
        json!({"secretsManager": {"name": env.aws_name("db")}, "refreshInterval": "2s"}),
    )
    .await;
    let first = env.wait_condition("db", "Ready", "True", "Ready").await;
    let v1 = first.status.unwrap().synced_version_id.unwrap();

    let v2 = env
        .rotate(
            "db",
            r#"{"username":"admin","password":"rotated-Pw-77xk","host":"db.example","port":3306}"#,
        )
        .await;
    assert_ne!(v1, v2);
    let rs = env
        .wait_rs("db", "synced to the rotated version", |rs| {
            rs.status.as_ref().and_then(|s| s.synced_version_id.as_deref()) == Some(v2.as_str())
        })
        .await;
    assert_eq!(
        rs.status.as_ref().unwrap().current_version_id.as_deref(),
        Some(v2.as_str())
    );
    assert_eq!(
        env.secret_data("db").await.unwrap()["password"],
        "rotated-Pw-77xk"
    );
    let secret = env.secret_api().get("db").await.unwrap();
    assert_eq!(secret.metadata.annotations.unwrap()["rotor.dev/version-id"], v2);
    env.assert_no_leak(&["Zq8-wVn3-secret-1", "rotated-Pw-77xk"])
        .await;
}

#[tokio::test]
async fn a_secret_owned_by_another_object_is_refused() {
    let mut env = Env::new().await;
    env.create_aws_secret("db", DB_JSON, Some("other-cluster/shop/db"))
        .await;
    env.start_rotor(&[]);
    env.apply_rs(
        "db",
        json!({"secretsManager": {"name": env.aws_name("db"), "adopt": true}}),
    )
    .await;
    let rs = env
        .wait_condition("db", "SecretReady", "False", "OwnedByAnother")
        .await;
    let msg = &condition(&rs, "SecretReady").unwrap().message;
    assert!(msg.contains("other-cluster/shop/db"), "{msg}");
    assert_eq!(condition(&rs, "Ready").unwrap().status, "False");
    assert!(env.secret_data("db").await.is_none(), "nothing written");
    // The tag was not touched.
    let tags = env
        .sm
        .describe_secret()
        .secret_id(env.aws_name("db"))
        .send()
        .await
        .unwrap();
    assert_eq!(tags.tags()[0].value(), Some("other-cluster/shop/db"));
    env.assert_no_leak(&["Zq8-wVn3-secret-1"]).await;
}

#[tokio::test]
async fn an_existing_secret_not_owned_by_rotor_is_never_overwritten() {
    let mut env = Env::new().await;
    env.create_aws_secret("db", DB_JSON, Some(&env.owner("db"))).await;
    let theirs: Secret = serde_json::from_value(json!({
        "metadata": {"name": "db"}, "stringData": {"password": "theirs"},
    }))
    .unwrap();
    env.secret_api()
        .create(&PostParams::default(), &theirs)
        .await
        .unwrap();
    env.start_rotor(&[]);
    env.apply_rs("db", json!({"secretsManager": {"name": env.aws_name("db")}}))
        .await;
    let rs = env
        .wait_condition("db", "Synced", "False", "SecretConflict")
        .await;
    assert!(condition(&rs, "Synced").unwrap().message.contains("target.name"));
    let data = env.secret_data("db").await.unwrap();
    assert_eq!(data.len(), 1);
    assert_eq!(data["password"], "theirs");
}

#[tokio::test]
async fn adoption_needs_the_flag_and_the_operator_policy() {
    let mut env = Env::new().await;
    let arn = env.create_aws_secret("legacy", DB_JSON, None).await;

    // Without adopt: refused.
    env.start_rotor(&[]);
    env.apply_rs(
        "legacy",
        json!({"secretsManager": {"name": env.aws_name("legacy")}}),
    )
    .await;
    env.wait_condition("legacy", "SecretReady", "False", "AdoptionRequired")
        .await;

    // adopt: true, but the operator does not allow it in this namespace.
    env.apply_rs(
        "legacy",
        json!({"secretsManager": {"name": env.aws_name("legacy"), "adopt": true}}),
    )
    .await;
    env.wait_condition("legacy", "SecretReady", "False", "AdoptionNotAllowed")
        .await;
    let desc = env.sm.describe_secret().secret_id(&arn).send().await.unwrap();
    assert!(desc.tags().is_empty(), "not tagged while refused");
    assert!(env.secret_data("legacy").await.is_none());

    // Allowed for this namespace: tagged, then synced.
    let ns = env.ns.clone();
    env.start_rotor(&["--adoption-namespaces", &format!("other,{ns}")]);
    env.wait_condition("legacy", "Ready", "True", "Ready").await;
    let desc = env.sm.describe_secret().secret_id(&arn).send().await.unwrap();
    let owner = desc
        .tags()
        .iter()
        .find(|t| t.key() == Some("rotor.dev/owner"))
        .unwrap();
    assert_eq!(owner.value(), Some(env.owner("legacy").as_str()));
    assert_eq!(env.secret_data("legacy").await.unwrap()["username"], "admin");
}

#[tokio::test]
async fn aws_unreachable_keeps_the_existing_secret() {
    let mut env = Env::new().await;
    env.create_aws_secret("db", DB_JSON, Some(&env.owner("db"))).await;
    env.start_rotor(&[]);
    env.apply_rs(
        "db",
        json!({"secretsManager": {"name": env.aws_name("db")}, "refreshInterval": "2s"}),
    )
    .await;
    env.wait_condition("db", "Ready", "True", "Ready").await;
    let before = env.secret_data("db").await.unwrap();

    // A port nothing listens on: every AWS call fails to connect.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    env.start_rotor_with_endpoint(&[], &dead_url);
    // A spec change forces a re-render, which would need AWS.
    env.apply_rs(
        "db",
        json!({"secretsManager": {"name": env.aws_name("db")}, "refreshInterval": "2s",
               "target": {"labels": {"changed": "yes"}}}),
    )
    .await;
    let rs = env
        .wait_condition("db", "SecretReady", "False", "AwsUnavailable")
        .await;
    assert!(
        condition(&rs, "SecretReady")
            .unwrap()
            .message
            .contains("DescribeSecret")
    );
    // Several retries later, the Secret is still the last good one.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(env.secret_data("db").await.unwrap(), before);
    let logs = env.rotor.as_ref().unwrap().logs();
    assert!(
        logs.matches("reconcile failed").count() >= 2,
        "retried with backoff:\n{logs}"
    );
    env.assert_no_leak(&["Zq8-wVn3-secret-1"]).await;

    // AWS back: converges again.
    env.start_rotor(&[]);
    env.wait_condition("db", "Ready", "True", "Ready").await;
    let s = env.secret_api().get("db").await.unwrap();
    assert_eq!(s.metadata.labels.unwrap()["changed"], "yes");
}

#[tokio::test]
async fn invalid_spec_is_a_condition_that_says_how_to_fix_it() {
    let mut env = Env::new().await;
    env.start_rotor(&[]);
    env.apply_rs(
        "bad",
        json!({"secretsManager": {"name": env.aws_name("x"), "kmsKey": {"id": "k", "alias": "alias/k"}},
               "rollout": {"mode": "Explicit"}}),
    )
    .await;
    let rs = env.wait_condition("bad", "Ready", "False", "InvalidSpec").await;
    let msg = &condition(&rs, "Ready").unwrap().message;
    assert!(msg.contains("kmsKey") && msg.contains("rollout.targets"), "{msg}");
    // Fixing the spec clears it: rotor creates the secret, which has no value yet.
    let _ = env
        .rs_api()
        .patch(
            "bad",
            &PatchParams::apply("rotor-tests").force(),
            &Patch::Apply(&json!({"apiVersion": "rotor.dev/v1alpha1", "kind": "RotatedSecret",
                                  "metadata": {"name": "bad"}, "spec": {"secretsManager": {"name": env.aws_name("x")}}})),
        )
        .await
        .unwrap();
    env.wait_condition("bad", "SecretReady", "True", "Ready").await;
    let rs = env
        .wait_condition("bad", "Synced", "False", "NoCurrentVersion")
        .await;
    assert!(condition(&rs, "Synced").unwrap().message.contains("initialValue"));
}

#[tokio::test]
async fn access_denied_and_throttling_keep_the_secret_and_say_why() {
    let mut env = Env::new().await;
    env.create_aws_secret("db", DB_JSON, Some(&env.owner("db"))).await;
    let proxy = crate::common::AwsProxy::start(&crate::common::testbed().aws_endpoint);
    env.start_rotor_with_endpoint(&[], &proxy.url);
    let spec = |label: &str| {
        json!({"secretsManager": {"name": env.aws_name("db")}, "refreshInterval": "1s",
               "target": {"labels": {"step": label}}})
    };
    env.apply_rs("db", spec("one")).await;
    env.wait_condition("db", "Ready", "True", "Ready").await;
    let before = env.secret_data("db").await.unwrap();

    // IAM takes rotor's permissions away: every call is denied.
    proxy.fault_spec(json!({"operation": "*", "count": -1, "kind": "error",
                            "code": "AccessDeniedException", "status": 400}));
    env.apply_rs("db", spec("two")).await;
    let rs = env
        .wait_condition("db", "SecretReady", "False", "AwsAccessDenied")
        .await;
    assert!(
        condition(&rs, "SecretReady")
            .unwrap()
            .message
            .contains("AccessDeniedException")
    );
    assert_eq!(condition(&rs, "Ready").unwrap().status, "False");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(env.secret_data("db").await.unwrap(), before, "the Secret is kept");

    // Throttling: retried with backoff, the Secret still kept.
    proxy.clear_faults();
    proxy.fault_spec(json!({"operation": "*", "count": -1, "kind": "throttle"}));
    env.apply_rs("db", spec("three")).await;
    env.wait_condition("db", "SecretReady", "False", "AwsThrottled")
        .await;
    assert_eq!(env.secret_data("db").await.unwrap(), before);

    // Permissions back: converges, with the latest spec.
    proxy.clear_faults();
    env.wait_condition("db", "Ready", "True", "Ready").await;
    let s = env.secret_api().get("db").await.unwrap();
    assert_eq!(s.metadata.labels.unwrap()["step"], "three");
    env.assert_no_leak(&["Zq8-wVn3-secret-1"]).await;
}
