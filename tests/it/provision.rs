//! Provisioning AWS from a RotatedSecret (issue 3), on the real test bed:
//! KMS key and alias, the secret with a generated initial value, tags,
//! description, resource policy, replicas, rotation, rotate-now, deletion
//! policies, restore, and a table of bad inputs.
//!
//! moto's RotateSecret differs from AWS; the test bed runs moto through
//! `hack/moto_server.py`, which patches it to AWS's documented behaviour:
//! `RotateImmediately=false` only stores the configuration (ScheduleExpression
//! and Duration are kept and described), an immediate rotation simulates a
//! Lambda that creates one version whose VersionId is the ClientRequestToken
//! and moves AWSCURRENT to it, and a repeated token makes no new version.
//! `GET /rotor-test/rotations` counts the simulated rotations per secret, which
//! is how these tests prove that a reconcile never rotates by surprise.
//!
//! AWS write calls are counted by the fault-injecting proxy
//! (`hack/aws_proxy.py`) that sits between rotor and moto; its `after` fault
//! lets a write happen and loses the response, as a crash right after the
//! write would.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use aws_sdk_secretsmanager::operation::describe_secret::DescribeSecretOutput;
use aws_sdk_secretsmanager::types::Tag;
use rotor::api::{OWNER_TAG, RotatedSecret};
use serde_json::{Value, json};

use crate::common::{
    AwsProxy, CLUSTER, Env, alias_target, condition, current_version, eventually, key_state, keys_owned_by,
    kms, reads, rotations, sm_in, tags_of, testbed, writes,
};

const LAMBDA: &str = "arn:aws:lambda:us-east-1:123456789012:function:secret-rotation";
/// The seed's exclusions: `"@/\`.
const EXCLUDED: &str = "\"@/\\";
const PUNCTUATION: &str = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";

// ---------------------------------------------------------------------------
// Fixtures: the api.md example.
// ---------------------------------------------------------------------------

fn seed_policy() -> Value {
    // Not public: a Deny, and scoped by a Condition.
    json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "DenyOutsideAccount",
            "Effect": "Deny",
            "Principal": {"AWS": "*"},
            "Action": "secretsmanager:GetSecretValue",
            "Resource": "*",
            "Condition": {"StringNotEquals": {"aws:PrincipalAccount": "123456789012"}},
        }],
    })
}

/// The api.md example, with this test's names.
fn seed_spec(env: &Env, secret: &str, alias: &str) -> Value {
    json!({
        "secretsManager": {
            "name": env.aws_name(secret),
            "description": "Database credentials for the shop",
            "kmsKey": {"alias": alias, "create": true},
            "tags": {"Environment": "Demo", "Application": "MyApp"},
            "initialValue": {
                "template": {
                    "engine": "mysql",
                    "host": "demo-database.cluster-abc123.us-east-1.rds.amazonaws.com",
                    "username": "admin",
                    "dbname": "myapp",
                    "port": 3306,
                },
                "generate": [{
                    "key": "password",
                    "length": 20,
                    "excludeCharacters": EXCLUDED,
                    "requireEachIncludedType": true,
                }],
            },
            "resourcePolicy": seed_policy(),
        },
        "rotation": {"lambdaArn": LAMBDA, "schedule": "rate(7 days)", "window": "2h"},
        "target": {
            "name": "db-credentials",
            "template": {
                "DATABASE_URL": "mysql://{{ username }}:{{ password }}@{{ host }}:{{ port }}/{{ dbname }}",
            },
        },
        "refreshInterval": "1s",
    })
}

fn assert_rotation(d: &DescribeSecretOutput, schedule: &str, window: Option<&str>) {
    assert_eq!(d.rotation_enabled(), Some(true), "rotation enabled");
    assert_eq!(d.rotation_lambda_arn(), Some(LAMBDA));
    let rules = d.rotation_rules().expect("RotationRules");
    assert_eq!(rules.schedule_expression(), Some(schedule));
    assert_eq!(rules.duration(), window);
}

// ---------------------------------------------------------------------------
// 1. The seed example, end to end.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn seed_example_creates_key_alias_and_secret() {
    let mut env = Env::new().await;
    let alias = env.alias("shop-secrets");
    env.start_rotor(&[]);
    let rs = env
        .apply_ready("db-credentials", seed_spec(&env, "shop/db-credentials", &alias))
        .await;
    let me = env.owner("db-credentials");

    // Conditions and status.
    for type_ in [
        "KmsKeyReady",
        "SecretReady",
        "RotationConfigured",
        "Synced",
        "Ready",
    ] {
        let c = condition(&rs, type_).unwrap_or_else(|| panic!("{type_} missing"));
        assert_eq!(c.status, "True", "{type_}: {c:?}");
    }
    let status = rs.status.as_ref().unwrap();
    let key_arn = status.kms_key_arn.clone().expect("status.kmsKeyArn");
    let arn = status.arn.clone().expect("status.arn");
    assert_eq!(status.rotation_enabled, Some(true));
    assert!(status.next_rotation_date.is_some(), "nextRotationDate");

    // The key: SYMMETRIC_DEFAULT, customer-managed, aliased, tagged with its creator.
    let meta = kms()
        .describe_key()
        .key_id(&alias)
        .send()
        .await
        .unwrap()
        .key_metadata()
        .cloned()
        .unwrap();
    assert_eq!(meta.arn(), Some(key_arn.as_str()));
    assert_eq!(meta.key_spec().map(|s| s.as_str()), Some("SYMMETRIC_DEFAULT"));
    assert_eq!(meta.key_usage().map(|s| s.as_str()), Some("ENCRYPT_DECRYPT"));
    assert_eq!(meta.key_state().map(|s| s.as_str()), Some("Enabled"));
    assert_eq!(alias_target(&alias).await.as_deref(), Some(meta.key_id()));
    assert_eq!(keys_owned_by(&me).await, vec![meta.key_id().to_owned()]);

    // The secret.
    let d = env.describe("shop/db-credentials").await;
    assert_eq!(d.arn(), Some(arn.as_str()));
    assert_eq!(d.description(), Some("Database credentials for the shop"));
    assert_eq!(d.kms_key_id(), Some(key_arn.as_str()));
    let tags = tags_of(&d);
    assert_eq!(tags.get("Environment").map(String::as_str), Some("Demo"));
    assert_eq!(tags.get("Application").map(String::as_str), Some("MyApp"));
    assert_eq!(tags.get(OWNER_TAG), Some(&me));
    assert_eq!(tags.len(), 3, "{tags:?}");

    // The value: the template plus a 20-character password honouring the rules.
    let value = env.current_json("shop/db-credentials").await;
    assert_eq!(value["engine"], "mysql");
    assert_eq!(value["username"], "admin");
    assert_eq!(value["dbname"], "myapp");
    assert_eq!(value["port"], 3306);
    assert_eq!(
        value["host"],
        "demo-database.cluster-abc123.us-east-1.rds.amazonaws.com"
    );
    let password = value["password"].as_str().expect("generated password").to_owned();
    assert_eq!(password.chars().count(), 20, "length");
    assert!(
        !password.contains(|c| EXCLUDED.contains(c)),
        "excluded characters used"
    );
    assert!(
        password.chars().any(|c| c.is_ascii_lowercase()),
        "a lowercase letter"
    );
    assert!(
        password.chars().any(|c| c.is_ascii_uppercase()),
        "an uppercase letter"
    );
    assert!(password.chars().any(|c| c.is_ascii_digit()), "a digit");
    assert!(
        password.chars().any(|c| PUNCTUATION.contains(c)),
        "a punctuation mark"
    );
    assert!(
        password.chars().all(|c| c.is_ascii_graphic()),
        "printable ASCII only"
    );

    // Policy and rotation; and no rotation happened (config only).
    assert_eq!(env.policy_of("shop/db-credentials").await, Some(seed_policy()));
    assert_rotation(&d, "rate(7 days)", Some("2h"));
    assert_eq!(
        env.version_count("shop/db-credentials").await,
        1,
        "exactly one version"
    );
    assert_eq!(rotations(&arn), 0, "configuring rotation must not rotate");
    assert_eq!(
        status.current_version_id.as_deref(),
        Some(current_version(&d).as_str())
    );

    // The Kubernetes Secret.
    let data = env.secret_data("db-credentials").await.expect("Secret written");
    assert_eq!(
        data.get("DATABASE_URL").map(String::as_str),
        Some(
            format!(
                "mysql://admin:{password}@demo-database.cluster-abc123.us-east-1.rds.amazonaws.com:3306/myapp"
            )
            .as_str()
        )
    );
    assert_eq!(data.len(), 1);

    env.wait_event("db-credentials", "KmsKeyCreated").await;
    env.wait_event("db-credentials", "Created").await;
    env.assert_no_leak(&[&password]).await;
}

