//! Test harness: clients for the shared test bed, a namespace and AWS name
//! prefix per test, and a `rotor` process per test running under exactly the
//! Helm chart's RBAC.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use aws_sdk_secretsmanager::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_secretsmanager::types::Tag;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, ResourceExt};
use rotor::api::RotatedSecret;
use serde_json::{Value, json};

pub const CLUSTER: &str = "test";
pub const REGION: &str = "us-east-1";
const TEST_MANAGER: &str = "rotor-tests";

pub struct TestBed {
    pub admin_kubeconfig: PathBuf,
    pub rotor_kubeconfig: PathBuf,
    pub aws_endpoint: String,
    pub dir: PathBuf,
}

fn env_var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: integration tests need the test bed. Run `make test`, or \
             `hack/testbed.sh up && . .testbed/env` before `cargo nextest run`."
        )
    })
}

pub fn testbed() -> &'static TestBed {
    static BED: OnceLock<TestBed> = OnceLock::new();
    BED.get_or_init(|| TestBed {
        admin_kubeconfig: env_var("ROTOR_TEST_ADMIN_KUBECONFIG").into(),
        rotor_kubeconfig: env_var("ROTOR_TEST_ROTOR_KUBECONFIG").into(),
        aws_endpoint: env_var("ROTOR_TEST_AWS_ENDPOINT"),
        dir: env_var("ROTOR_TEST_DIR").into(),
    })
}

pub async fn client_from(path: &Path) -> Client {
    let kc = Kubeconfig::read_from(path).expect("kubeconfig readable");
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig valid");
    Client::try_from(config).expect("client")
}

/// An SQS client for the test bed's moto.
pub fn sqs() -> aws_sdk_sqs::Client {
    let conf = aws_sdk_sqs::Config::builder()
        .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
        .region(aws_sdk_sqs::config::Region::new(REGION))
        .endpoint_url(&testbed().aws_endpoint)
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "testing", "testing", None, None, "tests",
        ))
        .build();
    aws_sdk_sqs::Client::from_conf(conf)
}

/// A fresh SQS queue whose messages come back after 2 s if not deleted, and
/// a client for it.
pub async fn queue(prefix: &str) -> (aws_sdk_sqs::Client, String) {
    let sqs = sqs();
    let url = sqs
        .create_queue()
        .queue_name(format!("{prefix}-{}", uuid_like()))
        .attributes(aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout, "2")
        .send()
        .await
        .expect("create queue")
        .queue_url()
        .expect("queue URL")
        .to_owned();
    (sqs, url)
}

/// Messages in a queue, visible or in flight.
pub async fn queued_messages(sqs: &aws_sdk_sqs::Client, url: &str) -> u64 {
    let out = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .expect("queue attributes");
    let attrs = out.attributes().cloned().unwrap_or_default();
    [
        aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages,
        aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
    ]
    .iter()
    .map(|a| attrs.get(a).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0))
    .sum()
}

pub fn secrets_manager(endpoint: &str) -> aws_sdk_secretsmanager::Client {
    let conf = aws_sdk_secretsmanager::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new("testing", "testing", None, None, "tests"))
        .build();
    aws_sdk_secretsmanager::Client::from_conf(conf)
}

fn random_suffix() -> String {
    use rand::Rng;
    let n: u64 = rand::rng().random();
    format!("{n:016x}")[..10].to_owned()
}

/// Installs the CRD (exactly what `rotor crd` prints) and the chart's
/// ClusterRole bound to the `rotor` test user; idempotent.
async fn install_cluster_wide(admin: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
    let crd = rotor::api::crd::crd();
    let pp = PatchParams::apply(TEST_MANAGER).force();
    crds.patch(&crd.name_any(), &pp, &Patch::Apply(&crd))
        .await
        .expect("the generated CRD installs on the API server");
    eventually("CRD established", Duration::from_secs(30), || async {
        let c = crds.get(&crd.name_any()).await.ok()?;
        c.status?
            .conditions?
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
            .then_some(())
    })
    .await;

    let rules_path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/charts/rotor/files/clusterrole-rules.yaml"
    );
    let rules: Vec<PolicyRule> =
        serde_yaml::from_str(&std::fs::read_to_string(rules_path).expect("chart rules file"))
            .expect("rules parse");
    let role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "rotor-test"}, "rules": rules,
    });
    Api::<ClusterRole>::all(admin.clone())
        .patch("rotor-test", &pp, &Patch::Apply(&role))
        .await
        .expect("cluster role");
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "rotor-test"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "rotor-test"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "rotor"}],
    });
    Api::<ClusterRoleBinding>::all(admin.clone())
        .patch("rotor-test", &pp, &Patch::Apply(&binding))
        .await
        .expect("cluster role binding");
}

