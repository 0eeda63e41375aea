//! Following rotations cheaply and restarting consumers exactly once per
//! version (issue 4), end to end through a `rotor run` process on the real
//! test bed: the version sweep, the cost of doing nothing (AWS calls counted at
//! a proxy in front of moto), Auto / Explicit / Disabled rollout, exactly-once
//! across re-runs, restarts and a write-then-crash, the SQS events path and
//! the metrics of this path.
//!
//! Rotations are done the way a rotation Lambda does them (`Env::rotate`:
//! PutSecretValue AWSPENDING, then UpdateSecretVersionStage), never with
//! moto's RotateSecret, and no object here configures `spec.rotation`, so no
//! object is ever in a rotation window.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::jiff::Timestamp;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
};
use rotor::api::{RotatedSecret, WorkloadKind};
use rotor::k8s::rollout::annotation_key;
use serde_json::{Value, json};

use crate::common::{
    AwsProxy, Env, REGION, condition, eventually, queue, queued_messages, testbed, uuid_like,
};

use WorkloadKind::{DaemonSet as Ds, Deployment as Deploy, StatefulSet as Sts};

// ---------------------------------------------------------------- helpers

/// A JSON secret value with a recognisable, unique password.
fn value(password: &str) -> String {
    json!({"username": "app", "password": password, "host": "db.example"}).to_string()
}

fn kind_name(kind: WorkloadKind) -> &'static str {
    match kind {
        Deploy => "Deployment",
        Sts => "StatefulSet",
        Ds => "DaemonSet",
    }
}

fn workload_api(env: &Env, kind: WorkloadKind) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("apps", "v1", kind_name(kind));
    Api::namespaced_with(env.client.clone(), &env.ns, &ApiResource::from_gvk(&gvk))
}

fn container(extra: Value) -> Value {
    let mut c = json!({"name": "app", "image": "busybox", "command": ["sleep", "3600"]});
    c.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    c
}

/// The ways a pod spec can use a Secret (plus `None`: it does not).
#[derive(Clone, Copy, Debug)]
enum Uses<'a> {
    Env(&'a str),
    EnvFrom(&'a str),
    Volume(&'a str),
    Projected(&'a str),
    /// Env of the first Secret and a volume of the second.
    Two(&'a str, &'a str),
    /// Another Secret, and a ConfigMap named like the watched Secret.
    Neither(&'a str),
}

fn pod_spec(uses: Uses<'_>) -> Value {
    let env = |s: &str| json!({"env": [{"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": s, "key": "password"}}}]});
    match uses {
        Uses::Env(s) => json!({"containers": [container(env(s))]}),
        Uses::EnvFrom(s) => {
            json!({"containers": [container(json!({"envFrom": [{"secretRef": {"name": s}}]}))]})
        }
        Uses::Volume(s) => json!({
            "containers": [container(json!({}))],
            "volumes": [{"name": "creds", "secret": {"secretName": s}}],
        }),
        Uses::Projected(s) => json!({
            "containers": [container(json!({}))],
            "volumes": [{"name": "all", "projected": {"sources": [
                {"configMap": {"name": "settings"}},
                {"secret": {"name": s}},
            ]}}],
        }),
        Uses::Two(a, b) => json!({
            "containers": [container(env(a))],
            "volumes": [{"name": "creds", "secret": {"secretName": b}}],
        }),
        Uses::Neither(s) => json!({
            "containers": [container(json!({
                "env": [{"name": "OTHER", "valueFrom": {"secretKeyRef": {"name": "unrelated", "key": "k"}}}],
                "envFrom": [{"configMapRef": {"name": s}}],
            }))],
            "volumes": [{"name": "cm", "configMap": {"name": s}}],
        }),
    }
}

/// Creates a workload (with a `team: blue` pod-template annotation that must
/// survive every roll) and returns its state as created.
async fn create_workload(env: &Env, kind: WorkloadKind, name: &str, uses: Uses<'_>) -> State {
    let labels = json!({"app": name});
    let mut spec = json!({
        "selector": {"matchLabels": labels},
        "template": {
            "metadata": {"labels": labels, "annotations": {"team": "blue"}},
            "spec": pod_spec(uses),
        },
    });
    if kind == Sts {
        spec["serviceName"] = json!(name);
    }
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": kind_name(kind),
        "metadata": {"name": name}, "spec": spec,
    }))
    .unwrap();
    workload_api(env, kind)
        .create(&PostParams::default(), &obj)
        .await
        .unwrap_or_else(|e| panic!("create {kind:?} {name}: {e}"));
    state(env, kind, name).await
}

/// What matters about a workload here: its generation (each pod-template
/// change bumps it: one restart) and its pod-template annotations.
#[derive(Clone, Debug, PartialEq)]
struct State {
    generation: i64,
    annotations: BTreeMap<String, String>,
}

impl State {
    fn rolled_for(&self, secret: &str) -> Option<&str> {
        self.annotations.get(&annotation_key(secret)).map(String::as_str)
    }
}

async fn state(env: &Env, kind: WorkloadKind, name: &str) -> State {
    let obj = workload_api(env, kind)
        .get(name)
        .await
        .unwrap_or_else(|e| panic!("get {kind:?} {name}: {e}"));
    let annotations = obj.data["spec"]["template"]["metadata"]["annotations"].clone();
    State {
        generation: obj.metadata.generation.expect("generation"),
        annotations: serde_json::from_value(annotations).unwrap_or_default(),
    }
}

type Snapshot = BTreeMap<(WorkloadKind, String), State>;

