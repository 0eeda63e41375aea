//! The hostile-input table: RotatedSecrets written by an attacker or by a
//! careless tenant, all in one namespace under one rotor. Each row must end
//! in a schema rejection or a named condition, create or change nothing it
//! should not in AWS or Kubernetes, leak no value, and leave rotor running
//! and following every other object. A new case is one row.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::common::{AwsProxy, CLUSTER, Env, condition, eventually, keys_owned_by, rotations, testbed};

const LAMBDA: &str = "arn:aws:lambda:us-east-1:123456789012:function:secret-rotation";
const FOREIGN_LAMBDA: &str = "arn:aws:lambda:us-east-1:999999999999:function:exfiltrate";
/// Secret material that must never show up in logs, Events, status or metrics.
const PASSWORD: &str = "Hostile-Pw-9f8e7d";
const PIN: i64 = 987_654_321;

/// What the API server or rotor must answer for one row.
enum Expect {
    /// The schema refuses it with a 422 naming this field; nothing is stored.
    Schema(&'static str),
    /// Condition False with this reason; no AWS secret, no Secret.
    Refused(&'static str, &'static str),
    /// Created in AWS, then the mirror refuses it (condition, reason): no Secret.
    NotMirrored(&'static str, &'static str),
    /// A stage fails (condition, reason) and the Secret is mirrored anyway.
    Mirrored(&'static str, &'static str),
}

use Expect::*;

/// Applies with annotations (rotate-now rows), server-side, as a user would.
async fn apply_with(env: &Env, name: &str, spec: &Value, annotations: &Value) {
    let obj = json!({
        "apiVersion": "rotor.dev/v1alpha1", "kind": "RotatedSecret",
        "metadata": {"name": name, "annotations": annotations}, "spec": spec,
    });
    env.rs_api()
        .patch(
            name,
            &PatchParams::apply("hostile-test").force(),
            &Patch::Apply(&obj),
        )
        .await
        .unwrap_or_else(|e| panic!("{name}: apply: {e}"));
}

async fn aws_secret_exists(env: &Env, name: &str) -> bool {
    match env.describe_error(name).await.as_deref() {
        None => true,
        Some("ResourceNotFoundException") => false,
        Some(code) => panic!("{name}: describe: {code}"),
    }
}

async fn aws_value(env: &Env, name: &str) -> String {
    env.sm
        .get_secret_value()
        .secret_id(env.aws_name(name))
        .send()
        .await
        .unwrap()
        .secret_string()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn hostile_and_mistaken_objects_are_contained() {
    let mut env = Env::new().await;
    let proxy = AwsProxy::start(&testbed().aws_endpoint);
    // The default rotate-now spacing (1h), unlike the other tests.
    env.start_rotor_with_endpoint(&["--rotate-now-min-interval", "1h"], &proxy.url);

    // Pre-existing things a tenant might try to take over.
    let foreign_owner = format!("{CLUSTER}/elsewhere/victim");
    env.create_aws_secret("c-owned-by-another", "victim-value-Vv1", Some(&foreign_owner))
        .await;
    env.create_aws_secret("c-untagged-no-adopt", "untagged-value-Uu2", None)
        .await;
    env.create_aws_secret("c-adopt-not-allowed", "untagged-value-Uu3", None)
        .await;
    let unowned = serde_json::from_value::<Secret>(json!({
        "metadata": {"name": "c-secret-conflict"}, "stringData": {"app": "theirs"}
    }))
    .unwrap();
    env.secret_api()
        .create(&PostParams::default(), &unowned)
        .await
        .unwrap();

    let canary = env
        .apply_ready(
            "canary",
            json!({"secretsManager": {"name": env.aws_name("canary"), "initialValue": {"string": "canary-1"}},
               "refreshInterval": "1s"}),
        )
        .await;
    assert!(canary.status.unwrap().arn.is_some());

    let base = |name: &str| {
        json!({
            "secretsManager": {"name": env.aws_name(name), "initialValue": {"template": {
                "username": "u", "password": PASSWORD, "pin": PIN}}},
            "refreshInterval": "1s",
        })
    };
    let spec = |name: &str, patch: Value| {
        let mut s = base(name);
        testbed::merge_json(&mut s, patch);
        s
    };
    let rotation = json!({"rotation": {"lambdaArn": LAMBDA, "schedule": "rate(7 days)"}});
    let big = "y".repeat(30_000);
    let long_name: String = ["a".repeat(60), "b".repeat(60), "c".repeat(60), "d".repeat(60)].join(".");
    let many =
        |n: usize, f: &dyn Fn(usize) -> (String, Value)| -> Value { Value::Object((0..n).map(f).collect()) };
    let none = json!({});

    // (object, spec, annotations, expectation)
    let rows: Vec<(String, Value, Value, Expect)> = vec![
        // -- Refused by the schema: bounded strings, lists and maps, patterns, enums, ranges.
        (
            "s-refresh-days".into(),
            spec("s-refresh-days", json!({"refreshInterval": "1d"})),
            none.clone(),
            Schema("spec.refreshInterval"),
        ),
        (
            "s-name-chars".into(),
            spec("s-name-chars", json!({"secretsManager": {"name": "a b"}})),
            none.clone(),
            Schema("spec.secretsManager.name"),
        ),
        (
            "s-name-long".into(),
            spec(
                "s-name-long",
                json!({"secretsManager": {"name": "a".repeat(600)}}),
            ),
            none.clone(),
            Schema("spec.secretsManager.name"),
        ),
        (
            "s-template-long".into(),
            spec(
                "s-template-long",
                json!({"target": {"template": {"k": "x".repeat(20_000)}}}),
            ),
            none.clone(),
            Schema("spec.target.template"),
        ),
        (
            "s-many-tags".into(),
            spec(
                "s-many-tags",
                json!({"secretsManager": {"tags": many(50, &|i| (format!("t{i}"), json!("v")))}}),
            ),
            none.clone(),
            Schema("spec.secretsManager.tags"),
        ),
        (
            "s-description-long".into(),
            spec(
                "s-description-long",
                json!({"secretsManager": {"description": "d".repeat(3000)}}),
            ),
            none.clone(),
            Schema("spec.secretsManager.description"),
        ),
        (
            "s-many-replicas".into(),
            spec(
                "s-many-replicas",
                json!({"secretsManager": {"replicaRegions": (0..65).map(|i| json!({"region": format!("eu-west-{i}")})).collect::<Vec<_>>()}}),
            ),
            none.clone(),
            Schema("spec.secretsManager.replicaRegions"),
        ),
        (
            "s-mode".into(),
            spec("s-mode", json!({"rollout": {"mode": "Sometimes"}})),
            none.clone(),
            Schema("spec.rollout.mode"),
        ),
        (
            "s-length".into(),
            spec(
                "s-length",
                json!({"secretsManager": {"initialValue": {"generate": [{"key": "p", "length": 5000}]}}}),
            ),
            none.clone(),
            Schema("length"),
        ),
        (
            "s-lambda".into(),
            spec(
                "s-lambda",
                json!({"rotation": {"lambdaArn": "arn:aws:lambda:us-east-1:123456789012:function:x y", "schedule": "rate(7 days)"}}),
            ),
            none.clone(),
            Schema("spec.rotation.lambdaArn"),
        ),
        (
            "s-region".into(),
            spec("s-region", json!({"secretsManager": {"region": "moon-1"}})),
            none.clone(),
            Schema("spec.secretsManager.region"),
        ),
        (
            "s-target-name".into(),
            spec("s-target-name", json!({"target": {"name": "UPPER"}})),
            none.clone(),
            Schema("spec.target.name"),
        ),
        (
            "s-label-long".into(),
            spec(
                "s-label-long",
                json!({"target": {"labels": {"a": "x".repeat(5000)}}}),
            ),
            none.clone(),
            Schema("spec.target.labels"),
        ),
        (
            "s-many-template-keys".into(),
            spec(
                "s-many-template-keys",
                json!({"target": {"template": many(65, &|i| (format!("k{i}"), json!("{{ username }}")))}}),
            ),
            none.clone(),
            Schema("spec.target.template"),
        ),
        (
            "s-exclude-long".into(),
            spec(
                "s-exclude-long",
                json!({"secretsManager": {"initialValue": {"generate": [{"key": "p", "excludeCharacters": "x".repeat(5000)}]}}}),
            ),
            none.clone(),
            Schema("excludeCharacters"),
        ),
        (
            "s-window".into(),
            spec(
                "s-window",
                json!({"rotation": {"lambdaArn": LAMBDA, "schedule": "rate(7 days)", "window": "25h"}}),
            ),
            none.clone(),
            Schema("spec.rotation.window"),
        ),
        // -- Refused by rotor before any AWS write: numbers, types, reserved keys, limits.
        (
            "r-refresh-overflow".into(),
            spec(
                "r-refresh-overflow",
                json!({"refreshInterval": "20000000000000000000s"}),
            ),
            none.clone(),
            Refused("Ready", "InvalidSpec"),
        ),
        (
            "r-refresh-overflow-later".into(),
            spec(
                "r-refresh-overflow-later",
                json!({"refreshInterval": "4000000000000000000s"}),
            ),
            none.clone(),
            Refused("Ready", "InvalidSpec"),
        ),
        (
            "r-refresh-25h".into(),
            spec("r-refresh-25h", json!({"refreshInterval": "25h"})),
            none.clone(),
            Refused("Ready", "InvalidSpec"),
        ),
        (
            "r-rate-overflow".into(),
            spec(
                "r-rate-overflow",
                json!({"rotation": {"lambdaArn": LAMBDA, "schedule": "rate(18446744073709551615 hours)"}}),
            ),
            none.clone(),
            Refused("Ready", "InvalidSpec"),
        ),
        (
            "r-cron-hour-30".into(),
            spec(
                "r-cron-hour-30",
                json!({"rotation": {"lambdaArn": LAMBDA, "schedule": "cron(0 1,30 * * ? *)"}}),
            ),
            none.clone(),
            Refused("Ready", "InvalidSpec"),
        ),
        (
            "r-rate-2h".into(),
            spec(
                "r-rate-2h",
                json!({"rotation": {"lambdaArn": LAMBDA, "schedule": "rate(2 hours)"}}),
            ),
            none.clone(),
            Refused("Ready", "InvalidSpec"),
        ),
        (
            "r-type-sa-token".into(),
            spec(
                "r-type-sa-token",
                json!({"target": {"type": "kubernetes.io/service-account-token"}}),
            ),
            none.clone(),
            Refused("Ready", "InvalidSpec"),
        ),
        (
            "r-type-helm".into(),
            spec("r-type-helm", json!({"target": {"type": "helm.sh/release.v1"}})),
            none.clone(),
            Refused("Ready", "InvalidSpec"),
        ),
        (
            "r-label-helm-owner".into(),
            spec(
                "r-label-helm-owner",
                json!({"target": {"labels": {"owner": "helm", "name": "app", "status": "deployed"}}}),
            ),
            none.clone(),
            Refused("Ready", "InvalidSpec"),
        ),
        (
            "r-annotation-sa".into(),
            spec(
                "r-annotation-sa",
                json!({"target": {"annotations": {"kubernetes.io/service-account.name": "default"}}}),
            ),
            none.clone(),
            Refused("Ready", "InvalidSpec"),
        ),
        (
            "r-label-rotor".into(),
            spec(
                "r-label-rotor",
                json!({"target": {"labels": {"rotor.dev/version-id": "x"}}}),
            ),
            none.clone(),
            Refused("Ready", "InvalidSpec"),
        ),
        (
            "r-tag-aws".into(),
            spec(
                "r-tag-aws",
                json!({"secretsManager": {"tags": {"aws:cloudformation:stack-name": "x"}}}),
            ),
            none.clone(),
            Refused("Ready", "InvalidSpec"),
        ),
        (
            "r-tag-owner".into(),
            spec(
                "r-tag-owner",
                json!({"secretsManager": {"tags": {"rotor.dev/owner": format!("{CLUSTER}/other/x")}}}),
            ),
            none.clone(),
            Refused("Ready", "InvalidSpec"),
        ),
        (
            "r-tag-value-long".into(),
            spec(
                "r-tag-value-long",
                json!({"secretsManager": {"tags": {"k": "v".repeat(300)}}}),
            ),
            none.clone(),
            Refused("Ready", "InvalidSpec"),
        ),
        (
            "r-tag-key-chars".into(),
            spec(
                "r-tag-key-chars",
                json!({"secretsManager": {"tags": {"a*b": "x"}}}),
            ),
            none.clone(),
            Refused("Ready", "InvalidSpec"),
        ),
        (
            "r-alias-aws".into(),
            spec(
                "r-alias-aws",
                json!({"secretsManager": {"kmsKey": {"alias": "alias/aws/hostile", "create": true}}}),
            ),
            none.clone(),
            Refused("Ready", "InvalidSpec"),
        ),
        (
            "r-key-id-garbage".into(),
            spec(
                "r-key-id-garbage",
                json!({"secretsManager": {"kmsKey": {"id": "not a key!"}}}),
            ),
            none.clone(),
            Refused("Ready", "InvalidSpec"),
        ),
        (
            "r-replica-key".into(),
            spec(
                "r-replica-key",
                json!({"secretsManager": {"replicaRegions": [{"region": "us-west-2", "kmsKeyId": "bad key"}]}}),
            ),
            none.clone(),
            Refused("Ready", "InvalidSpec"),
        ),
        (
            "s-allow-key-removal".into(),
            spec(
                "s-allow-key-removal",
                json!({"target": {"allowKeyRemoval": "yes"}}),
            ),
            none.clone(),
            Schema("spec.target.allowKeyRemoval"),
        ),
        (
            "s-type-empty".into(),
            spec("s-type-empty", json!({"target": {"type": ""}})),
            none.clone(),
            Schema("spec.target.type"),
        ),
        (
            "w-rotate-now-empty".into(),
            spec("w-rotate-now-empty", rotation.clone()),
            json!({"rotor.dev/rotate-now": ""}),
            Mirrored("RotationConfigured", "InvalidRotateNowToken"),
        ),
        (
            "r-replica-key-foreign".into(),
            spec(
                "r-replica-key-foreign",
                json!({"secretsManager": {"replicaRegions": [{"region": "us-west-2",
                    "kmsKeyId": "arn:aws:kms:us-west-2:999999999999:key/1234abcd-12ab-34cd-56ef-1234567890ab"}]}}),
            ),
            none.clone(),
            Refused("Ready", "InvalidSpec"),
        ),
        (
            "r-replica-home".into(),
            spec(
                "r-replica-home",
                json!({"secretsManager": {"replicaRegions": [{"region": "us-east-1"}]}}),
            ),
            none.clone(),
            Refused("Ready", "InvalidSpec"),
        ),
        (
            "r-template-star".into(),
            spec(
                "r-template-star",
                json!({"target": {"template": {"K": "{{ 'x' * 100000000 }}"}}}),
            ),
            none.clone(),
            Refused("Ready", "InvalidSpec"),
        ),
        (
            "r-template-list-star".into(),
            spec(
                "r-template-list-star",
                json!({"target": {"template": {"K": "{{ [password] * 100000000 | join }}"}}}),
            ),
            none.clone(),
            Refused("Ready", "InvalidSpec"),
        ),
        (
            "r-template-syntax".into(),
            spec(
                "r-template-syntax",
                json!({"target": {"template": {"K": "{{ password "}}}),
            ),
            none.clone(),
            Refused("Ready", "InvalidSpec"),
        ),
        (
            "r-initial-huge".into(),
            spec(
                "r-initial-huge",
                json!({"secretsManager": {"initialValue": {"template": {"blob": "x".repeat(70_000)}}}}),
            ),
            none.clone(),
            Refused("Ready", "InvalidSpec"),
        ),
        (
            "r-policy-huge".into(),
            spec(
                "r-policy-huge",
                json!({"secretsManager": {"resourcePolicy": {"Version": "2012-10-17", "Statement": [{"Sid": "s".repeat(25_000), "Effect": "Deny", "Principal": "*", "Action": "*", "Resource": "*"}]}}}),
            ),
            none.clone(),
            Refused("Ready", "InvalidSpec"),
        ),
        (
            "r-policy-public".into(),
            spec(
                "r-policy-public",
                json!({"secretsManager": {"resourcePolicy": {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "secretsmanager:GetSecretValue", "Resource": "*"}]}}}),
            ),
            none.clone(),
            Refused("Ready", "InvalidSpec"),
        ),
        (
            long_name.clone(),
            spec(&long_name, json!({})),
            none.clone(),
            Refused("Ready", "InvalidSpec"),
        ),
        // -- Created, then the mirror refuses to render: errors carry no value.
        (
            "m-div-zero".into(),
            spec(
                "m-div-zero",
                json!({"target": {"template": {"K": "{{ pin // 0 }}"}}}),
            ),
            none.clone(),
            NotMirrored("Synced", "RenderError"),
        ),
        (
            "m-loop-leak".into(),
            spec(
                "m-loop-leak",
                json!({"target": {"template": {"K": "{% for c in password %}{{ c ~ password ~ (c // 0) }}{% endfor %}"}}}),
            ),
            none.clone(),
            NotMirrored("Synced", "RenderError"),
        ),
        (
            "m-center".into(),
            spec(
                "m-center",
                json!({"target": {"template": {"K": "{{ password | center(100000000) }}"}}}),
            ),
            none.clone(),
            NotMirrored("Synced", "RenderError"),
        ),
        (
            "m-range".into(),
            spec(
                "m-range",
                json!({"target": {"template": {"K": "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}"}}}),
            ),
            none.clone(),
            NotMirrored("Synced", "RenderError"),
        ),
        (
            "m-fuel".into(),
            spec(
                "m-fuel",
                json!({"secretsManager": {"initialValue": {"template": {"big": big}}}, "target": {"template": {"K": "{% for a in big %}{% for b in big %}{% endfor %}{% endfor %}"}}}),
            ),
            none.clone(),
            NotMirrored("Synced", "RenderError"),
        ),
        (
            "m-undefined".into(),
            spec(
                "m-undefined",
                json!({"target": {"template": {"K": "{{ nope }}"}}}),
            ),
            none.clone(),
            NotMirrored("Synced", "RenderError"),
        ),
        (
            "m-replace-bomb".into(),
            spec(
                "m-replace-bomb",
                json!({"target": {"template": {"K": "{{ password | replace('', password | replace('', password | replace('', password | replace('', password)))) }}"}}}),
            ),
            none.clone(),
            NotMirrored("Synced", "RenderError"),
        ),
        (
            "m-output-huge".into(),
            spec(
                "m-output-huge",
                json!({"secretsManager": {"initialValue": {"template": {"big": "z".repeat(60_000)}}}, "target": {"template": {"K": "{{ big }}{{ big }}{{ big }}{{ big }}{{ big }}"}}}),
            ),
            none.clone(),
            NotMirrored("Synced", "RenderError"),
        ),
        // -- A stage fails, the mirror goes on.
        (
            "w-lambda-foreign".into(),
            spec(
                "w-lambda-foreign",
                json!({"rotation": {"lambdaArn": FOREIGN_LAMBDA, "schedule": "rate(7 days)"}}),
            ),
            none.clone(),
            Mirrored("RotationConfigured", "LambdaNotAllowed"),
        ),
        (
            "w-rotate-now-no-rotation".into(),
            spec("w-rotate-now-no-rotation", json!({})),
            json!({"rotor.dev/rotate-now": "now"}),
            Mirrored("RotationConfigured", "RotateNowWithoutRotation"),
        ),
        (
            // 100 KB of another tool's annotation next to rotor's: not held
            // in rotor's cache, and rotate-now is still read (and refused).
            "w-rotate-now-bulky-annotations".into(),
            spec("w-rotate-now-bulky-annotations", rotation.clone()),
            json!({"rotor.dev/rotate-now": "", "team.example/notes": "n".repeat(100_000)}),
            Mirrored("RotationConfigured", "InvalidRotateNowToken"),
        ),
        (
            "w-rotate-now-long".into(),
            spec("w-rotate-now-long", rotation.clone()),
            json!({"rotor.dev/rotate-now": "t".repeat(300)}),
            Mirrored("RotationConfigured", "InvalidRotateNowToken"),
        ),
        // -- Someone else's things. The sweep lists the victim's secret too
        // (same cluster): a listing is only ever used for the object whose
        // owner tag it carries, so this object still describes it and is refused.
        (
            "c-owned-by-another".into(),
            spec("c-owned-by-another", json!({})),
            none.clone(),
            Refused("SecretReady", "OwnedByAnother"),
        ),
        (
            "c-untagged-no-adopt".into(),
            spec("c-untagged-no-adopt", json!({})),
            none.clone(),
            Refused("SecretReady", "AdoptionRequired"),
        ),
        (
            "c-adopt-not-allowed".into(),
            spec("c-adopt-not-allowed", json!({"secretsManager": {"adopt": true}})),
            none.clone(),
            Refused("SecretReady", "AdoptionNotAllowed"),
        ),
        (
            "c-secret-conflict".into(),
            spec("c-secret-conflict", json!({})),
            none.clone(),
            NotMirrored("Synced", "SecretConflict"),
        ),
    ];
    assert!(rows.len() >= 40, "{} rows", rows.len());