// ---------------------------------------------------------------------------
// 2. Idempotency: an unchanged object costs no AWS writes, even when every
//    reconcile re-checks all settings, and across a restart.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn unchanged_reconciles_make_zero_aws_writes() {
    let mut env = Env::new().await;
    let proxy = AwsProxy::start(&testbed().aws_endpoint);
    let flags = ["--drift-interval", "1s"];
    env.start_rotor_with_endpoint(&flags, &proxy.url);
    let mut spec = seed_spec(&env, "db", &env.alias("key"));
    spec["secretsManager"]["replicaRegions"] = json!([{"region": "us-west-2"}]);
    spec["secretsManager"]["deletionPolicy"] = json!("Delete");
    spec["secretsManager"]["recoveryWindowInDays"] = json!(7);
    let rs = env.apply_ready("db", spec).await;
    let arn = rs.status.unwrap().arn.unwrap();
    let created = proxy.calls();
    for op in [
        "CreateKey",
        "CreateAlias",
        "CreateSecret",
        "PutResourcePolicy",
        "RotateSecret",
    ] {
        assert_eq!(created.get(op), Some(&1), "{op} once while creating: {created:?}");
    }

    // Several reconciles, each converging everything (--drift-interval 1s).
    proxy.reset();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let calls = proxy.calls();
    assert_eq!(
        writes(&calls),
        BTreeMap::new(),
        "writes while nothing changed: {calls:?}"
    );
    assert!(
        calls.get("DescribeSecret").copied().unwrap_or(0) >= 3
            && calls.get("DescribeKey").copied().unwrap_or(0) >= 3
            && calls.get("GetResourcePolicy").copied().unwrap_or(0) >= 3,
        "expected several full reconciles in 6s: {calls:?}"
    );

    // A restarted rotor (no memory of what it did) writes nothing either.
    proxy.reset();
    env.start_rotor_with_endpoint(&flags, &proxy.url);
    eventually("reconciles after restart", Duration::from_secs(20), || async {
        (proxy.calls().get("GetResourcePolicy").copied().unwrap_or(0) >= 3).then_some(())
    })
    .await;
    let calls = proxy.calls();
    assert_eq!(writes(&calls), BTreeMap::new(), "writes after restart: {calls:?}");
    assert!(reads(&calls) > 0);
    assert_eq!(
        condition(&env.wait_ready("db").await, "Ready").unwrap().status,
        "True"
    );
    assert_eq!(env.version_count("db").await, 1);
    assert_eq!(rotations(&arn), 0);
}

// ---------------------------------------------------------------------------
// 3. A lost response after each write of the creation path converges
//    without duplicates.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_lost_response_after_each_write_converges_without_duplicates() {
    let mut env = Env::new().await;
    let proxy = AwsProxy::start(&testbed().aws_endpoint);
    env.start_rotor_with_endpoint(&[], &proxy.url);
    let cases = [
        ("CreateKey", false),
        ("CreateAlias", false),
        ("CreateSecret", false),
        ("PutResourcePolicy", false),
        ("RotateSecret", false),
        // The first rotation (rotateImmediately) must happen once, not twice.
        ("RotateSecret", true),
    ];
    for (i, (op, immediately)) in cases.into_iter().enumerate() {
        let name = format!("crash-{i}");
        let key_alias = env.alias(&format!("crash-{i}"));
        let mut spec = seed_spec(&env, &name, &key_alias);
        spec["target"] = json!({"name": name});
        spec["rotation"]["rotateImmediately"] = json!(immediately);
        proxy.reset();
        proxy.fault(op, 1, "after", None);
        env.apply_rs(&name, spec).await;
        let rs = env.wait_ready(&name).await;
        let ctx = format!("{op} (rotateImmediately {immediately})");
        assert!(proxy.active_faults().is_empty(), "{ctx}: the fault fired");
        let calls = proxy.calls();
        assert_eq!(
            calls.get(op),
            Some(&1),
            "{ctx}: the lost write was recognised, not repeated: {calls:?}"
        );
        assert!(
            env.rotor_log().contains(&format!("AWS {op} failed")),
            "{ctx}: rotor saw the error"
        );

        let me = env.owner(&name);
        let keys = keys_owned_by(&me).await;
        assert_eq!(keys.len(), 1, "{ctx}: exactly one key for {me}: {keys:?}");
        assert_eq!(alias_target(&key_alias).await.as_ref(), Some(&keys[0]), "{ctx}");
        assert_eq!(key_state(&keys[0]).await, "Enabled", "{ctx}");
        assert_eq!(env.secrets_named(&name).await, 1, "{ctx}");
        let d = env.describe(&name).await;
        let status = rs.status.as_ref().unwrap();
        assert_eq!(d.kms_key_id(), status.kms_key_arn.as_deref(), "{ctx}");
        assert!(
            status.kms_key_arn.as_deref().unwrap().ends_with(&keys[0]),
            "{ctx}"
        );
        assert_eq!(tags_of(&d).get(OWNER_TAG), Some(&me), "{ctx}");
        assert_eq!(env.policy_of(&name).await, Some(seed_policy()), "{ctx}");
        assert_rotation(&d, "rate(7 days)", Some("2h"));
        let expected = if immediately { 1 } else { 0 };
        assert_eq!(rotations(d.arn().unwrap()), expected, "{ctx}: rotations");
        assert_eq!(
            env.version_count(&name).await,
            1 + expected as usize,
            "{ctx}: versions"
        );
    }
    // Later reconciles stay quiet.
    proxy.reset();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let calls = proxy.calls();
    assert_eq!(writes(&calls), BTreeMap::new(), "{calls:?}");
    assert!(reads(&calls) > 0, "{calls:?}");
}

