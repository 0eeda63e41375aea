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

use aws_sdk_secretsmanager::error::ProvideErrorMetadata;
use aws_sdk_secretsmanager::operation::describe_secret::DescribeSecretOutput;
use aws_sdk_secretsmanager::types::{Filter, FilterNameStringType, Tag};
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, Patch, PatchParams};
use rotor::api::RotatedSecret;
use serde_json::{Value, json};

use crate::common::{CLUSTER, Env, REGION, condition, eventually, testbed};
use crate::proxy::AwsProxy;

const LAMBDA: &str = "arn:aws:lambda:us-east-1:123456789012:function:secret-rotation";
const OWNER_TAG: &str = "rotor.dev/owner";
/// The seed's exclusions: `"@/\`.
const EXCLUDED: &str = "\"@/\\";
const PUNCTUATION: &str = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";

// ---------------------------------------------------------------------------
// Helpers: AWS clients and state, proxy counts, waiting.
// ---------------------------------------------------------------------------

pub(crate) fn kms() -> aws_sdk_kms::Client {
    let conf = aws_sdk_kms::Config::builder()
        .behavior_version(aws_sdk_kms::config::BehaviorVersion::latest())
        .region(aws_sdk_kms::config::Region::new(REGION))
        .endpoint_url(&testbed().aws_endpoint)
        .credentials_provider(aws_sdk_kms::config::Credentials::new(
            "testing", "testing", None, None, "tests",
        ))
        .build();
    aws_sdk_kms::Client::from_conf(conf)
}

fn sm_in(region: &str) -> aws_sdk_secretsmanager::Client {
    let base = crate::common::secrets_manager(&testbed().aws_endpoint);
    aws_sdk_secretsmanager::Client::from_conf(
        base.config()
            .to_builder()
            .region(aws_sdk_secretsmanager::config::Region::new(region.to_owned()))
            .build(),
    )
}

/// A KMS alias unique to this test (aliases are global per region in moto).
fn alias(env: &Env, what: &str) -> String {
    format!("alias/{}{what}", env.prefix)
}

pub(crate) async fn describe(env: &Env, name: &str) -> DescribeSecretOutput {
    env.sm
        .describe_secret()
        .secret_id(env.aws_name(name))
        .send()
        .await
        .unwrap_or_else(|e| panic!("describe {name}: {e:?}"))
}

/// DescribeSecret's error code, `None` when the secret exists.
pub(crate) async fn describe_error(env: &Env, name: &str) -> Option<String> {
    match env
        .sm
        .describe_secret()
        .secret_id(env.aws_name(name))
        .send()
        .await
    {
        Ok(_) => None,
        Err(e) => Some(e.code().unwrap_or("no code").to_owned()),
    }
}

