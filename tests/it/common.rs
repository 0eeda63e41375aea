//! Test harness: a namespace and AWS name prefix per test, and a `rotor`
//! process per test running under exactly the Helm chart's RBAC; on top of
//! the test-bed harness shared with the benchmark (`testbed/`: clients,
//! the AWS proxy, rotor processes, rotation simulation, polling).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use aws_sdk_secretsmanager::error::ProvideErrorMetadata;
use aws_sdk_secretsmanager::operation::describe_secret::DescribeSecretOutput;
use aws_sdk_secretsmanager::types::{Filter, FilterNameStringType, Tag};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use rotor::api::{OWNER_TAG, RotatedSecret};
use serde_json::{Value, json};
pub use testbed::{AwsProxy, REGION, Rotor, eventually, testbed, uuid_like};
use testbed::{RotorCommand, random_suffix};

pub const CLUSTER: &str = "test";
const TEST_MANAGER: &str = "rotor-tests";

// ---------------------------------------------------------------------------
// AWS clients and state on the test bed's moto.
// ---------------------------------------------------------------------------

pub fn secrets_manager(endpoint: &str) -> aws_sdk_secretsmanager::Client {
    testbed::aws::secrets_manager(endpoint)
}

/// Secrets Manager in `region` (replicas) on the test bed's moto.
pub fn sm_in(region: &str) -> aws_sdk_secretsmanager::Client {
    testbed::aws::secrets_manager_in(&testbed().aws_endpoint, region)
}

pub fn kms() -> aws_sdk_kms::Client {
    testbed::aws::kms(&testbed().aws_endpoint)
}

/// An SQS client for the test bed's moto.
pub fn sqs() -> aws_sdk_sqs::Client {
    testbed::aws::sqs(&testbed().aws_endpoint)
}

/// A fresh SQS queue whose messages come back after 2 s if not deleted, and
/// a client for it.
pub async fn queue(prefix: &str) -> (aws_sdk_sqs::Client, String) {
    let sqs = sqs();
    let name = format!("{prefix}-{}", uuid_like());
    let url = testbed::aws::create_queue(&sqs, &name, Some(2))
        .await
        .expect("create queue");
    (sqs, url)
}

/// Messages in a queue, visible or in flight.
pub async fn queued_messages(sqs: &aws_sdk_sqs::Client, url: &str) -> u64 {
    testbed::aws::queued_messages(sqs, url)
        .await
        .expect("queue attributes")
}

/// A call to moto's test-only endpoints (hack/moto_server.py).
pub fn moto_test(method: &str, path: &str, body: Option<&Value>) -> Value {
    testbed::aws::moto_test(&testbed().aws_endpoint, method, path, body).unwrap_or_else(|e| panic!("{e}"))
}

/// Simulated rotations of `arn` so far (the patched moto's test endpoint).
pub fn rotations(arn: &str) -> u64 {
    let counts: BTreeMap<String, u64> =
        serde_json::from_value(moto_test("GET", "/rotor-test/rotations", None)).unwrap();
    counts.get(arn).copied().unwrap_or(0)
}

pub fn tags_of(d: &DescribeSecretOutput) -> BTreeMap<String, String> {
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

pub fn current_version(d: &DescribeSecretOutput) -> String {
    d.version_ids_to_stages()
        .unwrap()
        .iter()
        .find(|(_, s)| s.iter().any(|s| s == "AWSCURRENT"))
        .map(|(v, _)| v.clone())
        .expect("an AWSCURRENT version")
}

/// Every KMS key (in any state) of `kms`'s region, with its owner tag: one
/// scan of all keys (a key deleted meanwhile is left out).
pub async fn key_owners(kms: &aws_sdk_kms::Client) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
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
            let owner = tags.tags().iter().find(|t| t.tag_key() == OWNER_TAG);
            out.push((id.to_owned(), owner.map(|t| t.tag_value().to_owned())));
        }
        marker = page.next_marker().map(str::to_owned);
        if !page.truncated() || marker.is_none() {
            return out;
        }
    }
}

/// Every KMS key (in any state) whose owner tag names `owner`.
pub async fn keys_owned_by(owner: &str) -> Vec<String> {
    key_owners(&kms())
        .await
        .into_iter()
        .filter(|(_, o)| o.as_deref() == Some(owner))
        .map(|(id, _)| id)
        .collect()
}

/// `rotor run` flags for leader election on a 3 s lease named `lease` in
/// `ns`, followed by `extra`.
pub fn leader_election_flags<'a>(ns: &'a str, lease: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut flags = vec![
        "--leader-election",
        "--leader-election-namespace",
        ns,
        "--leader-election-lease",
        lease,
        "--leader-election-lease-duration",
        "3s",
    ];
    flags.extend_from_slice(extra);
    flags
}