    for (name, spec, annotations, expect) in &rows {
        match expect {
            Schema(field) => env.expect_schema_rejection(name, spec, field).await,
            _ => apply_with(&env, name, spec, annotations).await,
        }
    }
    for (name, _, _, expect) in &rows {
        let (type_, reason) = match expect {
            Schema(_) => continue,
            Refused(t, r) | NotMirrored(t, r) | Mirrored(t, r) => (*t, *r),
        };
        let rs = env.wait_condition(name, type_, "False", reason).await;
        let ready = condition(&rs, "Ready").unwrap();
        assert_eq!(ready.status, "False", "{name}: Ready says something is wrong");
        let secret = env.secret_data(name).await;
        match expect {
            Refused(..) => {
                let pre_existing = name.starts_with("c-");
                assert_eq!(
                    aws_secret_exists(&env, name).await,
                    pre_existing,
                    "{name}: nothing created in AWS"
                );
                assert!(secret.is_none(), "{name}: no Secret");
            }
            NotMirrored(..) => {
                assert!(aws_secret_exists(&env, name).await, "{name}: created in AWS");
                if name != "c-secret-conflict" {
                    assert!(secret.is_none(), "{name}: no Secret");
                }
            }
            Mirrored(..) => {
                let rs = env.wait_condition(name, "Synced", "True", "Synced").await;
                assert!(rs.status.unwrap().synced_version_id.is_some(), "{name}");
                let data = env.secret_data(name).await.expect("mirrored anyway");
                assert_eq!(data.get("password").map(String::as_str), Some(PASSWORD), "{name}");
            }
            Schema(_) => unreachable!(),
        }
    }