fn tags_of(d: &DescribeSecretOutput) -> BTreeMap<String, String> {
    d.tags()
        .iter()
        .map(|t| {
            (
                t.key().unwrap_or_default().to_owned(),
                t.value().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn current_version(d: &DescribeSecretOutput) -> String {
    d.version_ids_to_stages()
        .unwrap()
        .iter()
        .find(|(_, s)| s.iter().any(|s| s == "AWSCURRENT"))
        .map(|(v, _)| v.clone())
        .expect("an AWSCURRENT version")
}

async fn version_count(env: &Env, name: &str) -> usize {
    env.sm
        .list_secret_version_ids()
        .secret_id(env.aws_name(name))
        .include_deprecated(true)
        .send()
        .await
        .unwrap()
        .versions()
        .len()
}

async fn current_json(env: &Env, name: &str) -> Value {
    let out = env
        .sm
        .get_secret_value()
        .secret_id(env.aws_name(name))
        .version_stage("AWSCURRENT")
        .send()
        .await
        .unwrap();
    serde_json::from_str(out.secret_string().unwrap()).expect("a JSON secret")
}

async fn policy_of(env: &Env, name: &str) -> Option<Value> {
    let out = env
        .sm
        .get_resource_policy()
        .secret_id(env.aws_name(name))
        .send()
        .await
        .unwrap();
    out.resource_policy()
        .map(|p| serde_json::from_str(p).expect("policy is JSON"))
}

/// Secrets with exactly this name (ListSecrets' name filter is a prefix match).
async fn secrets_named(env: &Env, name: &str) -> usize {
    let full = env.aws_name(name);
    let out = env
        .sm
        .list_secrets()
        .filters(
            Filter::builder()
                .key(FilterNameStringType::Name)
                .values(&full)
                .build(),
        )
        .include_planned_deletion(true)
        .max_results(100)
        .send()
        .await
        .unwrap();
    out.secret_list()
        .iter()
        .filter(|s| s.name() == Some(full.as_str()))
        .count()
}

/// Simulated rotations of `arn` so far (the patched moto's test endpoint).
pub(crate) fn rotations(arn: &str) -> u64 {
    let url = format!("{}/rotor-test/rotations", testbed().aws_endpoint);
    let out = std::process::Command::new("curl")
        .args(["-sf", &url])
        .output()
        .expect("curl");
    assert!(out.status.success(), "GET /rotor-test/rotations failed");
    let counts: BTreeMap<String, u64> = serde_json::from_slice(&out.stdout).unwrap();
    counts.get(arn).copied().unwrap_or(0)
}

/// Every KMS key (in any state) whose owner tag names `owner`.
pub(crate) async fn keys_owned_by(owner: &str) -> Vec<String> {
    let kms = kms();
    let mut ids = Vec::new();
    let mut marker = None;
    loop {
        let page = kms
            .list_keys()
            .limit(1000)
            .set_marker(marker)
            .send()
            .await
            .unwrap();
        for k in page.keys() {
            let id = k.key_id().unwrap();
            let Ok(tags) = kms.list_resource_tags().key_id(id).send().await else {
                continue;
            };
            if tags
                .tags()
                .iter()
                .any(|t| t.tag_key() == OWNER_TAG && t.tag_value() == owner)
            {
                ids.push(id.to_owned());
            }
        }
        marker = page.next_marker().map(str::to_owned);
        if !page.truncated() || marker.is_none() {
            return ids;
        }
    }
}

/// The key id an alias points at, from ListAliases.
async fn alias_target(alias: &str) -> Option<String> {
    let kms = kms();
    let mut marker = None;
    loop {
        let page = kms
            .list_aliases()
            .limit(100)
            .set_marker(marker)
            .send()
            .await
            .unwrap();
        if let Some(a) = page.aliases().iter().find(|a| a.alias_name() == Some(alias)) {
            return a.target_key_id().map(str::to_owned);
        }
        marker = page.next_marker().map(str::to_owned);
        if !page.truncated() || marker.is_none() {
            return None;
        }
    }
}

async fn key_state(key: &str) -> String {
    kms()
        .describe_key()
        .key_id(key)
        .send()
        .await
        .unwrap()
        .key_metadata()
        .unwrap()
        .key_state()
        .unwrap()
        .as_str()
        .to_owned()
}

/// Calls that are not reads: every operation not starting with Describe/Get/List.
fn writes(calls: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    calls
        .iter()
        .filter(|(op, _)| !["Describe", "Get", "List"].iter().any(|p| op.starts_with(p)))
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

fn reads(calls: &BTreeMap<String, u64>) -> u64 {
    calls.values().sum::<u64>() - writes(calls).values().sum::<u64>()
}

/// The proxy's active fault rules (empty once every injected fault fired).
fn active_faults(proxy: &AwsProxy) -> Vec<Value> {
    let out = std::process::Command::new("curl")
        .args(["-sf", &format!("{}/_proxy/faults", proxy.url)])
        .output()
        .expect("curl");
    serde_json::from_slice(&out.stdout).expect("faults are a JSON list")
}

pub(crate) fn rotor_log(env: &Env) -> String {
    env.rotor.as_ref().map(|r| r.logs()).unwrap_or_default()
}

/// Ready=True for the object's current generation.
pub(crate) async fn wait_ready(env: &Env, name: &str) -> RotatedSecret {
    let generation = env.rs_api().get(name).await.unwrap().metadata.generation;
    env.wait_rs(name, "Ready=True at the current generation", |rs| {
        rs.status
            .as_ref()
            .is_some_and(|s| s.observed_generation == generation)
            && condition(rs, "Ready")
                .is_some_and(|c| c.status == "True" && c.observed_generation == generation)
    })
    .await
}

/// Applies `spec` and waits until it is converged (Ready at its generation).
pub(crate) async fn apply_ready(env: &Env, name: &str, spec: Value) -> RotatedSecret {
    env.apply_rs(name, spec).await;
    wait_ready(env, name).await
}

/// Merge-patches the spec, as `kubectl apply` (client-side) or `kubectl edit`
/// do. Used to remove a field: on the 1.20 test bed, server-side apply turns a
/// removed `rotation` into `rotation: {}` and a removed `resourcePolicy` into
/// `null`, both of which the schema rejects.
pub(crate) async fn merge_spec(env: &Env, name: &str, spec_patch: Value) {
    env.rs_api()
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": spec_patch})),
        )
        .await
        .expect("merge-patch spec");
}

pub(crate) async fn annotate(env: &Env, name: &str, key: &str, value: &str) {
    let patch = json!({"metadata": {"annotations": {key: value}}});
    env.rs_api()
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("annotate");
}

async fn events_for(env: &Env, name: &str, reason: &str) -> Vec<Event> {
    env.events()
        .await
        .into_iter()
        .filter(|e| {
            e.reason.as_deref() == Some(reason)
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
        })
        .collect()
}

async fn wait_event(env: &Env, name: &str, reason: &str) -> Event {
    eventually(
        &format!("a {reason} event for {name}"),
        Duration::from_secs(20),
        || async { events_for(env, name, reason).await.into_iter().next() },
    )
    .await
}

async fn delete_and_wait_gone(env: &Env, name: &str, timeout: Duration) {
    env.rs_api()
        .delete(name, &DeleteParams::default())
        .await
        .expect("delete RotatedSecret");
    let deadline = Instant::now() + timeout;
    while env.rs_api().get_opt(name).await.unwrap().is_some() {
        assert!(
            Instant::now() < deadline,
            "{name} still present after {timeout:?} (finalizer not removed)\nrotor log:\n{}",
            rotor_log(env)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

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
    let alias = alias(&env, "shop-secrets");
    env.start_rotor(&[]);
    let rs = apply_ready(
        &env,
        "db-credentials",
        seed_spec(&env, "shop/db-credentials", &alias),
    )
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
    let d = describe(&env, "shop/db-credentials").await;
    assert_eq!(d.arn(), Some(arn.as_str()));
    assert_eq!(d.description(), Some("Database credentials for the shop"));
    assert_eq!(d.kms_key_id(), Some(key_arn.as_str()));
    let tags = tags_of(&d);
    assert_eq!(tags.get("Environment").map(String::as_str), Some("Demo"));
    assert_eq!(tags.get("Application").map(String::as_str), Some("MyApp"));
    assert_eq!(tags.get(OWNER_TAG), Some(&me));
    assert_eq!(tags.len(), 3, "{tags:?}");

    // The value: the template plus a 20-character password honouring the rules.
    let value = current_json(&env, "shop/db-credentials").await;
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
    assert_eq!(policy_of(&env, "shop/db-credentials").await, Some(seed_policy()));
    assert_rotation(&d, "rate(7 days)", Some("2h"));
    assert_eq!(
        version_count(&env, "shop/db-credentials").await,
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

    wait_event(&env, "db-credentials", "KmsKeyCreated").await;
    wait_event(&env, "db-credentials", "Created").await;
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
    let mut spec = seed_spec(&env, "db", &alias(&env, "key"));
    spec["secretsManager"]["replicaRegions"] = json!([{"region": "us-west-2"}]);
    spec["secretsManager"]["deletionPolicy"] = json!("Delete");
    spec["secretsManager"]["recoveryWindowInDays"] = json!(7);
    let rs = apply_ready(&env, "db", spec).await;
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
        condition(&wait_ready(&env, "db").await, "Ready").unwrap().status,
        "True"
    );
    assert_eq!(version_count(&env, "db").await, 1);
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
        let key_alias = alias(&env, &format!("crash-{i}"));
        let mut spec = seed_spec(&env, &name, &key_alias);
        spec["target"] = json!({"name": name});
        spec["rotation"]["rotateImmediately"] = json!(immediately);
        proxy.reset();
        proxy.fault(op, 1, "after", None);
        env.apply_rs(&name, spec).await;
        let rs = wait_ready(&env, &name).await;
        let ctx = format!("{op} (rotateImmediately {immediately})");
        assert!(active_faults(&proxy).is_empty(), "{ctx}: the fault fired");
        let calls = proxy.calls();
        assert_eq!(
            calls.get(op),
            Some(&1),
            "{ctx}: the lost write was recognised, not repeated: {calls:?}"
        );
        assert!(
            rotor_log(&env).contains(&format!("AWS {op} failed")),
            "{ctx}: rotor saw the error"
        );

        let me = env.owner(&name);
        let keys = keys_owned_by(&me).await;
        assert_eq!(keys.len(), 1, "{ctx}: exactly one key for {me}: {keys:?}");
        assert_eq!(alias_target(&key_alias).await.as_ref(), Some(&keys[0]), "{ctx}");
        assert_eq!(key_state(&keys[0]).await, "Enabled", "{ctx}");
        assert_eq!(secrets_named(&env, &name).await, 1, "{ctx}");
        let d = describe(&env, &name).await;
        let status = rs.status.as_ref().unwrap();
        assert_eq!(d.kms_key_id(), status.kms_key_arn.as_deref(), "{ctx}");
        assert!(
            status.kms_key_arn.as_deref().unwrap().ends_with(&keys[0]),
            "{ctx}"
        );
        assert_eq!(tags_of(&d).get(OWNER_TAG), Some(&me), "{ctx}");
        assert_eq!(policy_of(&env, &name).await, Some(seed_policy()), "{ctx}");
        assert_rotation(&d, "rate(7 days)", Some("2h"));
        let expected = if immediately { 1 } else { 0 };
        assert_eq!(rotations(d.arn().unwrap()), expected, "{ctx}: rotations");
        assert_eq!(
            version_count(&env, &name).await,
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
    let key_alias = alias(&env, "stopped");
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
        condition(&rs, "KmsKeyReady").map(|c| c.reason.as_str()),
        Some("CreatingKey"),
        "the attempt was recorded before the call"
    );

    proxy.clear_faults();
    env.start_rotor_with_endpoint(&[], &proxy.url);
    let rs = wait_ready(&env, "db").await;
    assert_eq!(proxy.calls().get("CreateKey"), Some(&1), "no second CreateKey");
    assert_eq!(keys_owned_by(&me).await, keys, "exactly one key");
    assert_eq!(alias_target(&key_alias).await.as_ref(), Some(&keys[0]));
    let key_arn = rs.status.unwrap().kms_key_arn.unwrap();
    assert!(key_arn.ends_with(&keys[0]));
    assert_eq!(describe(&env, "db").await.kms_key_id(), Some(key_arn.as_str()));
}

#[tokio::test]
async fn racing_creators_of_one_alias_end_with_one_key() {
    let mut env = Env::new().await;
    let proxy = AwsProxy::start(&testbed().aws_endpoint);
    // Both objects find the alias missing and create a key before either
    // creates the alias: one loses the alias and must use the winner's key.
    proxy.fault_spec(json!({"operation": "CreateKey", "count": 2, "kind": "delay", "seconds": 2}));
    env.start_rotor_with_endpoint(&[], &proxy.url);
    let key_alias = alias(&env, "race");
    for name in ["a", "b"] {
        let mut spec = seed_spec(&env, name, &key_alias);
        spec["target"] = json!({"name": name});
        env.apply_rs(name, spec).await;
    }
    let a = wait_ready(&env, "a").await;
    let b = wait_ready(&env, "b").await;
    let calls = proxy.calls();
    assert_eq!(calls.get("CreateKey"), Some(&2), "both raced: {calls:?}");
    let winner = alias_target(&key_alias).await.expect("alias exists");
    let arn_a = a.status.unwrap().kms_key_arn.unwrap();
    let arn_b = b.status.unwrap().kms_key_arn.unwrap();
    assert_eq!(arn_a, arn_b, "both use one key");
    assert!(arn_a.ends_with(&winner));
    for name in ["a", "b"] {
        assert_eq!(describe(&env, name).await.kms_key_id(), Some(arn_a.as_str()));
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

    apply_ready(
        &env,
        "conv",
        spec(
            "first",
            json!({"Team": "a", "Cost": "1", "Gone": "x"}),
            Some(&policy1),
            json!([]),
        ),
    )
    .await;
    let d = describe(&env, "conv").await;
    assert_eq!(d.description(), Some("first"));
    let tags = tags_of(&d);
    assert_eq!(
        (tags.get("Team"), tags.get("Cost"), tags.get("Gone")),
        (Some(&"a".into()), Some(&"1".into()), Some(&"x".into()))
    );
    assert_eq!(policy_of(&env, "conv").await, Some(policy1.clone()));

    // A tag someone else put must survive everything rotor does.
    env.sm
        .tag_resource()
        .secret_id(&name)
        .tags(Tag::builder().key("Foreign").value("keep").build())
        .send()
        .await
        .unwrap();

    // Change, add and remove declared tags; change the description.
    apply_ready(
        &env,
        "conv",
        spec(
            "second",
            json!({"Team": "b", "Cost": "1", "New": "y"}),
            Some(&policy1),
            json!([]),
        ),
    )
    .await;
    let d = describe(&env, "conv").await;
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
        let d = describe(&env, "conv").await;
        (d.description() == Some("second") && tags_of(&d) == want).then_some(())
    })
    .await;

    // Policy changed, then removed: rotor put it, so rotor deletes it.
    apply_ready(
        &env,
        "conv",
        spec(
            "second",
            json!({"Team": "b", "Cost": "1", "New": "y"}),
            Some(&policy2),
            json!([]),
        ),
    )
    .await;
    assert_eq!(policy_of(&env, "conv").await, Some(policy2));
    merge_spec(&env, "conv", json!({"secretsManager": {"resourcePolicy": null}})).await;
    wait_ready(&env, "conv").await;
    assert_eq!(policy_of(&env, "conv").await, None, "rotor's policy removed");

    // Replicas: add us-west-2, then remove it.
    apply_ready(
        &env,
        "conv",
        spec(
            "second",
            json!({"Team": "b", "Cost": "1", "New": "y"}),
            None,
            json!([{"region": "us-west-2"}]),
        ),
    )
    .await;
    let d = describe(&env, "conv").await;
    let regions: Vec<_> = d.replication_status().iter().filter_map(|r| r.region()).collect();
    assert_eq!(regions, ["us-west-2"]);
    sm_in("us-west-2")
        .describe_secret()
        .secret_id(&name)
        .send()
        .await
        .expect("the replica exists in us-west-2");
    apply_ready(
        &env,
        "conv",
        spec(
            "second",
            json!({"Team": "b", "Cost": "1", "New": "y"}),
            None,
            json!([]),
        ),
    )
    .await;
    let d = describe(&env, "conv").await;
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
    apply_ready(
        &env,
        "fp",
        json!({"secretsManager": {"name": env.aws_name("foreign-policy")}, "refreshInterval": "1s"}),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await; // several converging reconciles
    assert_eq!(policy_of(&env, "foreign-policy").await, Some(seed_policy()));
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
    let rs = apply_ready(
        &env,
        "rot",
        spec(json!({"lambdaArn": LAMBDA, "schedule": "rate(7 days)", "window": "2h"})),
    )
    .await;
    let arn = rs.status.as_ref().unwrap().arn.clone().unwrap();
    assert_eq!(proxy.calls().get("RotateSecret"), Some(&1));
    assert_rotation(&describe(&env, "rot").await, "rate(7 days)", Some("2h"));
    assert_eq!(
        condition(&rs, "RotationConfigured").map(|c| c.reason.as_str()),
        Some("Configured"),
        "{:#?}\n{}",
        rs.status,
        rotor_log(&env)
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
    apply_ready(
        &env,
        "rot",
        spec(json!({"lambdaArn": LAMBDA, "schedule": "rate(14 days)", "window": "2h"})),
    )
    .await;
    assert_eq!(proxy.calls().get("RotateSecret"), Some(&1));
    let d = describe(&env, "rot").await;
    assert_rotation(&d, "rate(14 days)", Some("2h"));
    let next = |rs: &RotatedSecret| rs.status.as_ref().and_then(|s| s.next_rotation_date.clone());
    let rs14 = env.rs_api().get("rot").await.unwrap();
    assert!(
        next(&rs).is_some() && next(&rs14).is_some() && next(&rs14) > next(&rs),
        "status.nextRotationDate follows: {:?} then {:?}",
        next(&rs),
        next(&rs14)
    );
    assert_eq!(version_count(&env, "rot").await, 1, "no new version");
    assert_eq!(rotations(&arn), 0);
    wait_event(&env, "rot", "RotationConfigured").await;

    // Removing rotation cancels it.
    merge_spec(&env, "rot", json!({"rotation": null})).await;
    let rs = wait_ready(&env, "rot").await;
    assert_eq!(describe(&env, "rot").await.rotation_enabled(), Some(false));
    assert_eq!(rs.status.as_ref().unwrap().rotation_enabled, Some(false));
    assert_eq!(next(&rs), None, "no nextRotationDate once cancelled");
    assert_eq!(
        condition(&rs, "RotationConfigured").unwrap().reason,
        "NotConfigured"
    );
    assert_eq!(proxy.calls().get("CancelRotateSecret"), Some(&1));
    assert_eq!(rotations(&arn), 0);
    assert_eq!(version_count(&env, "rot").await, 1);
    wait_event(&env, "rot", "RotationCancelled").await;

    // rotateImmediately on a fresh object: exactly one rotation.
    let rs = apply_ready(
        &env,
        "now",
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
    assert_eq!(version_count(&env, "now").await, 2);
    let d = describe(&env, "now").await;
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
    apply_ready(
        &env,
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
    merge_spec(&env, "late", json!({"rotation": null})).await;
    env.wait_condition("late", "RotationConfigured", "True", "NotConfigured")
        .await;
    for touch in 0..8 {
        tokio::time::sleep(Duration::from_millis(750)).await;
        annotate(&env, "late", "test/touch", &touch.to_string()).await;
        let status = env.rs_api().get("late").await.unwrap().status.unwrap();
        assert_eq!(status.rotation_enabled, Some(false), "touch {touch}: {status:#?}");
        assert_eq!(
            status.next_rotation_date,
            None,
            "touch {touch}: {status:#?}\n{}",
            rotor_log(&env)
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
    let rs = apply_ready(
        &env,
        "rn",
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

    annotate(&env, "rn", "rotor.dev/rotate-now", "t1").await;
    env.wait_rs("rn", "rotateNowToken t1", token_is("t1")).await;
    assert_eq!(rotations(&arn), 1);
    assert_eq!(version_count(&env, "rn").await, 2);
    let ev = wait_event(&env, "rn", "RotationRequested").await;
    assert!(ev.note.unwrap_or_default().contains("t1"));
    let v1 = current_version(&describe(&env, "rn").await);
    env.wait_rs("rn", "synced to t1's version", |rs| {
        rs.status.as_ref().and_then(|s| s.synced_version_id.as_deref()) == Some(v1.as_str())
    })
    .await;

    // The same token again (re-applied, and more reconciles): nothing more.
    annotate(&env, "rn", "rotor.dev/rotate-now", "t1").await;
    env.apply_rs(
        "rn",
        json!({
            "secretsManager": {"name": env.aws_name("rn"), "initialValue": {"template": {"password": "first-Pw-k2"}}},
            "rotation": {"lambdaArn": LAMBDA, "schedule": "rate(30 days)"},
            "refreshInterval": "2s",
        }),
    )
    .await;
    wait_ready(&env, "rn").await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(rotations(&arn), 1, "t1 never twice");
    assert_eq!(version_count(&env, "rn").await, 2);

    // A new token: a second rotation.
    annotate(&env, "rn", "rotor.dev/rotate-now", "t2").await;
    env.wait_rs("rn", "rotateNowToken t2", token_is("t2")).await;
    assert_eq!(rotations(&arn), 2);
    assert_eq!(version_count(&env, "rn").await, 3);

    // t3 rotates, but rotor loses the response: retrying with the same
    // token must not rotate again.
    proxy.reset();
    proxy.fault("RotateSecret", 1, "after", None);
    annotate(&env, "rn", "rotor.dev/rotate-now", "t3").await;
    env.wait_rs("rn", "rotateNowToken t3", token_is("t3")).await;
    assert!(active_faults(&proxy).is_empty(), "the fault fired");
    assert_eq!(proxy.calls().get("RotateSecret"), Some(&2), "retried once");
    assert_eq!(rotations(&arn), 3, "t3 rotated exactly once");
    assert_eq!(version_count(&env, "rn").await, 4);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(rotations(&arn), 3);
    let notes: Vec<String> = events_for(&env, "rn", "RotationRequested")
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
    let key_alias = alias(&env, "retain");
    let rs = apply_ready(&env, "keep", seed_spec(&env, "keep", &key_alias)).await;
    let key_arn = rs.status.as_ref().unwrap().kms_key_arn.clone().unwrap();
    assert!(
        rs.metadata
            .finalizers
            .unwrap_or_default()
            .contains(&"rotor.dev/cleanup".to_owned())
    );

    delete_and_wait_gone(&env, "keep", Duration::from_secs(20)).await;
    let d = describe(&env, "keep").await;
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
    wait_event(&env, "keep", "Released").await;
    assert_eq!(
        tags_of(&d).get("rotor.dev/released-from"),
        Some(&env.owner("keep")),
        "released, re-claimable by the same object name"
    );

    // GitOps replace (delete, then apply again): the same namespace/name
    // re-claims its released secret without adopt, same ARN, same value.
    let again = apply_ready(&env, "keep", seed_spec(&env, "keep", &key_alias)).await;
    let status = again.status.as_ref().unwrap();
    assert_eq!(status.arn, rs.status.as_ref().unwrap().arn, "same secret");
    assert!(status.adopted, "treated as adopted: removes only what it adds");
    let d = describe(&env, "keep").await;
    assert_eq!(tags_of(&d).get(OWNER_TAG), Some(&env.owner("keep")));
    assert_eq!(tags_of(&d).get("rotor.dev/released-from"), None);
    assert_eq!(
        d.version_ids_to_stages().map(|v| v.len()),
        Some(1),
        "no new value"
    );
    wait_event(&env, "keep", "Reclaimed").await;
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
    let kept_alias = alias(&env, "kept");
    let kept = apply_ready(&env, "kept", spec("kept", &kept_alias)).await;
    let kept_key = kept.status.unwrap().kms_key_arn.unwrap();
    delete_and_wait_gone(&env, "kept", Duration::from_secs(20)).await;
    assert!(
        describe(&env, "kept").await.deleted_date().is_some(),
        "the secret goes"
    );
    assert_eq!(
        key_state(&kept_key).await,
        "Enabled",
        "the key stays without the opt-in"
    );
    assert!(alias_target(&kept_alias).await.is_some());

    env.start_rotor(&["--delete-created-kms-keys"]);
    let moved_alias = alias(&env, "moved");
    let moved = apply_ready(&env, "moved", spec("moved", &moved_alias)).await;
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
    delete_and_wait_gone(&env, "moved", Duration::from_secs(20)).await;
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
    let shared = alias(&env, "shared");
    let own = alias(&env, "own");
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
    let creator = apply_ready(&env, "creator", spec("creator", &shared, 7)).await;
    let shared_key = creator.status.unwrap().kms_key_arn.unwrap();
    let sharer = apply_ready(&env, "sharer", spec("sharer", &shared, 0)).await;
    assert_eq!(
        sharer.status.unwrap().kms_key_arn.as_deref(),
        Some(shared_key.as_str())
    );
    assert_eq!(
        keys_owned_by(&env.owner("sharer")).await.len(),
        0,
        "the sharer created no key"
    );
    let solo = apply_ready(&env, "solo", spec("solo", &own, 7)).await;
    let own_key = solo.status.unwrap().kms_key_arn.unwrap();

    // Recovery window 7: scheduled, not gone; the shared key stays.
    delete_and_wait_gone(&env, "creator", Duration::from_secs(20)).await;
    let d = describe(&env, "creator").await;
    assert!(d.deleted_date().is_some(), "scheduled for deletion");
    assert_eq!(key_state(&shared_key).await, "Enabled", "still used by sharer");
    assert!(alias_target(&shared).await.is_some());

    // Recovery window 0: gone at once; the key is not the sharer's to delete.
    delete_and_wait_gone(&env, "sharer", Duration::from_secs(20)).await;
    assert_eq!(
        describe_error(&env, "sharer").await.as_deref(),
        Some("ResourceNotFoundException")
    );
    assert_eq!(
        key_state(&shared_key).await,
        "Enabled",
        "the sharer did not create it"
    );

    // A key this object created and nothing else uses is scheduled for deletion.
    delete_and_wait_gone(&env, "solo", Duration::from_secs(20)).await;
    assert!(describe(&env, "solo").await.deleted_date().is_some());
    assert_eq!(key_state(&own_key).await, "PendingDeletion");
    assert_eq!(alias_target(&own).await, None, "alias removed");
    wait_event(&env, "solo", "KmsKeyDeleted").await;
    wait_event(&env, "solo", "Deleted").await;
}

#[tokio::test]
async fn a_failed_key_deletion_is_retried_after_the_secret_is_gone() {
    let mut env = Env::new().await;
    let proxy = AwsProxy::start(&testbed().aws_endpoint);
    env.start_rotor_with_endpoint(&["--delete-created-kms-keys"], &proxy.url);
    let key_alias = alias(&env, "retry");
    let rs = apply_ready(
        &env,
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
    delete_and_wait_gone(&env, "gone", Duration::from_secs(20)).await;
    assert!(active_faults(&proxy).is_empty(), "the fault fired");
    assert_eq!(
        describe_error(&env, "gone").await.as_deref(),
        Some("ResourceNotFoundException")
    );
    assert_eq!(
        key_state(&key_arn).await,
        "PendingDeletion",
        "the key is not leaked"
    );
    assert_eq!(alias_target(&key_alias).await, None);
    wait_event(&env, "gone", "CleanupFailed").await;
}

#[tokio::test]
async fn cleanup_gives_up_after_the_timeout_when_aws_is_unreachable() {
    let mut env = Env::new().await;
    env.start_rotor(&[]);
    apply_ready(
        &env,
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
    delete_and_wait_gone(&env, "stuck", Duration::from_secs(35)).await;
    assert!(
        start.elapsed() >= Duration::from_secs(4),
        "released before the timeout: {:?}",
        start.elapsed()
    );
    let ev = wait_event(&env, "stuck", "CleanupAbandoned").await;
    assert_eq!(ev.type_.as_deref(), Some("Warning"));
    assert!(ev.note.unwrap_or_default().contains("by hand"));
    wait_event(&env, "stuck", "CleanupFailed").await;
    // AWS was never reached: the secret is still there, still tagged.
    let d = describe(&env, "stuck").await;
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
    let rs = apply_ready(
        &env,
        "back",
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
    assert!(describe(&env, "back").await.deleted_date().is_some());
    // No spec change: the sweep (which includes secrets scheduled for
    // deletion) notices and the object restores its secret.
    eventually("restored", Duration::from_secs(20), || async {
        describe(&env, "back")
            .await
            .deleted_date()
            .is_none()
            .then_some(())
    })
    .await;
    wait_event(&env, "back", "Restored").await;
    let rs = wait_ready(&env, "back").await;
    assert_eq!(
        rs.status.unwrap().arn.as_deref(),
        Some(arn.as_str()),
        "the same secret"
    );
    assert_eq!(env.secret_data("back").await.unwrap()["value"], "back-value-Lp0");
    assert_eq!(version_count(&env, "back").await, 1);
    env.assert_no_leak(&["back-value-Lp0"]).await;
}

/// A secret force-deleted outside rotor is not silently re-created with a
/// new generated password: the Secret keeps the last value and the
/// condition says what happened and what to do.
#[tokio::test]
async fn a_secret_deleted_outside_rotor_is_reported_not_recreated() {
    let mut env = Env::new().await;
    env.start_rotor(&[]);
    let rs = apply_ready(
        &env,
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
                json!({"kmsKey": {"alias": alias(&env, "missing")}}),
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
                json!({"kmsKey": {"id": disabled, "alias": alias(&env, "x")}}),
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
                describe_error(&env, name).await.as_deref(),
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
    assert_eq!(version_count(&env, "taken").await, 1);
    assert_eq!(key_state(&disabled).await, "Disabled");
    assert_eq!(key_state(&pending).await, "PendingDeletion");
    assert!(
        alias_target(&alias(&env, "missing")).await.is_none(),
        "no key created"
    );
    env.assert_no_leak(&["foreign-value-Tt5"]).await;
}
