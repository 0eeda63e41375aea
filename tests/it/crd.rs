//! The generated CRD on a real API server: it installs, and the schema
//! rejects what it can check (the 1.20 server has no CEL).

use kube::api::{Patch, PatchParams};
use serde_json::json;

use crate::common::Env;

#[tokio::test]
async fn schema_rejects_bad_specs_and_accepts_the_contract_example() {
    let env = Env::new().await;
    let api = env.rs_api();
    let pp = PatchParams::apply("rotor-tests").force();
    let apply = |name: &'static str, spec: serde_json::Value| {
        let api = api.clone();
        let pp = pp.clone();
        async move {
            let obj = json!({"apiVersion": "rotor.dev/v1alpha1", "kind": "RotatedSecret",
                             "metadata": {"name": name}, "spec": spec});
            api.patch(name, &pp, &Patch::Apply(&obj)).await
        }
    };

    // The api.md example, as written there.
    let example: serde_json::Value = serde_yaml::from_str(include_str!("../../examples/db-credentials.yaml"))
        .map(|v: serde_yaml::Value| serde_json::to_value(v).unwrap())
        .unwrap();
    apply("example", example["spec"].clone())
        .await
        .expect("the contract's example is accepted");

    let bad = [
        ("missing-name", json!({"secretsManager": {}})),
        (
            "bad-refresh",
            json!({"secretsManager": {"name": "a"}, "refreshInterval": "1 minute"}),
        ),
        (
            "bad-window",
            json!({"secretsManager": {"name": "a", "recoveryWindowInDays": 3}}),
        ),
        (
            "big-window",
            json!({"secretsManager": {"name": "a", "recoveryWindowInDays": 31}}),
        ),
        (
            "bad-policy",
            json!({"secretsManager": {"name": "a", "deletionPolicy": "Destroy"}}),
        ),
        (
            "bad-mode",
            json!({"secretsManager": {"name": "a"}, "rollout": {"mode": "Sometimes"}}),
        ),
        (
            "bad-schedule",
            json!({"secretsManager": {"name": "a"}, "rotation": {"lambdaArn": "arn:aws:lambda:us-east-1:123456789012:function:f", "schedule": "every day"}}),
        ),
        (
            "bad-lambda",
            json!({"secretsManager": {"name": "a"}, "rotation": {"lambdaArn": "not-an-arn", "schedule": "rate(7 days)"}}),
        ),
        (
            "bad-alias",
            json!({"secretsManager": {"name": "a", "kmsKey": {"alias": "shop"}}}),
        ),
        (
            "bad-target",
            json!({"secretsManager": {"name": "a"}, "target": {"name": "Not_A_Name"}}),
        ),
        (
            "bad-secret-name",
            json!({"secretsManager": {"name": "has space"}}),
        ),
        (
            "short-password",
            json!({"secretsManager": {"name": "a", "initialValue": {"generate": [{"key": "p", "length": 2}]}}}),
        ),
    ];
    for (name, spec) in bad {
        let err = apply(name, spec).await.expect_err(name);
        let kube::Error::Api(status) = &err else {
            panic!("{name}: unexpected error {err}")
        };
        assert_eq!(status.code, 422, "{name}: {status:?}");
    }
    for ok in [0, 7, 30] {
        apply(
            "window-ok",
            json!({"secretsManager": {"name": "a", "recoveryWindowInDays": ok}}),
        )
        .await
        .unwrap_or_else(|e| panic!("recoveryWindowInDays {ok}: {e}"));
    }
}

/// `kubectl apply --server-side` without a field that was there removes it,
/// on the oldest API server too: no schema default keeps an optional object
/// half alive (`rotation: {}` would fail validation).
#[tokio::test]
async fn server_side_apply_can_remove_optional_fields() {
    let env = Env::new().await;
    let api = env.rs_api();
    let pp = PatchParams::apply("rotor-tests").force();
    let obj = |spec: serde_json::Value| {
        json!({"apiVersion": "rotor.dev/v1alpha1", "kind": "RotatedSecret",
               "metadata": {"name": "opt"}, "spec": spec})
    };
    let full = json!({
        "secretsManager": {"name": "a", "kmsKey": {"alias": "alias/a", "create": true},
                           "resourcePolicy": {"Version": "2012-10-17", "Statement": []},
                           "initialValue": {"template": {"u": "x"}, "generate": [{"key": "p"}]}},
        "rotation": {"lambdaArn": "arn:aws:lambda:us-east-1:123456789012:function:f", "schedule": "rate(7 days)"},
    });
    api.patch("opt", &pp, &Patch::Apply(&obj(full)))
        .await
        .expect("full spec");
    let slim = api
        .patch(
            "opt",
            &pp,
            &Patch::Apply(&obj(json!({"secretsManager": {"name": "a"}}))),
        )
        .await
        .expect("removing optional fields is accepted");
    let spec = serde_json::to_value(&slim.spec).unwrap();
    assert!(spec.get("rotation").is_none(), "{spec}");
    let sm = &spec["secretsManager"];
    for gone in ["kmsKey", "resourcePolicy"] {
        assert!(sm.get(gone).is_none(), "{gone} still there: {spec}");
    }
    // The 1.20 server keeps an empty `initialValue: {}` (a structural-merge
    // quirk around its free-form template); rotor reads that as no value.
    assert!(sm.get("initialValue").is_none_or(|v| v == &json!({})), "{spec}");
}