/// Polls `f` until it returns `Some`, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

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
        let client = client_from(&bed.admin_kubeconfig).await;
        install_cluster_wide(&client).await;
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
        self.rotor = Some(Rotor::start(&self.ns, extra, endpoint));
    }

    /// Another rotor process for this namespace, alongside `self.rotor`.
    pub fn spawn_rotor(&self, extra: &[&str]) -> Rotor {
        Rotor::start(&self.ns, extra, &testbed().aws_endpoint)
    }

    pub fn aws_name(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
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

    /// Creates an AWS secret named `prefix + name`, tagged with `owner` if given.
    pub async fn create_aws_secret(&self, name: &str, value: &str, owner: Option<&str>) -> String {
        let mut req = self
            .sm
            .create_secret()
            .name(self.aws_name(name))
            .secret_string(value);
        if let Some(owner) = owner {
            req = req.tags(Tag::builder().key(rotor::api::OWNER_TAG).value(owner).build());
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
        let old = self
            .sm
            .describe_secret()
            .secret_id(&id)
            .send()
            .await
            .unwrap()
            .version_ids_to_stages()
            .unwrap()
            .iter()
            .find(|(_, s)| s.iter().any(|s| s == "AWSCURRENT"))
            .map(|(v, _)| v.clone())
            .unwrap();
        let token = uuid_like();
        self.sm
            .put_secret_value()
            .secret_id(&id)
            .client_request_token(&token)
            .secret_string(value)
            .version_stages("AWSPENDING")
            .send()
            .await
            .expect("put AWSPENDING");
        self.sm
            .update_secret_version_stage()
            .secret_id(&id)
            .version_stage("AWSCURRENT")
            .move_to_version_id(&token)
            .remove_from_version_id(old)
            .send()
            .await
            .expect("move AWSCURRENT");
        token
    }

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
                    self.rotor.as_ref().map(Rotor::logs).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
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

    pub async fn wait_condition(&self, name: &str, type_: &str, status: &str, reason: &str) -> RotatedSecret {
        self.wait_rs(name, &format!("{type_}={status} ({reason})"), |rs| {
            condition(rs, type_).is_some_and(|c| c.status == status && c.reason == reason)
        })
        .await
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

    pub async fn events(&self) -> Vec<Event> {
        Api::<Event>::namespaced(self.client.clone(), &self.ns)
            .list(&ListParams::default())
            .await
            .expect("list events")
            .items
    }

    /// Asserts no value appears in rotor's log, this namespace's Events, or
    /// any RotatedSecret's status.
    pub async fn assert_no_leak(&self, values: &[&str]) {
        let logs = self.rotor.as_ref().map(Rotor::logs).unwrap_or_default();
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

pub fn uuid_like() -> String {
    use rand::Rng;
    let b: [u8; 16] = rand::rng().random();
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// A `rotor run` process for one namespace, under the chart's RBAC.
pub struct Rotor {
    child: Child,
    log: PathBuf,
    pub metrics_port: u16,
}

impl Rotor {
    fn start(ns: &str, extra: &[&str], endpoint: &str) -> Rotor {
        let bed = testbed();
        let log = bed.dir.join(format!("rotor-{ns}-{}.log", random_suffix()));
        let out = std::fs::File::create(&log).expect("log file");
        let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(env!("CARGO_BIN_EXE_rotor"))
            .arg("run")
            .args(["--namespace", ns, "--min-refresh-interval", "1s"])
            // A test may run rotor as a cluster of its own, so that the
            // version sweep lists only that test's secrets.
            .args(
                (!extra.contains(&"--cluster-name"))
                    .then_some(["--cluster-name", CLUSTER])
                    .into_iter()
                    .flatten(),
            )
            // Tests send rotate-now tokens back to back; the spacing has its
            // own test, which passes the default.
            .args(
                (!extra.contains(&"--rotate-now-min-interval"))
                    .then_some(["--rotate-now-min-interval", "100ms"])
                    .into_iter()
                    .flatten(),
            )
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
            .args(extra)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("KUBECONFIG", &bed.rotor_kubeconfig)
            .env("AWS_REGION", REGION)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_ENDPOINT_URL", endpoint)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            // moto answers unimplemented paths with HTML 500s: no SDK retries.
            .env("AWS_MAX_ATTEMPTS", "1")
            .env("RUST_LOG", "info,rotor=debug")
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .expect("start rotor");
        Rotor {
            child,
            log,
            metrics_port,
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for /readyz to answer 200 (caches synced).
    pub async fn wait_ready(&self) {
        let url = format!("http://127.0.0.1:{}/readyz", self.metrics_port);
        eventually("/readyz to be 200", Duration::from_secs(20), || async {
            let out = Command::new("curl").args(["-sf", &url]).output().ok()?;
            out.status.success().then_some(())
        })
        .await
    }

    /// Whether the process is still running (no crash, no exit).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub async fn metrics(&self) -> String {
        let url = format!("http://127.0.0.1:{}/metrics", self.metrics_port);
        eventually("metrics endpoint", Duration::from_secs(10), || async {
            let out = Command::new("curl").args(["-sf", &url]).output().ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
        })
        .await
    }
}

impl Drop for Rotor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