#[tokio::test]
async fn rotor_stopped_during_create_key_makes_no_second_key() {
    let mut env = Env::new().await;
    let proxy = AwsProxy::start(&testbed().aws_endpoint);
    // CreateKey reaches KMS 3s after rotor sends it; rotor is gone by then.
    proxy.fault_spec(json!({"operation": "CreateKey", "kind": "delay", "seconds": 3}));
    env.start_rotor_with_endpoint(&[], &proxy.url);
    let key_alias = env.alias("stopped");
    env.apply_rs("db", seed_spec(&env, "db", &key_alias)).await;
    eventually("CreateKey sent", Duration::from_secs(20), || async {
        proxy.calls().contains_key("CreateKey").then_some(())
    })
    .await;
    env.rotor = None; // killed while CreateKey is in flight
    let me = env.owner("db");
    let keys = eventually("the key created anyway", Duration::from_secs(10), || async {
        let keys = keys_owned_by(&me).await;
        (!keys.is_empty()).then_some(keys)
    })
    .await;
    let rs = env.rs_api().get("db").await.unwrap();
    assert_eq!(
        rs.status.as_ref().and_then(|s| s.kms_key_arn.clone()),
        None,
        "never recorded"
    );
    assert_eq!(
        condition(&rs, "KmsKeyReady").map(|c| &*c.reason),
        Some("CreatingKey"),
        "the attempt was recorded before the call"
    );

    proxy.clear_faults();
    env.start_rotor_with_endpoint(&[], &proxy.url);
    let rs = env.wait_ready("db").await;
    assert_eq!(proxy.calls().get("CreateKey"), Some(&1), "no second CreateKey");
    assert_eq!(keys_owned_by(&me).await, keys, "exactly one key");
    assert_eq!(alias_target(&key_alias).await.as_ref(), Some(&keys[0]));
    let key_arn = rs.status.unwrap().kms_key_arn.unwrap();
    assert!(key_arn.ends_with(&keys[0]));
    assert_eq!(env.describe("db").await.kms_key_id(), Some(key_arn.as_str()));
}

#[tokio::test]
async fn racing_creators_of_one_alias_end_with_one_key() {
    let mut env = Env::new().await;
    let proxy = AwsProxy::start(&testbed().aws_endpoint);
    // Both objects find the alias missing and create a key before either
    // creates the alias: one loses the alias and must use the winner's key.
    proxy.fault_spec(json!({"operation": "CreateKey", "count": 2, "kind": "delay", "seconds": 2}));
    env.start_rotor_with_endpoint(&[], &proxy.url);
    let key_alias = env.alias("race");
    for name in ["a", "b"] {
        let mut spec = seed_spec(&env, name, &key_alias);
        spec["target"] = json!({"name": name});
        env.apply_rs(name, spec).await;
    }
    let a = env.wait_ready("a").await;
    let b = env.wait_ready("b").await;
    let calls = proxy.calls();
    assert_eq!(calls.get("CreateKey"), Some(&2), "both raced: {calls:?}");
    let winner = alias_target(&key_alias).await.expect("alias exists");
    let arn_a = a.status.unwrap().kms_key_arn.unwrap();
    let arn_b = b.status.unwrap().kms_key_arn.unwrap();
    assert_eq!(arn_a, arn_b, "both use one key");
    assert!(arn_a.ends_with(&winner));
    for name in ["a", "b"] {
        assert_eq!(env.describe(name).await.kms_key_id(), Some(arn_a.as_str()));
    }
    let mut states = Vec::new();
    for owner in [env.owner("a"), env.owner("b")] {
        for key in keys_owned_by(&owner).await {
            states.push((key.clone() == winner, key_state(&key).await));
        }
    }
    states.sort();
    assert_eq!(
        states,
        [
            (false, "PendingDeletion".to_owned()),
            (true, "Enabled".to_owned())
        ],
        "the loser's key is scheduled for deletion"
    );
}