/// The key id an alias points at, from ListAliases.
pub async fn alias_target(alias: &str) -> Option<String> {
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

pub async fn key_state(key: &str) -> String {
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
pub fn writes(calls: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    calls
        .iter()
        .filter(|(op, _)| !["Describe", "Get", "List"].iter().any(|p| op.starts_with(p)))
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

pub fn reads(calls: &BTreeMap<String, u64>) -> u64 {
    calls.values().sum::<u64>() - writes(calls).values().sum::<u64>()
}

// ---------------------------------------------------------------------------
// One test's world.
// ---------------------------------------------------------------------------

/// One test's world: its namespace, its AWS name prefix, its rotor process.
pub struct Env {
    pub client: Client,
    pub ns: String,
    pub prefix: String,
    pub sm: aws_sdk_secretsmanager::Client,
    pub rotor: Option<Rotor>,
}

impl Env {
    pub async fn new() -> Env {
        let bed = testbed();
        let client = testbed::k8s::client_from(&bed.admin_kubeconfig)
            .await
            .unwrap_or_else(|e| panic!("admin client: {e}"));
        // The CRD (exactly what `rotor crd` prints) and the chart's
        // ClusterRole bound to the `rotor` test user; idempotent.
        testbed::k8s::install_cluster_wide(&client, &rotor::api::crd::crd(), TEST_MANAGER, "rotor-test")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let suffix = random_suffix();
        let ns = format!("t-{suffix}");
        Api::<Namespace>::all(client.clone())
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap(),
            )
            .await
            .expect("namespace");
        Env {
            client,
            ns,
            prefix: format!("it/{suffix}/"),
            sm: secrets_manager(&bed.aws_endpoint),
            rotor: None,
        }
    }

    /// Starts rotor for this namespace with extra flags and the test bed's AWS endpoint.
    pub fn start_rotor(&mut self, extra: &[&str]) {
        self.start_rotor_with_endpoint(extra, &testbed().aws_endpoint.clone());
    }

    pub fn start_rotor_with_endpoint(&mut self, extra: &[&str], endpoint: &str) {
        self.rotor = None; // stop the previous one first
        self.rotor = Some(rotor_for(&self.ns, extra, endpoint));
    }

    /// Another rotor process for this namespace, alongside `self.rotor`.
    pub fn spawn_rotor(&self, extra: &[&str]) -> Rotor {
        rotor_for(&self.ns, extra, &testbed().aws_endpoint)
    }

    /// rotor's log so far (empty without a rotor).
    pub fn rotor_log(&self) -> String {
        self.rotor.as_ref().map(Rotor::logs).unwrap_or_default()
    }

    pub fn aws_name(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// A KMS alias unique to this test (aliases are global per region in moto).
    pub fn alias(&self, what: &str) -> String {
        format!("alias/{}{what}", self.prefix)
    }

    pub fn owner(&self, rs_name: &str) -> String {
        format!("{CLUSTER}/{}/{rs_name}", self.ns)
    }

    pub fn rs_api(&self) -> Api<RotatedSecret> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    pub fn secret_api(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    // ------------------------------------------------------------ AWS

    /// Creates an AWS secret named `prefix + name`, tagged with `owner` if given.
    pub async fn create_aws_secret(&self, name: &str, value: &str, owner: Option<&str>) -> String {
        let mut req = self
            .sm
            .create_secret()
            .name(self.aws_name(name))
            .secret_string(value);
        if let Some(owner) = owner {
            req = req.tags(Tag::builder().key(OWNER_TAG).value(owner).build());
        }
        req.send()
            .await
            .expect("create AWS secret")
            .arn()
            .unwrap()
            .to_owned()
    }

    /// Does what a rotation Lambda does: stage a new version as AWSPENDING,
    /// then move AWSCURRENT to it. Returns the new VersionId.
    pub async fn rotate(&self, name: &str, value: &str) -> String {
        let id = self.aws_name(name);
        let old = testbed::aws::current_version(&self.sm, &id)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let (token, _) = testbed::aws::rotate(&self.sm, &id, &old, value)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        token
    }

    pub async fn describe(&self, name: &str) -> DescribeSecretOutput {
        self.sm
            .describe_secret()
            .secret_id(self.aws_name(name))
            .send()
            .await
            .unwrap_or_else(|e| panic!("describe {name}: {e:?}"))
    }

    /// DescribeSecret's error code, `None` when the secret exists.
    pub async fn describe_error(&self, name: &str) -> Option<String> {
        match self
            .sm
            .describe_secret()
            .secret_id(self.aws_name(name))
            .send()
            .await
        {
            Ok(_) => None,
            Err(e) => Some(e.code().unwrap_or("no code").to_owned()),
        }
    }

    pub async fn version_count(&self, name: &str) -> usize {
        self.sm
            .list_secret_version_ids()
            .secret_id(self.aws_name(name))
            .include_deprecated(true)
            .send()
            .await
            .unwrap()
            .versions()
            .len()
    }

    pub async fn current_json(&self, name: &str) -> Value {
        let out = self
            .sm
            .get_secret_value()
            .secret_id(self.aws_name(name))
            .version_stage("AWSCURRENT")
            .send()
            .await
            .unwrap();
        serde_json::from_str(out.secret_string().unwrap()).expect("a JSON secret")
    }

    pub async fn policy_of(&self, name: &str) -> Option<Value> {
        let out = self
            .sm
            .get_resource_policy()
            .secret_id(self.aws_name(name))
            .send()
            .await
            .unwrap();
        out.resource_policy()
            .map(|p| serde_json::from_str(p).expect("policy is JSON"))
    }

    /// Secrets with exactly this name (ListSecrets' name filter is a prefix match).
    pub async fn secrets_named(&self, name: &str) -> usize {
        let full = self.aws_name(name);
        let out = self
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

    // ------------------------------------------------------------ RotatedSecrets

    /// Server-side applies a RotatedSecret from a JSON spec.
    pub async fn apply_rs(&self, name: &str, spec: Value) -> RotatedSecret {
        let obj = json!({
            "apiVersion": "rotor.dev/v1alpha1", "kind": "RotatedSecret",
            "metadata": {"name": name}, "spec": spec,
        });
        self.rs_api()
            .patch(
                name,
                &PatchParams::apply(TEST_MANAGER).force(),
                &Patch::Apply(&obj),
            )
            .await
            .expect("apply RotatedSecret")
    }

    /// Applies `spec` and waits until it is converged (Ready at its generation).
    pub async fn apply_ready(&self, name: &str, spec: Value) -> RotatedSecret {
        self.apply_rs(name, spec).await;
        self.wait_ready(name).await
    }

    /// Merge-patches the spec, as `kubectl apply` (client-side) or `kubectl edit`
    /// do. Used to remove a field: on the 1.20 test bed, server-side apply turns a
    /// removed `rotation` into `rotation: {}` and a removed `resourcePolicy` into
    /// `null`, both of which the schema rejects.
    pub async fn merge_spec(&self, name: &str, spec_patch: Value) {
        self.rs_api()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"spec": spec_patch})),
            )
            .await
            .expect("merge-patch spec");
    }

    pub async fn annotate(&self, name: &str, key: &str, value: &str) {
        let patch = json!({"metadata": {"annotations": {key: value}}});
        self.rs_api()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("annotate");
    }

    pub async fn delete_and_wait_gone(&self, name: &str, timeout: Duration) {
        self.rs_api()
            .delete(name, &DeleteParams::default())
            .await
            .expect("delete RotatedSecret");
        let deadline = Instant::now() + timeout;
        while self.rs_api().get_opt(name).await.unwrap().is_some() {
            assert!(
                Instant::now() < deadline,
                "{name} still present after {timeout:?} (finalizer not removed)\nrotor log:\n{}",
                self.rotor_log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until the RotatedSecret satisfies `pred`; on timeout, dumps its
    /// status and rotor's log.
    pub async fn wait_rs(
        &self,
        name: &str,
        what: &str,
        pred: impl Fn(&RotatedSecret) -> bool,
    ) -> RotatedSecret {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let rs = self.rs_api().get(name).await.expect("get RotatedSecret");
            if pred(&rs) {
                return rs;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what} on {}/{name}\nstatus: {}\nrotor log:\n{}",
                    self.ns,
                    serde_json::to_string_pretty(&rs.status).unwrap(),
                    self.rotor_log()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Ready=True for the object's current generation.
    pub async fn wait_ready(&self, name: &str) -> RotatedSecret {
        let generation = self.rs_api().get(name).await.unwrap().metadata.generation;
        self.wait_rs(name, "Ready=True at the current generation", |rs| {
            rs.status
                .as_ref()
                .is_some_and(|s| s.observed_generation == generation)
                && condition(rs, "Ready")
                    .is_some_and(|c| c.status == "True" && c.observed_generation == generation)
        })
        .await
    }

    pub async fn wait_condition(&self, name: &str, type_: &str, status: &str, reason: &str) -> RotatedSecret {
        self.wait_rs(name, &format!("{type_}={status} ({reason})"), |rs| {
            condition(rs, type_).is_some_and(|c| c.status == status && c.reason == reason)
        })
        .await
    }

    /// Creates `spec` as raw JSON (so even what the Rust type would refuse
    /// reaches the API server) and expects the schema to refuse it with a 422
    /// naming `field`; nothing is stored.
    pub async fn expect_schema_rejection(&self, name: &str, spec: &Value, field: &str) {
        let obj = json!({"apiVersion": "rotor.dev/v1alpha1", "kind": "RotatedSecret",
                         "metadata": {"name": name}, "spec": spec});
        let api: Api<kube::core::DynamicObject> = Api::namespaced_with(
            self.client.clone(),
            &self.ns,
            &kube::discovery::ApiResource::erase::<RotatedSecret>(&()),
        );
        let raw: kube::core::DynamicObject = serde_json::from_value(obj).unwrap();
        match api.create(&kube::api::PostParams::default(), &raw).await {
            Err(kube::Error::Api(ae)) => {
                assert_eq!(ae.code, 422, "{name}: {ae:?}");
                assert!(
                    ae.message.contains(field),
                    "{name}: {field} not named in {:?}",
                    ae.message
                );
            }
            Err(other) => panic!("{name}: expected a 422, got {other:?}"),
            Ok(_) => panic!("{name}: the schema must reject it"),
        }
        assert!(
            self.rs_api().get_opt(name).await.unwrap().is_none(),
            "{name} not stored"
        );
    }

    pub async fn secret_data(&self, name: &str) -> Option<std::collections::BTreeMap<String, String>> {
        let s = self.secret_api().get_opt(name).await.expect("get Secret")?;
        Some(
            s.data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, String::from_utf8(v.0).unwrap()))
                .collect(),
        )
    }

    // ------------------------------------------------------------ Events

    pub async fn events(&self) -> Vec<Event> {
        Api::<Event>::namespaced(self.client.clone(), &self.ns)
            .list(&ListParams::default())
            .await
            .expect("list events")
            .items
    }

    /// Events with `reason` about the object `name`.
    pub async fn events_for(&self, name: &str, reason: &str) -> Vec<Event> {
        self.events()
            .await
            .into_iter()
            .filter(|e| {
                e.reason.as_deref() == Some(reason)
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
            })
            .collect()
    }

    pub async fn wait_event(&self, name: &str, reason: &str) -> Event {
        eventually(
            &format!("a {reason} event for {name}"),
            Duration::from_secs(20),
            || async { self.events_for(name, reason).await.into_iter().next() },
        )
        .await
    }

    /// Asserts no value appears in rotor's log, this namespace's Events, or
    /// any RotatedSecret's status.
    pub async fn assert_no_leak(&self, values: &[&str]) {
        let logs = self.rotor_log();
        let events = serde_json::to_string(&self.events().await).unwrap();
        let statuses = serde_json::to_string(
            &self
                .rs_api()
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .iter()
                .map(|r| &r.status)
                .collect::<Vec<_>>(),
        )
        .unwrap();
        assert!(!logs.is_empty() || self.rotor.is_none(), "rotor log is empty");
        for v in values {
            assert!(!logs.contains(v), "secret value {v:?} found in rotor's log");
            assert!(!events.contains(v), "secret value {v:?} found in Events");
            assert!(!statuses.contains(v), "secret value {v:?} found in a status");
        }
    }
}

pub fn condition<'a>(rs: &'a RotatedSecret, type_: &str) -> Option<&'a rotor::api::Condition> {
    rs.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_)
}