    // Nothing of anyone else's changed.
    assert_eq!(aws_value(&env, "c-owned-by-another").await, "victim-value-Vv1");
    assert_eq!(aws_value(&env, "c-untagged-no-adopt").await, "untagged-value-Uu2");
    let conflict = env.secret_data("c-secret-conflict").await.unwrap();
    assert_eq!(
        conflict,
        [("app".to_owned(), "theirs".to_owned())].into(),
        "their Secret untouched"
    );
    assert!(
        keys_owned_by(&env.owner("r-alias-aws")).await.is_empty(),
        "no key for a refused object"
    );
    let victim = env
        .sm
        .describe_secret()
        .secret_id(env.aws_name("c-owned-by-another"))
        .send()
        .await
        .unwrap();
    assert!(
        victim
            .tags()
            .iter()
            .any(|t| t.key() == Some("rotor.dev/owner") && t.value() == Some(foreign_owner.as_str())),
        "the victim keeps its owner"
    );

    // A failing stage never freezes the mirror: break three working objects
    // in three ways, rotate their AWS secrets, and the Secrets follow.
    let freeze = ["f-schedule", "f-tag", "f-rotate-now"];
    for name in freeze {
        env.apply_ready(name, spec(name, rotation.clone())).await;
    }
    env.merge_spec("f-schedule", json!({"rotation": {"schedule": "rate(2 hours)"}}))
        .await;
    proxy.fault_spec(json!({"operation": "TagResource", "count": -1, "kind": "error",
                            "code": "ValidationException", "status": 400}));
    env.merge_spec(
        "f-tag",
        json!({"secretsManager": {"tags": {"team": "refused-by-aws"}}}),
    )
    .await;
    env.merge_spec("f-rotate-now", json!({"rotation": null})).await;
    env.annotate("f-rotate-now", "rotor.dev/rotate-now", "please")
        .await;
    env.wait_condition("f-schedule", "Ready", "False", "InvalidSpec")
        .await;
    env.wait_rs("f-tag", "SecretReady=False", |rs| {
        condition(rs, "SecretReady").is_some_and(|c| c.status == "False")
    })
    .await;
    env.wait_condition(
        "f-rotate-now",
        "RotationConfigured",
        "False",
        "RotateNowWithoutRotation",
    )
    .await;
    for name in freeze {
        let value = format!("{{\"username\": \"u\", \"password\": \"{PASSWORD}-{name}\", \"pin\": {PIN}}}");
        let version = env.rotate(name, &value).await;
        let rs = env
            .wait_rs(name, "the Secret follows the rotation", |rs| {
                rs.status.as_ref().and_then(|s| s.synced_version_id.as_deref()) == Some(version.as_str())
            })
            .await;
        assert_eq!(condition(&rs, "Synced").unwrap().status, "True", "{name}");
        assert_eq!(
            condition(&rs, "Ready").unwrap().status,
            "False",
            "{name}: still says what is wrong"
        );
        let data = env.secret_data(name).await.unwrap();
        assert_eq!(data["password"], format!("{PASSWORD}-{name}"), "{name}");
    }
    proxy.clear_faults();