// ---------------------------------------------------------------------------
// 4. Description, tags, policy and replicas converge both ways.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn description_tags_policy_and_replicas_converge_both_ways() {
    let mut env = Env::new().await;
    env.start_rotor(&["--drift-interval", "1s"]);
    let name = env.aws_name("conv");
    let policy1 = seed_policy();
    let mut policy2 = seed_policy();
    policy2["Statement"][0]["Action"] =
        json!(["secretsmanager:GetSecretValue", "secretsmanager:PutSecretValue"]);
    let spec = |description: &str, tags: Value, policy: Option<&Value>, replicas: Value| {
        let mut sm = json!({
            "name": name, "description": description, "tags": tags,
            "initialValue": {"string": "conv-value-Qm3"}, "replicaRegions": replicas,
        });
        if let Some(p) = policy {
            sm["resourcePolicy"] = p.clone();
        }
        json!({"secretsManager": sm, "refreshInterval": "1s"})
    };

    env.apply_ready(
        "conv",
        spec(
            "first",
            json!({"Team": "a", "Cost": "1", "Gone": "x"}),
            Some(&policy1),
            json!([]),
        ),
    )
    .await;
    let d = env.describe("conv").await;
    assert_eq!(d.description(), Some("first"));
    let tags = tags_of(&d);
    assert_eq!(
        (tags.get("Team"), tags.get("Cost"), tags.get("Gone")),
        (Some(&"a".into()), Some(&"1".into()), Some(&"x".into()))
    );
    assert_eq!(env.policy_of("conv").await, Some(policy1.clone()));

    // A tag someone else put must survive everything rotor does.
    env.sm
        .tag_resource()
        .secret_id(&name)
        .tags(Tag::builder().key("Foreign").value("keep").build())
        .send()
        .await
        .unwrap();

    // Change, add and remove declared tags; change the description.
    env.apply_ready(
        "conv",
        spec(
            "second",
            json!({"Team": "b", "Cost": "1", "New": "y"}),
            Some(&policy1),
            json!([]),
        ),
    )
    .await;
    let d = env.describe("conv").await;
    assert_eq!(d.description(), Some("second"));
    let tags = tags_of(&d);
    let want: BTreeMap<String, String> = [
        ("Team", "b"),
        ("Cost", "1"),
        ("New", "y"),
        ("Foreign", "keep"),
        (OWNER_TAG, env.owner("conv").as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(tags, want);

    // Drift in AWS (someone edits a declared tag and the description) is undone.
    env.sm
        .tag_resource()
        .secret_id(&name)
        .tags(Tag::builder().key("Team").value("drifted").build())
        .send()
        .await
        .unwrap();
    env.sm
        .update_secret()
        .secret_id(&name)
        .description("drifted")
        .send()
        .await
        .unwrap();
    eventually("drift undone", Duration::from_secs(15), || async {
        let d = env.describe("conv").await;
        (d.description() == Some("second") && tags_of(&d) == want).then_some(())
    })
    .await;

    // Policy changed, then removed: rotor put it, so rotor deletes it.
    env.apply_ready(
        "conv",
        spec(
            "second",
            json!({"Team": "b", "Cost": "1", "New": "y"}),
            Some(&policy2),
            json!([]),
        ),
    )
    .await;
    assert_eq!(env.policy_of("conv").await, Some(policy2));
    env.merge_spec("conv", json!({"secretsManager": {"resourcePolicy": null}}))
        .await;
    env.wait_ready("conv").await;
    assert_eq!(env.policy_of("conv").await, None, "rotor's policy removed");

    // Replicas: add us-west-2, then remove it.
    env.apply_ready(
        "conv",
        spec(
            "second",
            json!({"Team": "b", "Cost": "1", "New": "y"}),
            None,
            json!([{"region": "us-west-2"}]),
        ),
    )
    .await;
    let d = env.describe("conv").await;
    let regions: Vec<_> = d.replication_status().iter().filter_map(|r| r.region()).collect();
    assert_eq!(regions, ["us-west-2"]);
    sm_in("us-west-2")
        .describe_secret()
        .secret_id(&name)
        .send()
        .await
        .expect("the replica exists in us-west-2");
    env.apply_ready(
        "conv",
        spec(
            "second",
            json!({"Team": "b", "Cost": "1", "New": "y"}),
            None,
            json!([]),
        ),
    )
    .await;
    let d = env.describe("conv").await;
    assert!(
        d.replication_status().is_empty(),
        "replica removed: {:?}",
        d.replication_status()
    );
    assert_eq!(tags_of(&d), want, "tags untouched by the other changes");

    // A policy rotor did not put is left alone when the spec has none.
    let other = env
        .create_aws_secret("foreign-policy", "v", Some(&env.owner("fp")))
        .await;
    env.sm
        .put_resource_policy()
        .secret_id(&other)
        .resource_policy(seed_policy().to_string())
        .send()
        .await
        .unwrap();
    env.apply_ready(
        "fp",
        json!({"secretsManager": {"name": env.aws_name("foreign-policy")}, "refreshInterval": "1s"}),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await; // several converging reconciles
    assert_eq!(env.policy_of("foreign-policy").await, Some(seed_policy()));
    env.assert_no_leak(&["conv-value-Qm3"]).await;
}

// ---------------------------------------------------------------------------
// 5. Rotation: never by surprise.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn rotation_is_configured_without_rotating() {
    let mut env = Env::new().await;
    let proxy = AwsProxy::start(&testbed().aws_endpoint);
    env.start_rotor_with_endpoint(&["--drift-interval", "1s"], &proxy.url);
    let spec = |rotation: Value| {
        json!({
            "secretsManager": {"name": env.aws_name("rot"), "initialValue": {"template": {"user": "u"},
                "generate": [{"key": "password", "length": 24}]}},
            "rotation": rotation,
            "refreshInterval": "1s",
        })
    };
    let rs = env
        .apply_ready(
            "rot",
            spec(json!({"lambdaArn": LAMBDA, "schedule": "rate(7 days)", "window": "2h"})),
        )
        .await;
    let arn = rs.status.as_ref().unwrap().arn.clone().unwrap();
    assert_eq!(proxy.calls().get("RotateSecret"), Some(&1));
    assert_rotation(&env.describe("rot").await, "rate(7 days)", Some("2h"));
    assert_eq!(
        condition(&rs, "RotationConfigured").map(|c| &*c.reason),
        Some("Configured"),
        "{:#?}\n{}",
        rs.status,
        env.rotor_log()
    );

    // Unchanged: several converging reconciles, no RotateSecret.
    proxy.reset();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let calls = proxy.calls();
    assert_eq!(calls.get("RotateSecret"), None, "{calls:?}");
    assert!(
        calls.get("DescribeSecret").copied().unwrap_or(0) >= 3,
        "{calls:?}"
    );
    assert_eq!(rotations(&arn), 0);

    // A schedule change reconfigures, and does not rotate.
    proxy.reset();
    env.apply_ready(
        "rot",
        spec(json!({"lambdaArn": LAMBDA, "schedule": "rate(14 days)", "window": "2h"})),
    )
    .await;
    assert_eq!(proxy.calls().get("RotateSecret"), Some(&1));
    let d = env.describe("rot").await;
    assert_rotation(&d, "rate(14 days)", Some("2h"));
    let next = |rs: &RotatedSecret| rs.status.as_ref().and_then(|s| s.next_rotation_date.clone());
    let rs14 = env.rs_api().get("rot").await.unwrap();
    assert!(
        next(&rs).is_some() && next(&rs14).is_some() && next(&rs14) > next(&rs),
        "status.nextRotationDate follows: {:?} then {:?}",
        next(&rs),
        next(&rs14)
    );
    assert_eq!(env.version_count("rot").await, 1, "no new version");
    assert_eq!(rotations(&arn), 0);
    env.wait_event("rot", "RotationConfigured").await;

    // Removing rotation cancels it.
    env.merge_spec("rot", json!({"rotation": null})).await;
    let rs = env.wait_ready("rot").await;
    assert_eq!(env.describe("rot").await.rotation_enabled(), Some(false));
    assert_eq!(rs.status.as_ref().unwrap().rotation_enabled, Some(false));
    assert_eq!(next(&rs), None, "no nextRotationDate once cancelled");
    assert_eq!(
        condition(&rs, "RotationConfigured").unwrap().reason,
        "NotConfigured"
    );
    assert_eq!(proxy.calls().get("CancelRotateSecret"), Some(&1));
    assert_eq!(rotations(&arn), 0);
    assert_eq!(env.version_count("rot").await, 1);
    env.wait_event("rot", "RotationCancelled").await;

    // rotateImmediately on a fresh object: exactly one rotation.
    let rs = env.apply_ready("now",
        json!({
            "secretsManager": {"name": env.aws_name("now"), "initialValue": {"template": {"password": "initial-Pw-9xz"}}},
            "rotation": {"lambdaArn": LAMBDA, "schedule": "rate(30 days)", "rotateImmediately": true},
            "refreshInterval": "1s",
        }),
    )
    .await;
    let now_arn = rs.status.as_ref().unwrap().arn.clone().unwrap();
    assert_eq!(rotations(&now_arn), 1);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(rotations(&now_arn), 1, "still one after more reconciles");
    assert_eq!(env.version_count("now").await, 2);
    let d = env.describe("now").await;
    assert_rotation(&d, "rate(30 days)", None);
    // The Secret follows the rotated version.
    let rs = env
        .wait_rs("now", "synced to the rotated version", |rs| {
            rs.status.as_ref().and_then(|s| s.synced_version_id.clone()) == Some(current_version(&d))
        })
        .await;
    assert!(rs.status.unwrap().last_rotated_date.is_some());
    env.assert_no_leak(&["initial-Pw-9xz"]).await;
}

/// Issue A's cause: a ListSecrets page sent before CancelRotateSecret and
/// answered after it must not bring the old nextRotationDate back into
/// status. Every listing is held back 2 s by the proxy (answered by moto at
/// once, relayed late), so the sweep always lands after rotor's own describe;
/// annotating the object then makes it reconcile from the sweep's view. rotor
/// runs as a cluster of its own, so its sweep is one page whatever else moto
/// holds (several late pages would make the sweep too slow to be trusted, and
/// hide the race).
#[tokio::test]
async fn a_late_listing_never_brings_back_a_cancelled_rotation() {
    let mut env = Env::new().await;
    let proxy = AwsProxy::start(&testbed().aws_endpoint);
    let cluster = format!("late-{}", &crate::common::uuid_like()[..8]);
    env.start_rotor_with_endpoint(&["--cluster-name", &cluster], &proxy.url);
    let spec = |rotation: Value| {
        json!({
            "secretsManager": {"name": env.aws_name("late"), "initialValue": {"string": "late-Pw-4q"}},
            "rotation": rotation,
            "refreshInterval": "1s",
        })
    };
    env.apply_ready(
        "late",
        spec(json!({"lambdaArn": LAMBDA, "schedule": "rate(7 days)"})),
    )
    .await;
    proxy.fault_spec(json!({"operation": "ListSecrets", "count": -1, "kind": "late", "seconds": 2}));
    // Cancel right after a listing went out: moto has answered it with the
    // rotation still enabled, and the proxy holds that answer back.
    let listings = || proxy.calls().get("ListSecrets").copied().unwrap_or(0);
    let sent = listings();
    eventually("a listing on its way", Duration::from_secs(10), || async {
        (listings() > sent).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    env.merge_spec("late", json!({"rotation": null})).await;
    env.wait_condition("late", "RotationConfigured", "True", "NotConfigured")
        .await;
    for touch in 0..8 {
        tokio::time::sleep(Duration::from_millis(750)).await;
        env.annotate("late", "test/touch", &touch.to_string()).await;
        let status = env.rs_api().get("late").await.unwrap().status.unwrap();
        assert_eq!(status.rotation_enabled, Some(false), "touch {touch}: {status:#?}");
        assert_eq!(
            status.next_rotation_date,
            None,
            "touch {touch}: {status:#?}\n{}",
            env.rotor_log()
        );
    }
    assert!(
        proxy.calls().get("ListSecrets").copied().unwrap_or(0) >= 2,
        "the sweep ran meanwhile"
    );
}

// ---------------------------------------------------------------------------
// 6. rotate-now: once per token.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn rotate_now_rotates_once_per_token() {
    let mut env = Env::new().await;
    let proxy = AwsProxy::start(&testbed().aws_endpoint);
    env.start_rotor_with_endpoint(&[], &proxy.url);
    let rs = env.apply_ready("rn",
        json!({
            "secretsManager": {"name": env.aws_name("rn"), "initialValue": {"template": {"password": "first-Pw-k2"}}},
            "rotation": {"lambdaArn": LAMBDA, "schedule": "rate(30 days)"},
            "refreshInterval": "1s",
        }),
    )
    .await;
    let arn = rs.status.as_ref().unwrap().arn.clone().unwrap();
    assert_eq!(rotations(&arn), 0);
    let token_is = |t: &'static str| {
        move |rs: &RotatedSecret| rs.status.as_ref().and_then(|s| s.rotate_now_token.as_deref()) == Some(t)
    };

    env.annotate("rn", "rotor.dev/rotate-now", "t1").await;
    env.wait_rs("rn", "rotateNowToken t1", token_is("t1")).await;
    assert_eq!(rotations(&arn), 1);
    assert_eq!(env.version_count("rn").await, 2);
    let ev = env.wait_event("rn", "RotationRequested").await;
    assert!(ev.note.unwrap_or_default().contains("t1"));
    let v1 = current_version(&env.describe("rn").await);
    env.wait_rs("rn", "synced to t1's version", |rs| {
        rs.status.as_ref().and_then(|s| s.synced_version_id.as_deref()) == Some(v1.as_str())
    })
    .await;

    // The same token again (re-applied, and more reconciles): nothing more.
    env.annotate("rn", "rotor.dev/rotate-now", "t1").await;
    env.apply_rs(
        "rn",
        json!({
            "secretsManager": {"name": env.aws_name("rn"), "initialValue": {"template": {"password": "first-Pw-k2"}}},
            "rotation": {"lambdaArn": LAMBDA, "schedule": "rate(30 days)"},
            "refreshInterval": "2s",
        }),
    )
    .await;
    env.wait_ready("rn").await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(rotations(&arn), 1, "t1 never twice");
    assert_eq!(env.version_count("rn").await, 2);

    // A new token: a second rotation.
    env.annotate("rn", "rotor.dev/rotate-now", "t2").await;
    env.wait_rs("rn", "rotateNowToken t2", token_is("t2")).await;
    assert_eq!(rotations(&arn), 2);
    assert_eq!(env.version_count("rn").await, 3);

    // t3 rotates, but rotor loses the response: retrying with the same
    // token must not rotate again.
    proxy.reset();
    proxy.fault("RotateSecret", 1, "after", None);
    env.annotate("rn", "rotor.dev/rotate-now", "t3").await;
    env.wait_rs("rn", "rotateNowToken t3", token_is("t3")).await;
    assert!(proxy.active_faults().is_empty(), "the fault fired");
    assert_eq!(proxy.calls().get("RotateSecret"), Some(&2), "retried once");
    assert_eq!(rotations(&arn), 3, "t3 rotated exactly once");
    assert_eq!(env.version_count("rn").await, 4);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(rotations(&arn), 3);
    let notes: Vec<String> = env
        .events_for("rn", "RotationRequested")
        .await
        .into_iter()
        .filter_map(|e| e.note)
        .collect();
    for t in ["t1", "t2", "t3"] {
        assert!(
            notes.iter().any(|n| n.ends_with(&format!("={t}"))),
            "{t}: {notes:?}"
        );
    }
    env.assert_no_leak(&["first-Pw-k2"]).await;
}

// ---------------------------------------------------------------------------
// 7. Deletion policies.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn retain_leaves_secret_and_key_and_removes_the_owner_tag() {
    let mut env = Env::new().await;
    env.start_rotor(&[]);
    let key_alias = env.alias("retain");
    let rs = env.apply_ready("keep", seed_spec(&env, "keep", &key_alias)).await;
    let key_arn = rs.status.as_ref().unwrap().kms_key_arn.clone().unwrap();
    assert!(
        rs.metadata
            .finalizers
            .unwrap_or_default()
            .contains(&"rotor.dev/cleanup".to_owned())
    );

    env.delete_and_wait_gone("keep", Duration::from_secs(20)).await;
    let d = env.describe("keep").await;
    assert!(d.deleted_date().is_none(), "not scheduled for deletion");
    assert_eq!(tags_of(&d).get(OWNER_TAG), None, "owner tag removed");
    assert_eq!(tags_of(&d).get("Environment").map(String::as_str), Some("Demo"));
    assert_eq!(d.kms_key_id(), Some(key_arn.as_str()));
    assert_eq!(key_state(&key_arn).await, "Enabled", "key kept");
    assert!(
        alias_target(&key_alias)
            .await
            .is_some_and(|k| key_arn.ends_with(&k))
    );
    env.wait_event("keep", "Released").await;
    assert_eq!(
        tags_of(&d).get("rotor.dev/released-from"),
        Some(&env.owner("keep")),
        "released, re-claimable by the same object name"
    );

    // GitOps replace (delete, then apply again): the same namespace/name
    // re-claims its released secret without adopt, same ARN, same value.
    let again = env.apply_ready("keep", seed_spec(&env, "keep", &key_alias)).await;
    let status = again.status.as_ref().unwrap();
    assert_eq!(status.arn, rs.status.as_ref().unwrap().arn, "same secret");
    assert!(status.adopted, "treated as adopted: removes only what it adds");
    let d = env.describe("keep").await;
    assert_eq!(tags_of(&d).get(OWNER_TAG), Some(&env.owner("keep")));
    assert_eq!(tags_of(&d).get("rotor.dev/released-from"), None);
    assert_eq!(
        d.version_ids_to_stages().map(|v| v.len()),
        Some(1),
        "no new value"
    );
    env.wait_event("keep", "Reclaimed").await;
}