async fn snapshot(env: &Env, workloads: &[(WorkloadKind, &str)]) -> Snapshot {
    let mut out = Snapshot::new();
    for (kind, name) in workloads {
        out.insert((*kind, name.to_string()), state(env, *kind, name).await);
    }
    out
}

/// Asserts each workload's generation moved by exactly `bumps` since
/// `before`, and that its `rotor.dev/<secret>` annotation is `version`.
async fn assert_rolled(
    env: &Env,
    before: &Snapshot,
    workloads: &[(WorkloadKind, &str)],
    secret: &str,
    version: Option<&str>,
    bumps: i64,
) {
    for (kind, name) in workloads {
        let now = state(env, *kind, name).await;
        let was = &before[&(*kind, name.to_string())];
        assert_eq!(
            now.generation - was.generation,
            bumps,
            "{kind:?} {name}: expected {bumps} pod-template change(s), annotations now {:?}\nrotor log:\n{}",
            now.annotations,
            env.rotor_log()
        );
        assert_eq!(
            now.rolled_for(secret),
            version,
            "{kind:?} {name}: annotations {:?}",
            now.annotations
        );
        assert_eq!(
            now.annotations.get("team").map(String::as_str),
            Some("blue"),
            "{kind:?} {name}: other template annotations survive"
        );
    }
}

/// Creates the AWS secret (owned by the object) and applies a RotatedSecret
/// for it; waits until its Secret holds the first version and returns it.
async fn create_rs(env: &Env, name: &str, password: &str, extra: Value) -> String {
    env.create_aws_secret(name, &value(password), Some(&env.owner(name)))
        .await;
    env.apply_rs(name, rs_spec(env, name, extra)).await;
    let rs = env.wait_condition(name, "Synced", "True", "Synced").await;
    rs.status.unwrap().synced_version_id.unwrap()
}

/// `{"secretsManager": {"name": ...}, "refreshInterval": "1s"}` merged with `extra`.
fn rs_spec(env: &Env, name: &str, extra: Value) -> Value {
    let mut spec = json!({"secretsManager": {"name": env.aws_name(name)}, "refreshInterval": "1s"});
    spec.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    spec
}

fn synced(rs: &RotatedSecret) -> Option<&str> {
    rs.status.as_ref()?.synced_version_id.as_deref()
}

/// Waits until the object's Secret holds `version` and its RolledOut
/// condition speaks of that version (the rollout stage finished for it).
async fn wait_rolled(env: &Env, name: &str, version: &str) -> RotatedSecret {
    env.wait_rs(name, &format!("rollout of {version}"), |rs| {
        synced(rs) == Some(version) && condition(rs, "RolledOut").is_some_and(|c| c.message.contains(version))
    })
    .await
}

/// RolledOut Events on workload `kind name` for `version` (recorded on the
/// workload, related to the RotatedSecret).
async fn rolled_out_events(env: &Env, kind: WorkloadKind, name: &str, version: &str) -> usize {
    let needle = format!("Restarted for AWS version {version} ");
    env.events()
        .await
        .iter()
        .filter(|e| e.reason.as_deref() == Some("RolledOut"))
        .filter(|e| {
            e.regarding.as_ref().is_some_and(|r| {
                r.kind.as_deref() == Some(kind_name(kind)) && r.name.as_deref() == Some(name)
            })
        })
        .filter(|e| {
            e.related
                .as_ref()
                .is_some_and(|r| r.kind.as_deref() == Some("RotatedSecret"))
        })
        .filter(|e| e.note.as_deref().is_some_and(|n| n.contains(&needle)))
        .count()
}

async fn assert_one_event_each(env: &Env, workloads: &[(WorkloadKind, &str)], version: &str) {
    for (kind, name) in workloads {
        // Events are written during the reconcile, before its status.
        let n = rolled_out_events(env, *kind, name, version).await;
        assert_eq!(n, 1, "RolledOut events for {kind:?} {name} at {version}");
    }
}

fn rolled_out_names(rs: &RotatedSecret, version: &str) -> Vec<(WorkloadKind, String)> {
    let mut v: Vec<_> = rs
        .status
        .as_ref()
        .unwrap()
        .rolled_out
        .iter()
        .filter(|r| r.version_id == version)
        .map(|r| (r.kind, r.name.clone()))
        .collect();
    v.sort();
    v
}

fn owned(workloads: &[(WorkloadKind, &str)]) -> Vec<(WorkloadKind, String)> {
    let mut v: Vec<_> = workloads.iter().map(|(k, n)| (*k, n.to_string())).collect();
    v.sort();
    v
}