    // rotate-now cannot be looped: a second token within the spacing waits.
    let spaced = env
        .apply_ready("spacing", spec("spacing", rotation.clone()))
        .await;
    let arn = spaced.status.unwrap().arn.unwrap();
    env.annotate("spacing", "rotor.dev/rotate-now", "a").await;
    env.wait_rs("spacing", "token a handled", |rs| {
        rs.status.as_ref().and_then(|s| s.rotate_now_token.as_deref()) == Some("a")
    })
    .await;
    env.annotate("spacing", "rotor.dev/rotate-now", "b").await;
    env.wait_condition("spacing", "RotationConfigured", "False", "RotateNowTooSoon")
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(rotations(&arn), 1, "one rotation, not two");

    // A value whose shape changes (JSON object to plain string) does not
    // silently drop the Secret's keys: the last good Secret stays until the
    // spec accepts the new shape.
    env.apply_ready("k-shape", spec("k-shape", json!({}))).await;
    let reshaped = env.rotate("k-shape", "now-a-plain-string").await;
    let rs = env
        .wait_condition("k-shape", "Synced", "False", "KeysRemoved")
        .await;
    assert!(condition(&rs, "Synced").unwrap().message.contains("password"));
    assert_eq!(
        env.secret_data("k-shape").await.unwrap()["password"],
        PASSWORD,
        "the last good Secret stays"
    );
    env.merge_spec("k-shape", json!({"target": {"allowKeyRemoval": true}}))
        .await;
    env.wait_rs("k-shape", "the new shape accepted", |rs| {
        rs.status.as_ref().and_then(|s| s.synced_version_id.as_deref()) == Some(reshaped.as_str())
    })
    .await;
    let data = env.secret_data("k-shape").await.unwrap();
    assert_eq!(data.keys().collect::<Vec<_>>(), ["value"]);