/// KMS keys are the one thing rotor cannot see every use of: without the
/// operator's opt-in a created key outlives its object; with it, an alias
/// someone re-pointed at another key is left alone.
#[tokio::test]
async fn created_keys_are_deleted_only_with_the_opt_in_and_never_a_repointed_alias() {
    let mut env = Env::new().await;
    env.start_rotor(&[]);
    let prefix = env.prefix.clone();
    let spec = |name: &str, key_alias: &str| {
        json!({
            "secretsManager": {"name": format!("{prefix}{name}"), "kmsKey": {"alias": key_alias, "create": true},
                               "initialValue": {"string": "kk-value-Q2"}, "deletionPolicy": "Delete"},
            "refreshInterval": "1s",
        })
    };
    let kept_alias = env.alias("kept");
    let kept = env.apply_ready("kept", spec("kept", &kept_alias)).await;
    let kept_key = kept.status.unwrap().kms_key_arn.unwrap();
    env.delete_and_wait_gone("kept", Duration::from_secs(20)).await;
    assert!(
        env.describe("kept").await.deleted_date().is_some(),
        "the secret goes"
    );
    assert_eq!(
        key_state(&kept_key).await,
        "Enabled",
        "the key stays without the opt-in"
    );
    assert!(alias_target(&kept_alias).await.is_some());

    env.start_rotor(&["--delete-created-kms-keys"]);
    let moved_alias = env.alias("moved");
    let moved = env.apply_ready("moved", spec("moved", &moved_alias)).await;
    let own_key = moved.status.unwrap().kms_key_arn.unwrap();
    let other_key = kms()
        .create_key()
        .send()
        .await
        .unwrap()
        .key_metadata()
        .unwrap()
        .key_id()
        .to_owned();
    kms()
        .update_alias()
        .alias_name(&moved_alias)
        .target_key_id(&other_key)
        .send()
        .await
        .unwrap();
    env.delete_and_wait_gone("moved", Duration::from_secs(20)).await;
    assert_eq!(
        key_state(&own_key).await,
        "PendingDeletion",
        "its own unused key goes"
    );
    assert_eq!(
        alias_target(&moved_alias).await.as_deref(),
        Some(other_key.as_str()),
        "the re-pointed alias is not rotor's to delete"
    );
}