/// Sum of a metric's samples (all label sets, or those containing `labels`).
fn metric(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter(|l| l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn reconciles(env: &Env) -> f64 {
    let m = env.rotor.as_ref().unwrap().metrics().await;
    metric(&m, "rotor_reconciles_total", r#"outcome="success""#)
}

/// When the Secret got its current version, from rotor's annotation.
async fn written_at(env: &Env, secret: &str) -> Timestamp {
    let s = env.secret_api().get(secret).await.unwrap();
    s.metadata.annotations.unwrap()["rotor.dev/version-written-at"]
        .parse()
        .unwrap()
}

/// Sleeps until more than a second has passed since `t`: creationTimestamp
/// has whole seconds, and rotor treats a workload created in the same second
/// as a write as older than it (the safe side).
async fn sleep_past(t: Timestamp) {
    let until = t.as_millisecond() + 1100;
    let now = Timestamp::now().as_millisecond();
    if until > now {
        tokio::time::sleep(Duration::from_millis((until - now) as u64)).await;
    }
}

async fn patch_rs(env: &Env, name: &str, patch: Value) {
    env.rs_api()
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch RotatedSecret");
}

/// Waits for a proxy counter to reach `at_least`.
async fn wait_calls(proxy: &AwsProxy, op: &str, at_least: u64, timeout: Duration) {
    eventually(
        &format!("{at_least} {op} call(s) at the proxy"),
        timeout,
        || async { (proxy.calls().get(op).copied().unwrap_or(0) >= at_least).then_some(()) },
    )
    .await;
}

fn count(calls: &BTreeMap<String, u64>, op: &str) -> u64 {
    calls.get(op).copied().unwrap_or(0)
}

// ---------------------------------------------------------------- 1. and 2. cost

/// A rotation of one secret among three is noticed by the sweep, triggers
/// only that object, and costs exactly one GetSecretValue; the other
/// Secrets are not touched.
#[tokio::test]
async fn the_sweep_triggers_only_the_changed_object() {
    let mut env = Env::new().await;
    let proxy = AwsProxy::start(&testbed().aws_endpoint);
    env.start_rotor_with_endpoint(&[], &proxy.url);
    let names = ["a", "b", "c"];
    let mut v1 = BTreeMap::new();
    for n in names {
        v1.insert(n, create_rs(&env, n, &format!("pw-{n}-1-Qx7"), json!({})).await);
    }
    for n in names {
        env.wait_condition(n, "Ready", "True", "Ready").await;
    }
    // Let the follow-up reconciles of the first sync settle, then count
    // from a sweep on.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rv = |s: k8s_openapi::api::core::v1::Secret| s.metadata.resource_version.unwrap();
    let mut before = BTreeMap::new();
    for n in names {
        before.insert(n, rv(env.secret_api().get(n).await.unwrap()));
    }
    proxy.reset();

    let v2 = env.rotate("b", &value("pw-b-2-Qx7")).await;
    let started = Instant::now();
    eventually(
        "Secret b holds the new version",
        Duration::from_secs(10),
        || async {
            let s = env.secret_api().get("b").await.ok()?;
            (s.metadata.annotations?.get("rotor.dev/version-id") == Some(&v2)).then_some(())
        },
    )
    .await;
    let noticed = started.elapsed();
    assert_eq!(env.secret_data("b").await.unwrap()["password"], "pw-b-2-Qx7");
    // Three more sweeps: a late or repeated read would show up here.
    let lists = count(&proxy.calls(), "ListSecrets");
    wait_calls(&proxy, "ListSecrets", lists + 3, Duration::from_secs(10)).await;

    let calls = proxy.calls();
    assert_eq!(
        count(&calls, "GetSecretValue"),
        1,
        "one read, for the rotated secret only: {calls:?}\nrotor log:\n{}",
        env.rotor_log()
    );
    assert_eq!(
        count(&calls, "DescribeSecret"),
        0,
        "the sweep's data is enough to notice a rotation: {calls:?}"
    );
    assert!(
        noticed < Duration::from_secs(5),
        "noticed after {noticed:?} with refreshInterval 1s"
    );
    for n in ["a", "c"] {
        let s = env.secret_api().get(n).await.unwrap();
        assert_eq!(rv(s), before[n], "Secret {n} was not rewritten");
        let rs = env.rs_api().get(n).await.unwrap();
        assert_eq!(synced(&rs), Some(v1[n].as_str()));
    }
    let rs = env.rs_api().get("b").await.unwrap();
    assert_eq!(synced(&rs), Some(v2.as_str()));
    assert_eq!(
        rs.status.as_ref().unwrap().current_version_id.as_deref(),
        Some(v2.as_str())
    );
    env.assert_no_leak(&["pw-a-1-Qx7", "pw-b-1-Qx7", "pw-b-2-Qx7", "pw-c-1-Qx7"])
        .await;
}

/// The sweep acts on each ListSecrets page as it arrives: a rotation on the
/// first page reaches its Secret while the second page is still being
/// listed (held back here until the call times out), not after the whole
/// listing. At 10,000 secrets a listing takes seconds, which every rotation
/// the sweep noticed used to wait for.
#[tokio::test]
async fn a_rotation_on_the_first_page_does_not_wait_for_the_last() {
    let mut env = Env::new().await;
    // A cluster of its own, so that the listing is exactly these secrets.
    let cluster = format!("pages-{}", &uuid_like()[..8]);
    let proxy = AwsProxy::start(&testbed().aws_endpoint);
    env.start_rotor_with_endpoint(&["--cluster-name", &cluster], &proxy.url);
    let owner = |name: &str| format!("{cluster}/{}/{name}", env.ns);
    env.create_aws_secret("first", &value("pw-first-1-Qx7"), Some(&owner("first")))
        .await;
    // 5 s between sweeps: room to act between two of them.
    env.apply_rs("first", rs_spec(&env, "first", json!({"refreshInterval": "5s"})))
        .await;
    env.wait_condition("first", "Ready", "True", "Ready").await;
    // 100 more secrets of this cluster, owned by no object: two pages,
    // "first" on the first one (moto lists in creation order).
    for i in 0..100 {
        let name = format!("filler-{i:03}");
        env.create_aws_secret(&name, "{}", Some(&owner(&name))).await;
    }
    let sweeps = || async {
        let m = env.rotor.as_ref().unwrap().metrics().await;
        metric(&m, "rotor_version_sweeps_total", r#"outcome="success""#)
    };
    // One whole two-page sweep, then the end of the next: from here the
    // next ListSecrets is the first page of a sweep.
    let swept = sweeps().await;
    for n in [swept + 1.0, swept + 2.0] {
        eventually("a sweep", Duration::from_secs(20), || async {
            (sweeps().await >= n).then_some(())
        })
        .await;
    }
    // Page one answers; every later page is held past the call's timeout
    // (the oldest matching rule applies first).
    proxy.reset();
    proxy.fault_spec(json!({"operation": "ListSecrets", "count": 1, "kind": "delay", "seconds": 0}));
    proxy.fault_spec(json!({"operation": "ListSecrets", "count": -1, "kind": "delay", "seconds": 60}));
    let v2 = env.rotate("first", &value("pw-first-2-Qx7")).await;
    let rotated = Instant::now();
    eventually(
        "Secret first holds the new version",
        Duration::from_secs(60),
        || async {
            let s = env.secret_api().get("first").await.ok()?;
            (s.metadata.annotations?.get("rotor.dev/version-id") == Some(&v2)).then_some(())
        },
    )
    .await;
    let took = rotated.elapsed();
    let calls = proxy.calls();
    // The next sweep starts within 5 s and its second page is held 20 s
    // (the attempt timeout): only the first page can have brought it.
    assert!(
        took < Duration::from_secs(12),
        "the new version arrived {took:?} after the rotation: {calls:?}\n{}",
        env.rotor_log()
    );
    assert_eq!(
        count(&calls, "DescribeSecret"),
        0,
        "the sweep noticed it: {calls:?}"
    );
    assert_eq!(sweeps().await, swept + 2.0, "no sweep finished meanwhile");
    assert_eq!(
        env.secret_data("first").await.unwrap()["password"],
        "pw-first-2-Qx7"
    );
}

/// Nothing changed: only ListSecrets, no GetSecretValue and no DescribeSecret,
/// over several poll intervals.
#[tokio::test]
async fn nothing_changed_costs_only_list_secrets() {
    let mut env = Env::new().await;
    let proxy = AwsProxy::start(&testbed().aws_endpoint);
    env.start_rotor_with_endpoint(&[], &proxy.url);
    create_rs(&env, "one", "idle-pw-1-Zr4", json!({"refreshInterval": "1s"})).await;
    create_rs(&env, "two", "idle-pw-2-Zr4", json!({"refreshInterval": "2s"})).await;
    for n in ["one", "two"] {
        env.wait_condition(n, "Ready", "True", "Ready").await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.reset();

    // Poll interval: 1 s (the smallest refreshInterval): about six sweeps.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let calls = proxy.calls();
    let diag = format!("{calls:?}\nrotor log:\n{}", env.rotor_log());
    assert_eq!(count(&calls, "GetSecretValue"), 0, "{diag}");
    assert_eq!(count(&calls, "DescribeSecret"), 0, "{diag}");
    assert!(
        count(&calls, "ListSecrets") >= 3,
        "the sweep runs every poll interval: {diag}"
    );
    let others: u64 = calls
        .iter()
        .filter(|(op, _)| op.as_str() != "ListSecrets")
        .map(|(_, n)| n)
        .sum();
    assert_eq!(others, 0, "only ListSecrets: {diag}");
    for n in ["one", "two"] {
        let rs = env.rs_api().get(n).await.unwrap();
        assert_eq!(condition(&rs, "Ready").unwrap().status, "True");
    }
}

// ---------------------------------------------------------------- 3. Auto

/// Auto discovery through rotor: one consumer per way of referencing the
/// Secret, across the three kinds; none restarted on the first sync; after
/// a rotation each is restarted exactly once, the non-consumer never; status,
/// Events, condition and metrics say so.
#[tokio::test]
async fn auto_rolls_every_consumer_once_and_nothing_else() {
    let mut env = Env::new().await;
    let consumers = [
        (Deploy, "env-ref"),
        (Sts, "env-from"),
        (Ds, "volume"),
        (Deploy, "projected"),
    ];
    create_workload(&env, Deploy, "env-ref", Uses::Env("app")).await;
    create_workload(&env, Sts, "env-from", Uses::EnvFrom("app")).await;
    create_workload(&env, Ds, "volume", Uses::Volume("app")).await;
    create_workload(&env, Deploy, "projected", Uses::Projected("app")).await;
    create_workload(&env, Deploy, "bystander", Uses::Neither("app")).await;
    let all = [consumers.as_slice(), &[(Deploy, "bystander")]].concat();
    let created = snapshot(&env, &all).await;

    env.start_rotor(&[]);
    let v1 = create_rs(&env, "app", "auto-pw-1-Lm3", json!({})).await;
    let rs = env.wait_condition("app", "RolledOut", "True", "RolledOut").await;
    assert!(rs.status.as_ref().unwrap().rolled_out.is_empty());
    // The follow-up reconciles (the Secret write triggers one) restart nothing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_rolled(&env, &created, &all, "app", None, 0).await;

    let v2 = env.rotate("app", &value("auto-pw-2-Lm3")).await;
    assert_ne!(v1, v2);
    let rs = wait_rolled(&env, "app", &v2).await;
    assert_eq!(rolled_out_names(&rs, &v2), owned(&consumers));
    let c = condition(&rs, "RolledOut").unwrap();
    assert_eq!((&*c.status, &*c.reason), ("True", "RolledOut"));
    assert!(c.message.contains("4 workload"), "{}", c.message);
    assert_eq!(condition(&rs, "Ready").unwrap().status, "True");
    assert_eq!(env.secret_data("app").await.unwrap()["password"], "auto-pw-2-Lm3");

    // Exactly once, even after the reconciles that follow.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_rolled(&env, &created, &consumers, "app", Some(&v2), 1).await;
    assert_rolled(&env, &created, &[(Deploy, "bystander")], "app", None, 0).await;
    assert_one_event_each(&env, &consumers, &v2).await;
    assert_eq!(rolled_out_events(&env, Deploy, "bystander", &v2).await, 0);
    // The annotation is a real restart: the Deployment controller makes a
    // second ReplicaSet for the new pod template, and only for consumers.
    let replica_sets: Api<ReplicaSet> = Api::namespaced(env.client.clone(), &env.ns);
    for (name, want) in [("env-ref", 2), ("projected", 2), ("bystander", 1)] {
        let lp = ListParams::default().labels(&format!("app={name}"));
        eventually(
            &format!("{want} ReplicaSet(s) of {name}"),
            Duration::from_secs(15),
            || async { (replica_sets.list(&lp).await.ok()?.items.len() == want).then_some(()) },
        )
        .await;
    }

    // 9. Metrics of this path, without secret material.
    let m = env.rotor.as_ref().unwrap().metrics().await;
    assert!(metric(&m, "rotor_rotations_observed_total", "") >= 1.0, "{m}");
    assert!(
        metric(&m, "rotor_rotation_to_secret_seconds_count", "") >= 1.0,
        "{m}"
    );
    assert!(
        metric(&m, "rotor_rotation_to_rollout_seconds_count", "") >= 1.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "rotor_restarts_total", r#"kind="Deployment""#),
        2.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "rotor_restarts_total", r#"kind="StatefulSet""#),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "rotor_restarts_total", r#"kind="DaemonSet""#),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "rotor_aws_calls_total",
            r#"operation="GetSecretValue",outcome="success""#
        ),
        2.0,
        "one read per version: {m}"
    );
    for v in ["auto-pw-1-Lm3", "auto-pw-2-Lm3"] {
        assert!(!m.contains(v), "secret value in metrics");
    }
    env.assert_no_leak(&["auto-pw-1-Lm3", "auto-pw-2-Lm3"]).await;
}

// ---------------------------------------------------------------- 4. Explicit and Disabled

/// Explicit: only the listed workloads are restarted (a listed one that does
/// not reference the Secret too); a missing target is reported in RolledOut
/// while the others still roll, and re-runs do not restart them again.
/// Creating the missing target later heals the condition without restarting
/// it (it started with the current value).
#[tokio::test]
async fn explicit_rolls_only_the_listed_targets_and_reports_a_missing_one() {
    let mut env = Env::new().await;
    let listed = [(Deploy, "listed"), (Sts, "listed-sts"), (Ds, "listed-no-ref")];
    create_workload(&env, Deploy, "listed", Uses::Env("creds")).await;
    create_workload(&env, Sts, "listed-sts", Uses::Volume("creds")).await;
    create_workload(&env, Ds, "listed-no-ref", Uses::Neither("creds")).await;
    create_workload(&env, Deploy, "unlisted", Uses::EnvFrom("creds")).await;
    let all = [listed.as_slice(), &[(Deploy, "unlisted")]].concat();
    let created = snapshot(&env, &all).await;

    env.start_rotor(&[]);
    let targets = json!([
        {"kind": "Deployment", "name": "listed"},
        {"kind": "StatefulSet", "name": "listed-sts"},
        {"kind": "DaemonSet", "name": "listed-no-ref"},
        {"kind": "Deployment", "name": "gone"},
    ]);
    create_rs(
        &env,
        "creds",
        "explicit-pw-1-Vb9",
        json!({"rollout": {"mode": "Explicit", "targets": targets}}),
    )
    .await;
    let rs = env
        .wait_condition("creds", "RolledOut", "False", "RolloutFailed")
        .await;
    assert!(
        condition(&rs, "RolledOut")
            .unwrap()
            .message
            .contains("Deployment gone not found"),
        "{:?}",
        condition(&rs, "RolledOut")
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_rolled(&env, &created, &all, "creds", None, 0).await;

    let v2 = env.rotate("creds", &value("explicit-pw-2-Vb9")).await;
    let rs = wait_rolled(&env, "creds", &v2).await;
    let c = condition(&rs, "RolledOut").unwrap();
    assert_eq!((&*c.status, &*c.reason), ("False", "RolloutFailed"));
    assert!(c.message.contains("Deployment gone not found"), "{}", c.message);
    assert!(c.message.contains("the others were restarted"), "{}", c.message);
    assert_eq!(condition(&rs, "Ready").unwrap().status, "False");
    assert_eq!(rolled_out_names(&rs, &v2), owned(&listed));

    // The failure requeues every refresh interval; nothing rolls twice.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_rolled(&env, &created, &listed, "creds", Some(&v2), 1).await;
    assert_rolled(&env, &created, &[(Deploy, "unlisted")], "creds", None, 0).await;
    assert_one_event_each(&env, &listed, &v2).await;

    // The missing target appears (after the write): reported no more, not restarted.
    sleep_past(written_at(&env, "creds").await).await;
    let gone = create_workload(&env, Deploy, "gone", Uses::Env("creds")).await;
    let rs = env
        .wait_condition("creds", "RolledOut", "True", "RolledOut")
        .await;
    assert_eq!(condition(&rs, "Ready").unwrap().status, "True");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(state(&env, Deploy, "gone").await, gone);
    assert_rolled(&env, &created, &listed, "creds", Some(&v2), 1).await;
}

/// Disabled: the Secret follows the rotation, no workload is restarted, and
/// the condition says why.
#[tokio::test]
async fn disabled_restarts_nothing() {
    let mut env = Env::new().await;
    let consumers = [(Deploy, "web"), (Sts, "worker")];
    create_workload(&env, Deploy, "web", Uses::Env("token")).await;
    create_workload(&env, Sts, "worker", Uses::Projected("token")).await;
    let created = snapshot(&env, &consumers).await;

    env.start_rotor(&[]);
    create_rs(
        &env,
        "token",
        "disabled-pw-1-Tg2",
        json!({"rollout": {"mode": "Disabled"}}),
    )
    .await;
    let v2 = env.rotate("token", &value("disabled-pw-2-Tg2")).await;
    let rs = env
        .wait_rs("token", "synced to the rotated version", |rs| {
            synced(rs) == Some(v2.as_str())
        })
        .await;
    assert_eq!(
        env.secret_data("token").await.unwrap()["password"],
        "disabled-pw-2-Tg2"
    );
    let c = condition(&rs, "RolledOut").unwrap();
    assert_eq!((&*c.status, &*c.reason), ("True", "Disabled"));
    assert!(c.message.contains("Disabled"), "{}", c.message);
    assert_eq!(condition(&rs, "Ready").unwrap().status, "True");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_rolled(&env, &created, &consumers, "token", None, 0).await;
    let rs = env.rs_api().get("token").await.unwrap();
    assert!(rs.status.unwrap().rolled_out.is_empty());
    let events = env.events().await;
    assert!(
        !events.iter().any(|e| e.reason.as_deref() == Some("RolledOut")),
        "no RolledOut event"
    );
}

// ---------------------------------------------------------------- 5. exactly once

/// After a rollout: re-running the reconcile (an unrelated annotation, a
/// spec change that re-renders the Secret) and restarting rotor restart
/// nothing. Then a write without rollout (Disabled, standing in for a crash
/// between the Secret write and the rollout) followed by Auto rolls the
/// consumers that ran the older version exactly once, and not a workload
/// created after the write.
#[tokio::test]
async fn exactly_once_across_reruns_restarts_and_a_crash_after_the_write() {
    let mut env = Env::new().await;
    let consumers = [(Deploy, "api"), (Sts, "db")];
    create_workload(&env, Deploy, "api", Uses::Env("creds")).await;
    create_workload(&env, Sts, "db", Uses::Volume("creds")).await;
    let created = snapshot(&env, &consumers).await;
    env.start_rotor(&[]);
    create_rs(&env, "creds", "once-pw-1-Hd5", json!({})).await;
    let v2 = env.rotate("creds", &value("once-pw-2-Hd5")).await;
    wait_rolled(&env, "creds", &v2).await;
    assert_rolled(&env, &created, &consumers, "creds", Some(&v2), 1).await;

    // A reconcile re-run through an annotation (only rotor's own reach the
    // cache, so only they trigger one).
    let before = reconciles(&env).await;
    patch_rs(
        &env,
        "creds",
        json!({"metadata": {"annotations": {"rotor.dev/touched": "1"}}}),
    )
    .await;
    eventually("a reconcile after the touch", Duration::from_secs(10), || async {
        (reconciles(&env).await > before).then_some(())
    })
    .await;
    // A spec change: a full convergence and a re-render of the same version.
    let rs = env
        .apply_rs(
            "creds",
            rs_spec(&env, "creds", json!({"target": {"labels": {"tier": "gold"}}})),
        )
        .await;
    let generation = rs.metadata.generation;
    env.wait_rs("creds", "the new generation observed", |rs| {
        rs.status.as_ref().unwrap().observed_generation == generation
            && condition(rs, "Ready").is_some_and(|c| c.status == "True")
    })
    .await;
    let secret = env.secret_api().get("creds").await.unwrap();
    assert_eq!(secret.metadata.labels.unwrap()["tier"], "gold");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_rolled(&env, &created, &consumers, "creds", Some(&v2), 1).await;

    // A controller restart: fresh caches, a full first reconcile.
    env.start_rotor(&[]);
    eventually("the new rotor reconciled", Duration::from_secs(20), || async {
        (reconciles(&env).await >= 1.0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_rolled(&env, &created, &consumers, "creds", Some(&v2), 1).await;
    assert_one_event_each(&env, &consumers, &v2).await;

    // The Secret gets v3 but nothing rolls (as if rotor died right there).
    let spec = |mode: &str| {
        rs_spec(
            &env,
            "creds",
            json!({"target": {"labels": {"tier": "gold"}}, "rollout": {"mode": mode}}),
        )
    };
    let generation = env.apply_rs("creds", spec("Disabled")).await.metadata.generation;
    env.wait_condition("creds", "RolledOut", "True", "Disabled").await;
    let v3 = env.rotate("creds", &value("once-pw-3-Hd5")).await;
    env.wait_rs("creds", "synced to v3", |rs| {
        synced(rs) == Some(v3.as_str()) && rs.status.as_ref().unwrap().observed_generation == generation
    })
    .await;
    assert_rolled(&env, &created, &consumers, "creds", Some(&v2), 1).await;
    // A consumer that starts after the write already runs v3.
    sleep_past(written_at(&env, "creds").await).await;
    let late = create_workload(&env, Deploy, "late", Uses::EnvFrom("creds")).await;

    // Back to Auto: the consumers that ran v2 roll once for v3.
    env.apply_rs("creds", spec("Auto")).await;
    let rs = wait_rolled(&env, "creds", &v3).await;
    assert_eq!(condition(&rs, "RolledOut").unwrap().status, "True");
    assert_eq!(rolled_out_names(&rs, &v3), owned(&consumers));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_rolled(&env, &created, &consumers, "creds", Some(&v3), 2).await;
    assert_eq!(
        state(&env, Deploy, "late").await,
        late,
        "created after the write: not restarted"
    );
    assert_one_event_each(&env, &consumers, &v3).await;
}

// ---------------------------------------------------------------- 6. sharing

/// One Secret, several consumers: all roll. One workload, two Secrets of two
/// RotatedSecrets: each rotation rolls it once, and the two annotations
/// coexist.
#[tokio::test]
async fn shared_secrets_and_workloads_with_two_secrets() {
    let mut env = Env::new().await;
    let only_one = [(Deploy, "a"), (Sts, "b")];
    create_workload(&env, Deploy, "a", Uses::Env("one")).await;
    create_workload(&env, Sts, "b", Uses::EnvFrom("one")).await;
    create_workload(&env, Deploy, "both", Uses::Two("one", "two")).await;
    let all = [only_one.as_slice(), &[(Deploy, "both")]].concat();
    let created = snapshot(&env, &all).await;
    env.start_rotor(&[]);
    create_rs(&env, "one", "share-one-1-Pk0", json!({})).await;
    let w1 = create_rs(&env, "two", "share-two-1-Pk0", json!({})).await;

    let v2 = env.rotate("one", &value("share-one-2-Pk0")).await;
    let rs = wait_rolled(&env, "one", &v2).await;
    assert_eq!(rolled_out_names(&rs, &v2), owned(&all));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_rolled(&env, &created, &all, "one", Some(&v2), 1).await;
    assert_rolled(&env, &created, &all, "two", None, 1).await;

    let w2 = env.rotate("two", &value("share-two-2-Pk0")).await;
    assert_ne!(w1, w2);
    let rs = wait_rolled(&env, "two", &w2).await;
    assert_eq!(rolled_out_names(&rs, &w2), owned(&[(Deploy, "both")]));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_rolled(&env, &created, &only_one, "one", Some(&v2), 1).await;
    assert_rolled(&env, &created, &[(Deploy, "both")], "one", Some(&v2), 2).await;
    assert_rolled(&env, &created, &[(Deploy, "both")], "two", Some(&w2), 2).await;

    let v3 = env.rotate("one", &value("share-one-3-Pk0")).await;
    wait_rolled(&env, "one", &v3).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_rolled(&env, &created, &only_one, "one", Some(&v3), 2).await;
    assert_rolled(&env, &created, &[(Deploy, "both")], "one", Some(&v3), 3).await;
    assert_rolled(&env, &created, &[(Deploy, "both")], "two", Some(&w2), 3).await;
    assert_one_event_each(&env, &all, &v2).await;
    assert_one_event_each(&env, &[(Deploy, "both")], &w2).await;
}

// ---------------------------------------------------------------- 7. late workload

/// A workload created after the current version was written started with
/// it: the next reconcile does not restart it; the next rotation does.
#[tokio::test]
async fn a_workload_created_after_the_write_is_not_restarted() {
    let mut env = Env::new().await;
    create_workload(&env, Deploy, "early", Uses::Env("app")).await;
    env.start_rotor(&[]);
    create_rs(&env, "app", "late-pw-1-Wc8", json!({})).await;
    let early = snapshot(&env, &[(Deploy, "early")]).await;
    let v2 = env.rotate("app", &value("late-pw-2-Wc8")).await;
    wait_rolled(&env, "app", &v2).await;

    sleep_past(written_at(&env, "app").await).await;
    let late = create_workload(&env, Ds, "late", Uses::Projected("app")).await;
    // Force a full reconcile (spec change, Secret re-rendered).
    let generation = env
        .apply_rs(
            "app",
            rs_spec(&env, "app", json!({"target": {"annotations": {"note": "x"}}})),
        )
        .await
        .metadata
        .generation;
    env.wait_rs("app", "the new generation observed", |rs| {
        rs.status.as_ref().unwrap().observed_generation == generation
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(state(&env, Ds, "late").await, late);
    assert_rolled(&env, &early, &[(Deploy, "early")], "app", Some(&v2), 1).await;

    // It did run v2: v3 restarts it, once.
    let v3 = env.rotate("app", &value("late-pw-3-Wc8")).await;
    let rs = wait_rolled(&env, "app", &v3).await;
    assert_eq!(
        rolled_out_names(&rs, &v3),
        owned(&[(Deploy, "early"), (Ds, "late")])
    );
    let before = BTreeMap::from([((Ds, "late".to_owned()), late)]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_rolled(&env, &before, &[(Ds, "late")], "app", Some(&v3), 1).await;
    assert_rolled(&env, &early, &[(Deploy, "early")], "app", Some(&v3), 2).await;
}

// ---------------------------------------------------------------- 8. events

/// With a 10-minute refreshInterval the sweep cannot be what notices: a
/// rotation without an event stays unnoticed, and an EventBridge event on a
/// real SQS queue (after malformed messages, which are dropped) makes the
/// Secret follow within seconds. The queue ends empty and rotor keeps going.
#[tokio::test]
async fn an_sqs_event_makes_the_secret_follow_at_once() {
    let mut env = Env::new().await;
    let (sqs, url) = queue("rotor-follow").await;
    create_workload(&env, Deploy, "web", Uses::Env("db")).await;
    env.start_rotor(&["--events-queue-url", &url]);
    create_rs(&env, "db", "event-pw-1-Ny6", json!({"refreshInterval": "10m"})).await;
    let rs = env.wait_condition("db", "Ready", "True", "Ready").await;
    let arn = rs.status.unwrap().arn.unwrap();
    let web = snapshot(&env, &[(Deploy, "web")]).await;

    // Control: without an event, nothing notices within a few seconds.
    let v2 = env.rotate("db", &value("event-pw-2-Ny6")).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let rs = env.rs_api().get("db").await.unwrap();
    assert_ne!(
        synced(&rs),
        Some(v2.as_str()),
        "the sweep runs every 10 minutes here"
    );

    let send = |body: String| {
        let (sqs, url) = (sqs.clone(), url.clone());
        async move {
            sqs.send_message()
                .queue_url(url)
                .message_body(body)
                .send()
                .await
                .expect("send message");
        }
    };
    send(r#"{"detail": {"requestParameters": {"secretString": "event-pw-2-Ny6"#.to_owned()).await;
    send(
        json!({"source": "aws.secretsmanager", "detail-type": "AWS API Call via CloudTrail",
                "detail": {"eventName": "UpdateSecretVersionStage"}})
        .to_string(),
    )
    .await;
    let event = json!({
        "version": "0", "id": uuid_like(),
        "detail-type": "AWS API Call via CloudTrail", "source": "aws.secretsmanager",
        "account": "123456789012", "region": REGION, "resources": [],
        "detail": {
            "eventSource": "secretsmanager.amazonaws.com", "eventName": "UpdateSecretVersionStage",
            "awsRegion": REGION, "eventType": "AwsApiCall",
            "requestParameters": {"secretId": env.aws_name("db"), "versionStage": "AWSCURRENT",
                                  "moveToVersionId": v2},
            "responseElements": {"arn": arn, "name": env.aws_name("db")},
        }
    });
    let sent = Instant::now();
    send(event.to_string()).await;

    let rs = wait_rolled(&env, "db", &v2).await;
    let took = sent.elapsed();
    assert!(took < Duration::from_secs(5), "followed after {took:?}");
    assert_eq!(env.secret_data("db").await.unwrap()["password"], "event-pw-2-Ny6");
    assert_eq!(rolled_out_names(&rs, &v2), owned(&[(Deploy, "web")]));
    assert_rolled(&env, &web, &[(Deploy, "web")], "db", Some(&v2), 1).await;

    eventually("the queue to be empty", Duration::from_secs(10), || async {
        (queued_messages(&sqs, &url).await == 0).then_some(())
    })
    .await;
    // Deleted, not just in flight: nothing comes back after the visibility timeout.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(queued_messages(&sqs, &url).await, 0);

    // Still running and still consuming.
    let m = env.rotor.as_ref().unwrap().metrics().await;
    assert!(metric(&m, "rotor_rotations_observed_total", "") >= 1.0, "{m}");
    assert!(
        metric(
            &m,
            "rotor_aws_calls_total",
            r#"operation="DeleteMessageBatch",outcome="success""#
        ) >= 1.0,
        "{m}"
    );
    let logs = env.rotor_log();
    assert!(logs.contains("dropping unreadable event message"), "{logs}");
    assert!(!logs.contains("panicked"), "{logs}");
    env.assert_no_leak(&["event-pw-1-Ny6", "event-pw-2-Ny6"]).await;
    sqs.delete_queue().queue_url(&url).send().await.ok();
}

/// Secrets Manager's `RotationFailed` event (the rotation function failed a
/// step) is reported on the object at once, the Secret keeps the working
/// version, and the report clears when a new version arrives.
#[tokio::test]
async fn a_failed_rotation_event_is_reported_until_a_new_version() {
    let mut env = Env::new().await;
    let (sqs, url) = queue("rotor-failed").await;
    env.start_rotor(&["--events-queue-url", &url]);
    create_rs(&env, "db", "failed-pw-1-Qa3", json!({"refreshInterval": "1s"})).await;
    let rs = env.wait_condition("db", "Ready", "True", "Ready").await;
    let arn = rs.status.unwrap().arn.unwrap();
    let event = json!({
        "version": "0", "id": uuid_like(),
        "detail-type": "AWS Service Event via CloudTrail", "source": "aws.secretsmanager",
        "account": "123456789012", "region": REGION, "resources": [],
        "detail": {
            "eventSource": "secretsmanager.amazonaws.com", "eventName": "RotationFailed",
            "awsRegion": REGION, "eventType": "AwsServiceEvent",
            "additionalEventData": {"SecretId": arn},
        }
    });
    sqs.send_message()
        .queue_url(&url)
        .message_body(event.to_string())
        .send()
        .await
        .expect("send message");
    let rs = env
        .wait_condition("db", "RotationConfigured", "False", "RotationFailed")
        .await;
    assert_eq!(condition(&rs, "Ready").unwrap().reason, "RotationFailed");
    assert_eq!(
        condition(&rs, "Synced").unwrap().status,
        "True",
        "the mirror goes on"
    );
    assert_eq!(
        env.secret_data("db").await.unwrap()["password"],
        "failed-pw-1-Qa3"
    );

    // A later rotation that succeeds clears the report.
    let v2 = env.rotate("db", &value("failed-pw-2-Qa3")).await;
    let rs = env.wait_condition("db", "Ready", "True", "Ready").await;
    assert_eq!(synced(&rs), Some(v2.as_str()));
    assert_ne!(
        condition(&rs, "RotationConfigured").unwrap().reason,
        "RotationFailed"
    );
}