    // rotor is still running and still following the canary.
    let version = env.rotate("canary", "canary-2").await;
    env.wait_rs("canary", "canary follows", |rs| {
        rs.status.as_ref().and_then(|s| s.synced_version_id.as_deref()) == Some(version.as_str())
    })
    .await;
    assert_eq!(env.secret_data("canary").await.unwrap()["value"], "canary-2");
    let rotor = env.rotor.as_mut().unwrap();
    assert!(rotor.is_running(), "rotor is still running");
    let metrics = rotor.metrics().await;
    assert!(
        metrics.contains("rotor_reconcile_panics_total 0"),
        "no panics:\n{metrics}"
    );
    for value in [PASSWORD, &PIN.to_string()] {
        assert!(!metrics.contains(value), "{value} in metrics");
    }
    env.assert_no_leak(&[
        PASSWORD,
        &PIN.to_string(),
        "victim-value-Vv1",
        "untagged-value-Uu2",
    ])
    .await;
}

/// One object naming a region that fails (a typo, a disabled opt-in region)
/// must not move every other object off the cheap sweep onto per-object
/// DescribeSecret polling: sweep health is kept per region.
#[tokio::test]
async fn a_failing_region_does_not_slow_the_others() {
    let mut env = Env::new().await;
    let proxy = AwsProxy::start(&testbed().aws_endpoint);
    env.start_rotor_with_endpoint(&[], &proxy.url);
    let home = env
        .apply_ready(
            "home",
            json!({"secretsManager": {"name": env.aws_name("home"), "initialValue": {"string": "home-1"}},
               "refreshInterval": "1s"}),
        )
        .await;
    assert!(home.status.unwrap().arn.is_some());
    proxy.fault_spec(
        json!({"operation": "*", "region": "ap-southeast-4", "count": -1, "kind": "error",
                            "code": "InternalFailure", "status": 500}),
    );
    env.apply_rs(
        "far",
        json!({"secretsManager": {"name": env.aws_name("far"), "region": "ap-southeast-4",
                                  "initialValue": {"string": "far-1"}},
               "refreshInterval": "1s"}),
    )
    .await;
    env.wait_rs("far", "far fails", |rs| {
        condition(rs, "Ready").is_some_and(|c| c.status == "False")
    })
    .await;
    // Let the failing region's sweeps accumulate, then count one window.
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Touch home every second: each reconcile must take the sweep's view,
    // not ask AWS.
    let before = proxy.calls_by_region();
    for touch in 0..8 {
        env.annotate("home", "test/touch", &touch.to_string()).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let after = proxy.calls_by_region();
    let delta = |key: &str| after.get(key).copied().unwrap_or(0) - before.get(key).copied().unwrap_or(0);
    assert!(
        delta("ap-southeast-4/ListSecrets") >= 2,
        "the far region is swept (and fails): {after:?}"
    );
    assert!(
        delta("us-east-1/ListSecrets") >= 4,
        "the home region is swept: {after:?}"
    );
    assert_eq!(
        delta("us-east-1/DescribeSecret"),
        0,
        "home stays on the sweep, no per-object polling: {before:?} -> {after:?}"
    );
    // And home still follows its rotations.
    let version = env.rotate("home", "home-2").await;
    env.wait_rs("home", "home follows", |rs| {
        rs.status.as_ref().and_then(|s| s.synced_version_id.as_deref()) == Some(version.as_str())
    })
    .await;
}

/// With about a fifth of all AWS calls failing (throttling, 500s, dropped
/// connections, 2 s delays), a fleet still converges, follows every rotation
/// and rolls each consumer exactly once per rotation, never removes or blanks
/// a Secret applications use, and makes no duplicate secret or key.
#[tokio::test]
async fn a_fifth_of_aws_calls_failing_loses_nothing() {
    use k8s_openapi::api::apps::v1::Deployment;
    use std::sync::{Arc, Mutex};

    const N: usize = 20;
    let mut env = Env::new().await;
    let proxy = AwsProxy::start(&testbed().aws_endpoint);
    // Four rules at 5.6% each, tried in turn: 1 - 0.944^4 = 20% of all calls.
    for kind in ["throttle", "error", "drop", "delay"] {
        let mut rule = json!({"operation": "*", "count": -1, "kind": kind, "probability": 0.056});
        if kind == "delay" {
            rule["seconds"] = json!(2);
        }
        proxy.fault_spec(rule);
    }
    env.start_rotor_with_endpoint(&["--aws-write-rate", "50"], &proxy.url);

    let prefix = env.prefix.clone();
    let aliases: Vec<String> = (0..4)
        .map(|i| format!("alias/{}-k{i}", prefix.trim_end_matches('/').replace('/', "-")))
        .collect();
    let deployments: kube::Api<Deployment> = kube::Api::namespaced(env.client.clone(), &env.ns);
    for i in 0..N {
        let deployment: Deployment = serde_json::from_value(json!({
            "metadata": {"name": format!("d{i}")},
            "spec": {"selector": {"matchLabels": {"app": format!("d{i}")}}, "template": {
                "metadata": {"labels": {"app": format!("d{i}")}},
                "spec": {"containers": [{"name": "app", "image": "busybox",
                                         "envFrom": [{"secretRef": {"name": format!("f{i}")}}]}]}}},
        }))
        .unwrap();
        deployments
            .create(&PostParams::default(), &deployment)
            .await
            .unwrap();
    }

    // Watch every Secret for the whole run: once there, never gone or blank.
    let violations = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (secrets, violations, stop) = (env.secret_api(), violations.clone(), stop.clone());
        tokio::spawn(async move {
            let mut seen = std::collections::BTreeSet::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let list = secrets
                    .list(&kube::api::ListParams::default().labels("app.kubernetes.io/managed-by=rotor"))
                    .await
                    .unwrap();
                let mut present = std::collections::BTreeSet::new();
                for s in list.items {
                    let name = s.metadata.name.clone().unwrap();
                    let password = s.data.as_ref().and_then(|d| d.get("password")).map(|v| v.0.len());
                    if password.unwrap_or(0) == 0 {
                        violations.lock().unwrap().push(format!("{name}: blank"));
                    }
                    present.insert(name);
                }
                for name in seen.difference(&present) {
                    violations.lock().unwrap().push(format!("{name}: missing"));
                }
                seen.extend(present);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    for i in 0..N {
        env.apply_rs(
            &format!("f{i}"),
            json!({
                "secretsManager": {"name": format!("{prefix}f{i}"),
                                   "kmsKey": {"alias": aliases[i % 4], "create": true},
                                   "initialValue": {"template": {"username": "app"},
                                                    "generate": [{"key": "password", "length": 24}]}},
                "refreshInterval": "1s",
            }),
        )
        .await;
    }
    let rs_api = env.rs_api();
    eventually(
        "every object Ready despite the faults",
        Duration::from_secs(240),
        || async {
            let list = rs_api.list(&Default::default()).await.ok()?;
            let ready = list
                .items
                .iter()
                .filter(|rs| condition(rs, "Ready").is_some_and(|c| c.status == "True"))
                .count();
            (ready == N).then_some(())
        },
    )
    .await;

    for round in 1..=2 {
        let mut versions = Vec::new();
        for i in 0..N {
            let value = json!({"username": "app", "password": format!("round{round}-f{i}-Pw")}).to_string();
            versions.push(env.rotate(&format!("f{i}"), &value).await);
        }
        let (deployments, secrets) = (&deployments, env.secret_api());
        eventually(
            &format!("round {round} mirrored and rolled"),
            Duration::from_secs(240),
            || {
                let (versions, secrets) = (versions.clone(), secrets.clone());
                async move {
                    for (i, version) in versions.iter().enumerate() {
                        let secret = secrets.get(&format!("f{i}")).await.ok()?;
                        let held = secret
                            .metadata
                            .annotations
                            .as_ref()?
                            .get("rotor.dev/version-id")?;
                        let d = deployments.get(&format!("d{i}")).await.ok()?;
                        let rolled = d
                            .spec?
                            .template
                            .metadata?
                            .annotations?
                            .get(&format!("rotor.dev/f{i}"))
                            .cloned();
                        if held != version || rolled.as_deref() != Some(version.as_str()) {
                            return None;
                        }
                    }
                    Some(())
                }
            },
        )
        .await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    watcher.await.unwrap();

    // Exactly one pod-template change per rotation: created (1), two rounds (3).
    for i in 0..N {
        let d = deployments.get(&format!("d{i}")).await.unwrap();
        assert_eq!(d.metadata.generation, Some(3), "d{i} rolled once per rotation");
        let data = env.secret_data(&format!("f{i}")).await.unwrap();
        assert_eq!(data["password"], format!("round2-f{i}-Pw"));
    }
    let violations = violations.lock().unwrap().clone();
    assert!(violations.is_empty(), "{violations:?}");
    // No duplicates in AWS: one secret per object, one live key per alias.
    let mut names = Vec::new();
    let mut token = None;
    loop {
        let page = env
            .sm
            .list_secrets()
            .filters(
                aws_sdk_secretsmanager::types::Filter::builder()
                    .key(aws_sdk_secretsmanager::types::FilterNameStringType::Name)
                    .values(format!("{prefix}f"))
                    .build(),
            )
            .set_next_token(token)
            .send()
            .await
            .unwrap();
        names.extend(
            page.secret_list()
                .iter()
                .filter_map(|s| s.name().map(str::to_owned)),
        );
        token = page.next_token().map(str::to_owned);
        if token.is_none() {
            break;
        }
    }
    assert_eq!(names.len(), N, "one AWS secret per object: {names:?}");
    let kms = crate::common::kms();
    let mut live = 0;
    for i in 0..N {
        for key in keys_owned_by(&env.owner(&format!("f{i}"))).await {
            let state = kms.describe_key().key_id(&key).send().await.unwrap();
            if state
                .key_metadata()
                .and_then(|m| m.key_state())
                .map(|s| s.as_str())
                == Some("Enabled")
            {
                live += 1;
            }
        }
    }
    assert_eq!(live, 4, "one live key per alias");
    let calls = proxy.calls();
    let total: u64 = calls.values().sum();
    let forwarded: u64 = proxy.forwarded().values().sum();
    eprintln!("fault run: {total} AWS calls, {} faulted", total - forwarded);
    assert!(total - forwarded >= total / 10, "faults were injected: {calls:?}");
    env.assert_no_leak(&["round1-f0-Pw", "round2-f0-Pw"]).await;
}

/// rotor never destroys what it cannot prove it owns: an adopted secret
/// keeps the replica someone else added, and `deletionPolicy: Delete` with
/// `recoveryWindowInDays: 0` schedules it for deletion instead of erasing it.
#[tokio::test]
async fn an_adopted_secret_keeps_what_rotor_did_not_add() {
    let mut env = Env::new().await;
    let ns = env.ns.clone();
    env.start_rotor(&["--adoption-namespaces", &ns]);
    env.create_aws_secret("adopted", "theirs-Pw-8k", None).await;
    env.sm
        .replicate_secret_to_regions()
        .secret_id(env.aws_name("adopted"))
        .add_replica_regions(
            aws_sdk_secretsmanager::types::ReplicaRegionType::builder()
                .region("us-west-2")
                .build(),
        )
        .send()
        .await
        .expect("add a replica");
    env.apply_ready(
        "adopted",
        json!({"secretsManager": {"name": env.aws_name("adopted"), "adopt": true,
                                  "deletionPolicy": "Delete", "recoveryWindowInDays": 0},
               "refreshInterval": "1s"}),
    )
    .await;
    let describe = || async {
        env.sm
            .describe_secret()
            .secret_id(env.aws_name("adopted"))
            .send()
            .await
            .expect("still there")
    };
    let d = describe().await;
    assert_eq!(
        d.replication_status()
            .iter()
            .filter_map(|r| r.region())
            .collect::<Vec<_>>(),
        ["us-west-2"],
        "the replica rotor did not add stays"
    );
    assert!(env.rs_api().get("adopted").await.unwrap().status.unwrap().adopted);

    env.rs_api().delete("adopted", &Default::default()).await.unwrap();
    eventually("the object gone", Duration::from_secs(30), || async {
        env.rs_api()
            .get_opt("adopted")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    let d = describe().await;
    assert!(
        d.deleted_date().is_some(),
        "scheduled for deletion, not erased at once"
    );
}