#[tokio::test]
async fn delete_schedules_deletion_and_keeps_a_shared_key() {
    let mut env = Env::new().await;
    env.start_rotor(&["--delete-created-kms-keys"]);
    let shared = env.alias("shared");
    let own = env.alias("own");
    let spec = |name: &str, key_alias: &str, days: i64| {
        json!({
            "secretsManager": {
                "name": env.aws_name(name),
                "kmsKey": {"alias": key_alias, "create": true},
                "initialValue": {"string": "del-value-Zx4"},
                "deletionPolicy": "Delete",
                "recoveryWindowInDays": days,
            },
            "refreshInterval": "1s",
        })
    };
    // `creator` makes the shared key; `sharer` uses it; `solo` has its own key.
    let creator = env.apply_ready("creator", spec("creator", &shared, 7)).await;
    let shared_key = creator.status.unwrap().kms_key_arn.unwrap();
    let sharer = env.apply_ready("sharer", spec("sharer", &shared, 0)).await;
    assert_eq!(
        sharer.status.unwrap().kms_key_arn.as_deref(),
        Some(shared_key.as_str())
    );
    assert_eq!(
        keys_owned_by(&env.owner("sharer")).await.len(),
        0,
        "the sharer created no key"
    );
    let solo = env.apply_ready("solo", spec("solo", &own, 7)).await;
    let own_key = solo.status.unwrap().kms_key_arn.unwrap();

    // Recovery window 7: scheduled, not gone; the shared key stays.
    env.delete_and_wait_gone("creator", Duration::from_secs(20)).await;
    let d = env.describe("creator").await;
    assert!(d.deleted_date().is_some(), "scheduled for deletion");
    assert_eq!(key_state(&shared_key).await, "Enabled", "still used by sharer");
    assert!(alias_target(&shared).await.is_some());

    // Recovery window 0: gone at once; the key is not the sharer's to delete.
    env.delete_and_wait_gone("sharer", Duration::from_secs(20)).await;
    assert_eq!(
        env.describe_error("sharer").await.as_deref(),
        Some("ResourceNotFoundException")
    );
    assert_eq!(
        key_state(&shared_key).await,
        "Enabled",
        "the sharer did not create it"
    );

    // A key this object created and nothing else uses is scheduled for deletion.
    env.delete_and_wait_gone("solo", Duration::from_secs(20)).await;
    assert!(env.describe("solo").await.deleted_date().is_some());
    assert_eq!(key_state(&own_key).await, "PendingDeletion");
    assert_eq!(alias_target(&own).await, None, "alias removed");
    env.wait_event("solo", "KmsKeyDeleted").await;
    env.wait_event("solo", "Deleted").await;
}