/// A `rotor run` process for one namespace, under the chart's RBAC.
fn rotor_for(ns: &str, extra: &[&str], endpoint: &str) -> Rotor {
    let bed = testbed();
    let mut args: Vec<String> = vec![
        "--namespace".into(),
        ns.into(),
        "--min-refresh-interval".into(),
        "1s".into(),
    ];
    // A test may run rotor as a cluster of its own, so that the version
    // sweep lists only that test's secrets.
    if !extra.contains(&"--cluster-name") {
        args.extend(["--cluster-name".into(), CLUSTER.into()]);
    }
    // Tests send rotate-now tokens back to back; the spacing has its own
    // test, which passes the default.
    if !extra.contains(&"--rotate-now-min-interval") {
        args.extend(["--rotate-now-min-interval".into(), "100ms".into()]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    Rotor::spawn(&RotorCommand {
        bin: env!("CARGO_BIN_EXE_rotor").into(),
        kubeconfig: bed.rotor_kubeconfig.clone(),
        aws_endpoint: endpoint.to_owned(),
        log: bed.dir.join(format!("rotor-{ns}-{}.log", random_suffix())),
        args,
        env: vec![
            // moto answers unimplemented paths with HTML 500s: no SDK retries.
            ("AWS_MAX_ATTEMPTS".into(), "1".into()),
            ("RUST_LOG".into(), "info,rotor=debug".into()),
        ],
    })
    .expect("start rotor")
}