#[tokio::test]
async fn a_failed_key_deletion_is_retried_after_the_secret_is_gone() {
    let mut env = Env::new().await;
    let proxy = AwsProxy::start(&testbed().aws_endpoint);
    env.start_rotor_with_endpoint(&["--delete-created-kms-keys"], &proxy.url);
    let key_alias = env.alias("retry");
    let rs = env
        .apply_ready(
            "gone",
            json!({
                "secretsManager": {"name": env.aws_name("gone"), "initialValue": {"string": "v"},
                                   "kmsKey": {"alias": key_alias, "create": true},
                                   "deletionPolicy": "Delete", "recoveryWindowInDays": 0},
                "refreshInterval": "1s",
            }),
        )
        .await;
    let key_arn = rs.status.unwrap().kms_key_arn.unwrap();
    // The secret is force-deleted, then scheduling the key's deletion fails once.
    proxy.fault("ScheduleKeyDeletion", 1, "error", None);
    env.delete_and_wait_gone("gone", Duration::from_secs(20)).await;
    assert!(proxy.active_faults().is_empty(), "the fault fired");
    assert_eq!(
        env.describe_error("gone").await.as_deref(),
        Some("ResourceNotFoundException")
    );
    assert_eq!(
        key_state(&key_arn).await,
        "PendingDeletion",
        "the key is not leaked"
    );
    assert_eq!(alias_target(&key_alias).await, None);
    env.wait_event("gone", "CleanupFailed").await;
}

#[tokio::test]
async fn cleanup_gives_up_after_the_timeout_when_aws_is_unreachable() {
    let mut env = Env::new().await;
    env.start_rotor(&[]);
    env.apply_ready(
        "stuck",
        json!({
            "secretsManager": {"name": env.aws_name("stuck"), "initialValue": {"string": "s"},
                               "deletionPolicy": "Delete", "recoveryWindowInDays": 0},
            "refreshInterval": "1s",
        }),
    )
    .await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    env.start_rotor_with_endpoint(&["--cleanup-timeout", "5s"], &dead_url);
    let start = Instant::now();
    env.delete_and_wait_gone("stuck", Duration::from_secs(35)).await;
    assert!(
        start.elapsed() >= Duration::from_secs(4),
        "released before the timeout: {:?}",
        start.elapsed()
    );
    let ev = env.wait_event("stuck", "CleanupAbandoned").await;
    assert_eq!(ev.type_.as_deref(), Some("Warning"));
    assert!(ev.note.unwrap_or_default().contains("by hand"));
    env.wait_event("stuck", "CleanupFailed").await;
    // AWS was never reached: the secret is still there, still tagged.
    let d = env.describe("stuck").await;
    assert!(d.deleted_date().is_none());
    assert_eq!(tags_of(&d).get(OWNER_TAG), Some(&env.owner("stuck")));
}

// ---------------------------------------------------------------------------
// 8. Restore.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn an_owned_secret_scheduled_for_deletion_is_restored() {
    let mut env = Env::new().await;
    env.start_rotor(&[]);
    let rs = env.apply_ready("back",
        json!({
            "secretsManager": {"name": env.aws_name("back"), "initialValue": {"string": "back-value-Lp0"}},
            "refreshInterval": "1s",
        }),
    )
    .await;
    let arn = rs.status.unwrap().arn.unwrap();
    env.sm
        .delete_secret()
        .secret_id(&arn)
        .recovery_window_in_days(7)
        .send()
        .await
        .unwrap();
    assert!(env.describe("back").await.deleted_date().is_some());
    // No spec change: the sweep (which includes secrets scheduled for
    // deletion) notices and the object restores its secret.
    eventually("restored", Duration::from_secs(20), || async {
        env.describe("back").await.deleted_date().is_none().then_some(())
    })
    .await;
    env.wait_event("back", "Restored").await;
    let rs = env.wait_ready("back").await;
    assert_eq!(
        rs.status.unwrap().arn.as_deref(),
        Some(arn.as_str()),
        "the same secret"
    );
    assert_eq!(env.secret_data("back").await.unwrap()["value"], "back-value-Lp0");
    assert_eq!(env.version_count("back").await, 1);
    env.assert_no_leak(&["back-value-Lp0"]).await;
}

/// A secret force-deleted outside rotor is not silently re-created with a
/// new generated password: the Secret keeps the last value and the
/// condition says what happened and what to do.
#[tokio::test]
async fn a_secret_deleted_outside_rotor_is_reported_not_recreated() {
    let mut env = Env::new().await;
    env.start_rotor(&[]);
    let rs = env
        .apply_ready(
            "gone",
            json!({
                "secretsManager": {"name": env.aws_name("gone"),
                                   "initialValue": {"generate": [{"key": "password", "length": 24}]}},
                "refreshInterval": "1s",
            }),
        )
        .await;
    let arn = rs.status.unwrap().arn.unwrap();
    let before = env.secret_data("gone").await.unwrap();
    env.sm
        .delete_secret()
        .secret_id(&arn)
        .force_delete_without_recovery(true)
        .send()
        .await
        .unwrap();
    let rs = env
        .wait_condition("gone", "SecretReady", "False", "SecretGone")
        .await;
    let msg = &condition(&rs, "SecretReady").unwrap().message;
    assert!(msg.contains("re-create this RotatedSecret"), "{msg}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        env.secret_data("gone").await.unwrap(),
        before,
        "the Secret keeps its value"
    );
    let err = env
        .sm
        .describe_secret()
        .secret_id(env.aws_name("gone"))
        .send()
        .await;
    assert!(err.is_err(), "rotor did not create a new secret");
    env.assert_no_leak(&[before["password"].as_str()]).await;
}

// ---------------------------------------------------------------------------
// 9. Bad inputs: a clear condition or a schema rejection, and nothing
//    changed in AWS.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn bad_inputs_are_refused_and_change_nothing() {
    let mut env = Env::new().await;
    let kms = kms();
    let new_key = || async {
        kms.create_key()
            .description("rotor test key")
            .send()
            .await
            .unwrap()
            .key_metadata()
            .unwrap()
            .key_id()
            .to_owned()
    };
    let disabled = new_key().await;
    kms.disable_key().key_id(&disabled).send().await.unwrap();
    let pending = new_key().await;
    kms.schedule_key_deletion()
        .key_id(&pending)
        .pending_window_in_days(7)
        .send()
        .await
        .unwrap();
    let foreign = env
        .create_aws_secret(
            "taken",
            "foreign-value-Tt5",
            Some(&format!("{CLUSTER}/elsewhere/other")),
        )
        .await;

    let proxy = AwsProxy::start(&testbed().aws_endpoint);
    env.start_rotor_with_endpoint(&[], &proxy.url);

    let sm = |name: &str| json!({"name": env.aws_name(name), "initialValue": {"string": "v"}});
    let with_sm = |name: &str, extra: Value| {
        let mut s = sm(name);
        for (k, v) in extra.as_object().unwrap() {
            s[k] = v.clone();
        }
        json!({"secretsManager": s, "refreshInterval": "1s"})
    };
    let with_rotation = |name: &str, schedule: &str, window: Option<&str>| {
        let mut r = json!({"lambdaArn": LAMBDA, "schedule": schedule});
        if let Some(w) = window {
            r["window"] = json!(w);
        }
        json!({"secretsManager": sm(name), "rotation": r, "refreshInterval": "1s"})
    };
    let unknown_key = "arn:aws:kms:us-east-1:123456789012:key/00000000-1111-2222-3333-444444444444";

    // (object, spec, condition type, reason, what the message must name)
    let cases: Vec<(&str, Value, &str, &str, &str)> = vec![
        (
            "unknown-key",
            with_sm("unknown-key", json!({"kmsKey": {"id": unknown_key}})),
            "KmsKeyReady",
            "KmsKeyNotFound",
            "secretsManager.kmsKey",
        ),
        (
            "disabled-key",
            with_sm("disabled-key", json!({"kmsKey": {"id": disabled}})),
            "KmsKeyReady",
            "KmsKeyUnusable",
            "secretsManager.kmsKey",
        ),
        (
            "pending-key",
            with_sm("pending-key", json!({"kmsKey": {"id": pending}})),
            "KmsKeyReady",
            "KmsKeyUnusable",
            "PendingDeletion",
        ),
        (
            "missing-alias",
            with_sm(
                "missing-alias",
                json!({"kmsKey": {"alias": env.alias("missing")}}),
            ),
            "KmsKeyReady",
            "KmsKeyNotFound",
            "create: true",
        ),
        (
            "rate-too-often",
            with_rotation("rate-too-often", "rate(1 hour)", None),
            "Ready",
            "InvalidSpec",
            "rotation.schedule",
        ),
        (
            "window-too-long",
            with_rotation("window-too-long", "rate(4 hours)", Some("4h")),
            "Ready",
            "InvalidSpec",
            "rotation.window",
        ),
        (
            "public-policy",
            with_sm(
                "public-policy",
                json!({"resourcePolicy": {"Version": "2012-10-17", "Statement": [
                    {"Effect": "Allow", "Principal": "*", "Action": "secretsmanager:GetSecretValue", "Resource": "*"}]}}),
            ),
            "Ready",
            "InvalidSpec",
            "secretsManager.resourcePolicy",
        ),
        (
            "policy-no-statement",
            with_sm(
                "policy-no-statement",
                json!({"resourcePolicy": {"Version": "2012-10-17"}}),
            ),
            "Ready",
            "InvalidSpec",
            "secretsManager.resourcePolicy",
        ),
        (
            "collision",
            with_sm("taken", json!({})),
            "SecretReady",
            "OwnedByAnother",
            "secretsManager.name",
        ),
        (
            "id-and-alias",
            with_sm(
                "id-and-alias",
                json!({"kmsKey": {"id": disabled, "alias": env.alias("x")}}),
            ),
            "Ready",
            "InvalidSpec",
            "secretsManager.kmsKey",
        ),
        (
            "dup-replicas",
            with_sm(
                "dup-replicas",
                json!({"replicaRegions": [{"region": "us-west-2"}, {"region": "us-west-2"}]}),
            ),
            "Ready",
            "InvalidSpec",
            "secretsManager.replicaRegions",
        ),
        (
            "impossible-generate",
            json!({"secretsManager": {"name": env.aws_name("impossible-generate"), "initialValue": {
                "template": {"user": "u"},
                "generate": [{"key": "password", "excludePunctuation": true,
                              "excludeCharacters": "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"}]}},
                   "refreshInterval": "1s"}),
            "Ready",
            "InvalidSpec",
            "secretsManager.initialValue.generate",
        ),
        (
            "bad-data-key",
            json!({"secretsManager": sm("bad-data-key"), "target": {"template": {"bad key/x": "{{ value }}"}},
                   "refreshInterval": "1s"}),
            "Ready",
            "InvalidSpec",
            "target.template",
        ),
        (
            "explicit-no-targets",
            json!({"secretsManager": sm("explicit-no-targets"), "rollout": {"mode": "Explicit"},
                   "refreshInterval": "1s"}),
            "Ready",
            "InvalidSpec",
            "rollout.targets",
        ),
    ];
    for (name, spec, ..) in &cases {
        env.apply_rs(name, spec.clone()).await;
    }

    // Rejected by the schema: the API server answers 422, nothing is stored.
    // (Created, not server-side applied: 1.20's apply answers a type
    // mismatch such as a list for an object with a 500 before validating.)
    let schema_cases: Vec<(&str, Value, &str)> = vec![
        (
            "every-day",
            with_rotation("every-day", "every day", None),
            "spec.rotation.schedule",
        ),
        (
            "recovery-3",
            with_sm(
                "recovery-3",
                json!({"deletionPolicy": "Delete", "recoveryWindowInDays": 3}),
            ),
            "recoveryWindowInDays",
        ),
        (
            "recovery-31",
            with_sm(
                "recovery-31",
                json!({"deletionPolicy": "Delete", "recoveryWindowInDays": 31}),
            ),
            "recoveryWindowInDays",
        ),
        (
            "policy-list",
            with_sm("policy-list", json!({"resourcePolicy": [{"Effect": "Allow"}]})),
            "spec.secretsManager.resourcePolicy",
        ),
        (
            "alias-no-prefix",
            with_sm(
                "alias-no-prefix",
                json!({"kmsKey": {"alias": "my-key", "create": true}}),
            ),
            "spec.secretsManager.kmsKey.alias",
        ),
        (
            "deletion-policy",
            with_sm("deletion-policy", json!({"deletionPolicy": "Destroy"})),
            "spec.secretsManager.deletionPolicy",
        ),
        (
            "window-25h",
            with_rotation("window-25h", "rate(7 days)", Some("25h")),
            "spec.rotation.window",
        ),
    ];
    for (name, spec, field) in &schema_cases {
        env.expect_schema_rejection(name, spec, field).await;
    }

    for (name, _, type_, reason, needle) in &cases {
        let rs = env.wait_condition(name, type_, "False", reason).await;
        let c = condition(&rs, type_).unwrap();
        assert!(
            c.message.contains(needle),
            "{name}: {needle:?} not in {:?}",
            c.message
        );
        let ready = condition(&rs, "Ready").unwrap();
        assert_eq!(ready.status, "False", "{name}");
        assert_eq!(ready.reason, *reason, "{name}: Ready carries the reason");
        assert!(env.secret_data(name).await.is_none(), "{name}: no Secret written");
    }
    // A few more reconciles of every object, then: nothing written to AWS.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let calls = proxy.calls();
    assert_eq!(
        writes(&calls),
        BTreeMap::new(),
        "AWS writes for bad inputs: {calls:?}"
    );
    assert!(reads(&calls) > 0, "{calls:?}");
    for (name, ..) in &cases {
        if *name != "collision" {
            assert_eq!(
                env.describe_error(name).await.as_deref(),
                Some("ResourceNotFoundException"),
                "{name}: no AWS secret created"
            );
        }
    }
    let d = env.sm.describe_secret().secret_id(&foreign).send().await.unwrap();
    assert_eq!(
        tags_of(&d).get(OWNER_TAG).map(String::as_str),
        Some(format!("{CLUSTER}/elsewhere/other").as_str()),
        "the foreign owner tag is untouched"
    );
    assert_eq!(env.version_count("taken").await, 1);
    assert_eq!(key_state(&disabled).await, "Disabled");
    assert_eq!(key_state(&pending).await, "PendingDeletion");
    assert!(
        alias_target(&env.alias("missing")).await.is_none(),
        "no key created"
    );
    env.assert_no_leak(&["foreign-value-Tt5"]).await;
}
