//! Control-plane and process failures in miniature (issue 11, part 5): the
//! short versions `make test` keeps of the long failure runs. kube-apiserver
//! and etcd restarted while rotations are being followed (each on a private
//! control plane, so the tests sharing the test bed's API server are not
//! disturbed), rotor SIGKILLed at random moments while it provisions, the
//! leader SIGKILLed mid-round with a standby taking over, and rotor's Secret
//! watch refused (403) for good while rotations go on. Each ends by
//! checking what a clean run leaves: every Secret at the new version, every
//! consumer rolled exactly once per version, one AWS secret and one key per
//! object, and (where rotor must survive) the same process still running.
//!
//! Not repeated here: AWS at a fifth of calls failing is
//! `hostile::a_fifth_of_aws_calls_failing_loses_nothing` (20 objects, two
//! rotation rounds, one rollout per rotation, no duplicate secret or key),
//! and a kill while CreateKey is in flight is
//! `provision::rotor_stopped_during_create_key_makes_no_second_key`.
//!
//! Rotations are done as a rotation Lambda does them (PutSecretValue
//! AWSPENDING, then UpdateSecretVersionStage), never with moto's RotateSecret.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use aws_sdk_secretsmanager::types::{Filter, FilterNameStringType, Tag};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule};
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use rand::Rng;
use rotor::api::{OWNER_TAG, RotatedSecret, VERSION_ID_ANNOTATION};
use rotor::k8s::rollout::annotation_key;
use serde_json::{Value, json};
use testbed::{ControlPlane, RotorCommand, random_suffix, try_eventually};

use crate::common::{
    AwsProxy, CLUSTER, Env, Rotor, alias_target, condition, eventually, key_owners, kms,
    leader_election_flags, testbed,
};

const MANAGER: &str = "rotor-reliability-tests";

// ---------------------------------------------------------------- helpers

/// A `rotor run` under the chart's RBAC (the `rotor` user of `kubeconfig`),
/// with `args` after the test defaults; its log stays in the test bed's folder.
fn spawn_rotor(kubeconfig: &Path, endpoint: &str, args: &[&str]) -> Rotor {
    let mut all: Vec<String> = vec!["--min-refresh-interval".into(), "1s".into()];
    all.extend(args.iter().map(|s| s.to_string()));
    Rotor::spawn(&RotorCommand {
        bin: env!("CARGO_BIN_EXE_rotor").into(),
        kubeconfig: kubeconfig.to_owned(),
        aws_endpoint: endpoint.to_owned(),
        log: testbed().dir.join(format!("rotor-rel-{}.log", random_suffix())),
        args: all,
        env: vec![
            // moto answers unimplemented paths with HTML 500s: no SDK retries.
            ("AWS_MAX_ATTEMPTS".into(), "1".into()),
            ("RUST_LOG".into(), "info,rotor=debug".into()),
        ],
    })
    .expect("start rotor")
}

/// Sum of a counter's samples in rotor's /metrics.
async fn counter(rotor: &Rotor, name: &str) -> f64 {
    rotor
        .metrics()
        .await
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits until rotor has swept AWS `n` more times: after a round converged,
/// the chance it had to (wrongly) act again.
async fn wait_sweeps(rotor: &Rotor, n: f64) {
    let start = counter(rotor, "rotor_version_sweeps_total").await;
    eventually(
        &format!("{n} more version sweeps"),
        Duration::from_secs(30),
        || async { (counter(rotor, "rotor_version_sweeps_total").await >= start + n).then_some(()) },
    )
    .await;
}

/// Whether `pid` still runs (a zombie, such as a rotor that exited and was
/// not waited for yet, does not).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        == Some(false)
}

/// The same process is still running (it never exited) and /healthz says
/// none of its background tasks, such as the workload watches, gave up.
async fn assert_healthy(rotor: &mut Rotor) {
    rotor.check_alive().unwrap_or_else(|e| panic!("{e}"));
    let authority = format!("127.0.0.1:{}", rotor.metrics_port);
    if let Err(e) = testbed::http::get_ok(authority, "/healthz".into()).await {
        panic!("/healthz: {e}\n{}", rotor.log_tail(40));
    }
}

/// The version a Deployment was last rolled for by `secret`'s rotations.
fn rolled(d: &Deployment, secret: &str) -> Option<String> {
    d.spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(&annotation_key(secret))
        .cloned()
}

fn is_ready(rs: &RotatedSecret) -> bool {
    let generation = rs.metadata.generation;
    condition(rs, "Ready").is_some_and(|c| c.status == "True" && c.observed_generation == generation)
}

/// Versions per object name.
type Versions = BTreeMap<String, String>;

/// Objects in one namespace: an AWS secret each (created here, owned), a
/// RotatedSecret mirroring it into a Secret of the same name, and a
/// Deployment `<name>-app` consuming that Secret (rollout mode Auto).
struct Fleet {
    client: Client,
    ns: String,
    sm: aws_sdk_secretsmanager::Client,
    aws_prefix: String,
    names: Vec<String>,
}

/// A recognisable value per round; compared, never printed.
fn value(round: u32, name: &str) -> String {
    json!({"username": "app", "password": format!("rel-{round}-{name}-Pw")}).to_string()
}

impl Fleet {
    fn new(client: Client, ns: &str, aws_prefix: &str, stem: &str, n: usize) -> Fleet {
        Fleet {
            client,
            ns: ns.to_owned(),
            sm: testbed::aws::secrets_manager(&testbed().aws_endpoint),
            aws_prefix: aws_prefix.to_owned(),
            names: (0..n).map(|i| format!("{stem}{i}")).collect(),
        }
    }

    fn aws_name(&self, name: &str) -> String {
        format!("{}{name}", self.aws_prefix)
    }

    fn rs_api(&self) -> Api<RotatedSecret> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// Creates every AWS secret (owner tag from `owner`), Deployment and RotatedSecret.
    async fn create(&self, owner: impl Fn(&str) -> String) {
        for name in &self.names {
            self.sm
                .create_secret()
                .name(self.aws_name(name))
                .secret_string(value(0, name))
                .tags(Tag::builder().key(OWNER_TAG).value(owner(name)).build())
                .send()
                .await
                .unwrap_or_else(|e| panic!("create AWS secret {name}: {e:?}"));
            let app = format!("{name}-app");
            let deployment: Deployment = serde_json::from_value(json!({
                "metadata": {"name": app},
                "spec": {"selector": {"matchLabels": {"app": app}}, "template": {
                    "metadata": {"labels": {"app": app}},
                    "spec": {"containers": [{"name": "app", "image": "busybox",
                                             "envFrom": [{"secretRef": {"name": name}}]}]}}},
            }))
            .unwrap();
            self.deployments()
                .create(&PostParams::default(), &deployment)
                .await
                .unwrap_or_else(|e| panic!("create Deployment {app}: {e}"));
            let rs = json!({
                "apiVersion": "rotor.dev/v1alpha1", "kind": "RotatedSecret",
                "metadata": {"name": name},
                "spec": {"secretsManager": {"name": self.aws_name(name)}, "refreshInterval": "1s"},
            });
            self.rs_api()
                .patch(name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&rs))
                .await
                .unwrap_or_else(|e| panic!("apply RotatedSecret {name}: {e}"));
        }
    }

    async fn wait_ready(&self, timeout: Duration, rotor: &Rotor) {
        let api = self.rs_api();
        let n = self.names.len();
        let outcome = try_eventually("every object Ready", timeout, || async {
            if !running(rotor.pid) {
                return Some(Err(format!("rotor (pid {}) exited", rotor.pid)));
            }
            let list = api.list(&ListParams::default()).await.ok()?;
            (list.items.len() == n && list.items.iter().all(is_ready)).then_some(Ok(()))
        })
        .await;
        if let Err(e) = outcome.and_then(|r| r) {
            panic!("{e}\nrotor log:\n{}", rotor.log_tail(40));
        }
    }

    /// Does what a rotation Lambda does to every secret; the new versions.
    async fn rotate(&self, names: &[String], round: u32) -> Versions {
        let mut out = Versions::new();
        for name in names {
            let id = self.aws_name(name);
            let old = testbed::aws::current_version(&self.sm, &id)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let (version, _) = testbed::aws::rotate(&self.sm, &id, &old, &value(round, name))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            out.insert(name.clone(), version);
        }
        out
    }

    async fn generations(&self) -> BTreeMap<String, i64> {
        let mut out = BTreeMap::new();
        for name in &self.names {
            let d = self.deployments().get(&format!("{name}-app")).await.unwrap();
            out.insert(name.clone(), d.metadata.generation.expect("generation"));
        }
        out
    }

    async fn rolled_for(&self, name: &str) -> Option<String> {
        let d = self.deployments().get(&format!("{name}-app")).await.ok()?;
        rolled(&d, name)
    }

    /// What is not yet done for round `round` (`versions`): Secrets not
    /// holding the version and its value, Deployments not rolled for it.
    /// Names and versions only, no values. Two list calls, so it can be
    /// polled fast; `None` when they fail.
    async fn behind(&self, versions: &Versions, round: u32) -> Option<Vec<String>> {
        let secrets = self.secrets().list(&ListParams::default()).await.ok()?.items;
        let deployments = self.deployments().list(&ListParams::default()).await.ok()?.items;
        let mut out = Vec::new();
        for (name, version) in versions {
            match secrets.iter().find(|s| s.metadata.name.as_ref() == Some(name)) {
                Some(s) => {
                    let held = s
                        .metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get(VERSION_ID_ANNOTATION));
                    let expected: Value = serde_json::from_str(&value(round, name)).unwrap();
                    let password = s.data.as_ref().and_then(|d| d.get("password"));
                    if held != Some(version) {
                        out.push(format!("Secret {name} holds version {held:?}, not {version}"));
                    } else if password.map(|p| p.0.as_slice())
                        != expected["password"].as_str().map(str::as_bytes)
                    {
                        out.push(format!("Secret {name} is at {version} without its value"));
                    }
                }
                None => out.push(format!("Secret {name} missing")),
            }
            let app = format!("{name}-app");
            let rolled = deployments
                .iter()
                .find(|d| d.metadata.name.as_ref() == Some(&app))
                .and_then(|d| rolled(d, name));
            if rolled.as_ref() != Some(version) {
                out.push(format!("{app} rolled for {rolled:?}, not {version}"));
            }
        }
        Some(out)
    }

    /// Waits until every Secret holds its new version and every consumer was
    /// rolled for it; on timeout, says what is behind and shows rotor's log.
    async fn wait_followed(&self, versions: &Versions, round: u32, timeout: Duration, rotor: &Rotor) {
        let outcome = try_eventually(&format!("round {round} followed"), timeout, || async {
            if !running(rotor.pid) {
                return Some(Err(format!("rotor (pid {}) exited", rotor.pid)));
            }
            self.behind(versions, round).await?.is_empty().then_some(Ok(()))
        })
        .await;
        if let Err(e) = outcome.and_then(|r| r) {
            panic!(
                "{e}: {:?}\nrotor log:\n{}",
                self.behind(versions, round).await,
                rotor.log_tail(60)
            );
        }
    }

    /// Exactly `bumps` pod-template changes since `before` (one restart
    /// each), and the rollout annotation at the latest version.
    async fn assert_rolled(&self, before: &BTreeMap<String, i64>, versions: &Versions, bumps: i64) {
        let now = self.generations().await;
        for (name, version) in versions {
            assert_eq!(
                now[name] - before[name],
                bumps,
                "{name}-app: {bumps} rollout(s) expected since the fleet was Ready, saw {} (annotation {:?})",
                now[name] - before[name],
                self.rolled_for(name).await
            );
            assert_eq!(self.rolled_for(name).await.as_ref(), Some(version), "{name}-app");
        }
    }
}

// ---------------------------------------------------------------- 1. and 2. control plane

/// A control plane of the test's own with rotor's CRD, and the chart's
/// ClusterRole (named `role`) bound to the `rotor` user; and its admin client.
async fn private_control_plane(role: &str) -> (ControlPlane, kube::Client) {
    let cp = tokio::task::spawn_blocking(ControlPlane::start)
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}"));
    let admin = testbed::k8s::client_from(&cp.admin_kubeconfig)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    testbed::k8s::install_cluster_wide(&admin, &rotor::api::crd::crd(), MANAGER, role)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    (cp, admin)
}

async fn create_namespace(admin: &kube::Client, ns: &str) {
    Api::<Namespace>::all(admin.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap(),
        )
        .await
        .expect("namespace");
}

/// A private control plane with rotor (no leader election: one process, it
/// must ride the outage out) following four objects. Half of a round of
/// rotations lands just before `component` is stopped, the other half while
/// it is down (3 s plus its start; AWS stays up). rotor must not exit or
/// turn unhealthy, every Secret must reach its version, every Deployment be
/// rolled exactly once for it, and the next round after recovery be
/// followed too.
async fn restart_mid_rotation(component: &'static str) {
    const N: usize = 4;
    const DOWN: Duration = Duration::from_secs(3);
    let (cp, admin) = private_control_plane("rotor-reliability").await;
    let suffix = random_suffix();
    let ns = format!("rel-{suffix}");
    create_namespace(&admin, &ns).await;
    // A cluster name of its own: the sweep lists only these secrets.
    let cluster = format!("rel-{suffix}");
    let fleet = Fleet::new(admin.clone(), &ns, &format!("it/{suffix}/"), "c", N);
    fleet.create(|name| format!("{cluster}/{ns}/{name}")).await;
    let mut rotor = spawn_rotor(
        &cp.rotor_kubeconfig,
        &testbed().aws_endpoint,
        &["--namespace", &ns, "--cluster-name", &cluster],
    );
    fleet.wait_ready(Duration::from_secs(30), &rotor).await;
    let before = fleet.generations().await;

    let (early, late) = fleet.names.split_at(N / 2);
    let mut round1 = fleet.rotate(early, 1).await;
    let pid = cp.pid(component).unwrap_or_else(|e| panic!("{e}"));
    let dir = cp.dir.clone();
    let restarted = Instant::now();
    // kube-apiserver 1.20 does not exit on SIGTERM while a watch (rotor's) is
    // open, and hack/testbed.sh would wait 5 s before its SIGKILL. Crash it
    // outright instead (connections reset, the harsher case); etcd stops on
    // SIGTERM at once.
    if component == "kube-apiserver" {
        std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .expect("kill");
    }
    let restart = tokio::task::spawn_blocking(move || testbed::control_plane::restart(&dir, component, DOWN));
    eventually(
        &format!("{component} stopped"),
        Duration::from_secs(40),
        || async { (!running(pid)).then_some(()) },
    )
    .await;
    round1.extend(fleet.rotate(late, 1).await);
    assert!(
        !restart.is_finished(),
        "the second half of the round must land while {component} is down"
    );
    restart.await.unwrap().unwrap_or_else(|e| panic!("{e}"));
    let back = Instant::now();
    eprintln!("{component} down and back in {:?}", restarted.elapsed());

    fleet
        .wait_followed(&round1, 1, Duration::from_secs(60), &rotor)
        .await;
    eprintln!(
        "round 1 followed {:?} after {component} answered again",
        back.elapsed()
    );
    assert_healthy(&mut rotor).await;
    fleet.assert_rolled(&before, &round1, 1).await;

    // After recovery: the next round is followed, and round 1 never rolled again.
    let round2 = fleet.rotate(&fleet.names, 2).await;
    fleet
        .wait_followed(&round2, 2, Duration::from_secs(30), &rotor)
        .await;
    wait_sweeps(&rotor, 2.0).await;
    fleet.assert_rolled(&before, &round2, 2).await;
    assert_healthy(&mut rotor).await;
    let restarts = counter(&rotor, "rotor_restarts_total").await;
    eprintln!("rotor restarted {restarts} workloads over two rounds of {N}");
}

#[tokio::test]
async fn the_api_server_restarts_mid_rotation() {
    restart_mid_rotation("kube-apiserver").await;
}

#[tokio::test]
async fn etcd_restarts_mid_rotation() {
    restart_mid_rotation("etcd").await;
}

// ---------------------------------------------------------------- 3. SIGKILL while provisioning

/// Every secret whose owner tag starts with `prefix`, by owner (any name,
/// deletion planned or not).
async fn secrets_by_owner(
    sm: &aws_sdk_secretsmanager::Client,
    prefix: &str,
) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut token = None;
    loop {
        let page = sm
            .list_secrets()
            .filters(
                Filter::builder()
                    .key(FilterNameStringType::TagKey)
                    .values(OWNER_TAG)
                    .build(),
            )
            .filters(
                Filter::builder()
                    .key(FilterNameStringType::TagValue)
                    .values(prefix)
                    .build(),
            )
            .include_planned_deletion(true)
            .max_results(100)
            .set_next_token(token)
            .send()
            .await
            .expect("ListSecrets");
        for s in page.secret_list() {
            if let Some(owner) = s
                .tags()
                .iter()
                .find(|t| t.key() == Some(OWNER_TAG))
                .and_then(|t| t.value())
                .filter(|v| v.starts_with(prefix))
            {
                out.entry(owner.to_owned())
                    .or_default()
                    .push(s.name().unwrap_or_default().to_owned());
            }
        }
        token = page.next_token().map(str::to_owned);
        if token.is_none() {
            return out;
        }
    }
}

/// Every KMS key (any state) whose owner tag starts with `prefix`, by owner:
/// one scan of all keys.
async fn keys_by_owner(prefix: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (id, owner) in key_owners(&kms()).await {
        if let Some(owner) = owner.filter(|o| o.starts_with(prefix)) {
            out.entry(owner).or_default().push(id);
        }
    }
    out
}

/// A spec that makes rotor create the secret, its generated password and a
/// KMS key with an alias of its own.
fn key_creating(env: &Env, name: &str) -> Value {
    json!({
        "secretsManager": {
            "name": env.aws_name(name),
            "kmsKey": {"alias": env.alias(name), "create": true},
            "initialValue": {"generate": [{"key": "password", "length": 24}]},
        },
    })
}

/// CreateKey, CreateAlias and CreateSecret calls at the proxy so far.
fn creates(proxy: &AwsProxy) -> u64 {
    let calls = proxy.calls();
    ["CreateKey", "CreateAlias", "CreateSecret"]
        .iter()
        .map(|op| calls.get(*op).copied().unwrap_or(0))
        .sum()
}

/// Eight objects that make rotor create a KMS key (one alias each), the
/// secret and its generated value; rotor SIGKILLed five times at a random
/// moment after it started writing, restarted after a pause each time. The
/// end state is a clean run's: every object Ready, exactly one AWS secret
/// and one key (in any state) per object, the alias and the secret on that
/// key, one version, and each Secret holding AWSCURRENT's value.
#[tokio::test]
async fn sigkill_at_random_moments_while_provisioning_leaves_one_secret_and_key_each() {
    const N: usize = 8;
    const KILLS: usize = 5;
    let mut env = Env::new().await;
    let proxy = AwsProxy::start(&testbed().aws_endpoint);
    // Creations take half a second to reach moto, so kills often land while
    // one is in flight (the request still completes: as on AWS, a dead
    // client does not cancel a call already sent).
    for op in ["CreateKey", "CreateSecret"] {
        proxy.fault_spec(json!({"operation": op, "count": -1, "kind": "delay", "seconds": 0.5}));
    }
    let names: Vec<String> = (0..N).map(|i| format!("p{i}")).collect();
    for name in &names {
        let mut spec = key_creating(&env, name);
        spec["secretsManager"]["initialValue"]["template"] = json!({"username": "app"});
        spec["refreshInterval"] = json!("1s");
        env.apply_rs(name, spec).await;
    }
    let rs_api = env.rs_api();
    let ready = || async {
        let list = rs_api.list(&ListParams::default()).await.unwrap();
        list.items.iter().filter(|rs| is_ready(rs)).count()
    };
    // Two writes a second: provisioning spans several lives of the process,
    // so the kills fall between different steps of different objects.
    let args = ["--aws-write-rate", "2"];
    let mut kills = Vec::new();
    for _ in 0..KILLS {
        env.start_rotor_with_endpoint(&args, &proxy.url);
        let at_start = creates(&proxy);
        let deadline = Instant::now() + Duration::from_secs(30);
        while creates(&proxy) == at_start && ready().await < N {
            assert!(
                Instant::now() < deadline,
                "rotor made no progress\n{}",
                env.rotor_log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let wait = rand::rng().random_range(0..1200);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let (ready_then, creates_then) = (ready().await, creates(&proxy));
        env.rotor.as_mut().unwrap().kill();
        kills.push((wait, ready_then, creates_then));
        // A crashed pod comes back after a pause; by then every call the
        // dead process sent has reached moto (0.5 s delay).
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    eprintln!("kills (ms after a write, objects Ready, creation calls so far): {kills:?}");
    assert!(
        kills.iter().all(|(_, ready, _)| *ready < N),
        "every kill must land while provisioning: {kills:?}"
    );

    env.start_rotor_with_endpoint(&args, &proxy.url);
    for name in &names {
        env.wait_ready(name).await;
    }
    eprintln!("AWS calls: {:?}", proxy.calls());

    let prefix = format!("{CLUSTER}/{}/", env.ns);
    let secrets = secrets_by_owner(&env.sm, &prefix).await;
    let keys = keys_by_owner(&prefix).await;
    assert_eq!(secrets.len(), N, "owners of AWS secrets: {secrets:?}");
    assert_eq!(keys.len(), N, "owners of KMS keys: {keys:?}");
    for name in &names {
        let me = env.owner(name);
        assert_eq!(secrets[&me], [env.aws_name(name)], "{name}: one AWS secret");
        let [key] = keys[&me].as_slice() else {
            panic!("{name}: exactly one KMS key, found {:?}", keys[&me]);
        };
        assert_eq!(crate::common::key_state(key).await, "Enabled", "{name}");
        assert_eq!(
            alias_target(&env.alias(name)).await.as_ref(),
            Some(key),
            "{name}: alias"
        );
        let rs = env.rs_api().get(name).await.unwrap();
        let key_arn = rs.status.as_ref().and_then(|s| s.kms_key_arn.clone()).unwrap();
        assert!(key_arn.ends_with(key.as_str()), "{name}: status names {key_arn}");
        assert_eq!(
            env.describe(name).await.kms_key_id(),
            Some(key_arn.as_str()),
            "{name}: the secret uses the key"
        );
        assert_eq!(env.version_count(name).await, 1, "{name}: one initial value");
        let mirrored = env.secret_data(name).await.expect("Secret");
        let current = env.current_json(name).await;
        assert!(
            current["password"].as_str().is_some_and(|p| p.len() == 24)
                && mirrored.get("password").map(String::as_str) == current["password"].as_str(),
            "{name}: the Secret holds AWSCURRENT's generated value"
        );
    }
}

/// Objects waiting for the write budget when rotor is killed have sent no
/// CreateKey, so they must not be marked as having one under way: each
/// marked object scans every key in the account (ListKeys, and the tags of
/// each key) after a restart. Six objects at the lowest write rate (one
/// write per 2 s): rotor is killed just after its first CreateKey, while
/// the other five wait. Before the fix all six were marked, and the soak's
/// 20 kills while provisioning 1,000 objects cost 36,396 ListResourceTags.
#[tokio::test]
async fn objects_waiting_for_the_write_budget_are_not_marked_as_creating_a_key() {
    const N: usize = 6;
    let mut env = Env::new().await;
    let proxy = AwsProxy::start(&testbed().aws_endpoint);
    proxy.fault_spec(json!({"operation": "CreateKey", "count": -1, "kind": "delay", "seconds": 0.3}));
    let names: Vec<String> = (0..N).map(|i| format!("w{i}")).collect();
    for name in &names {
        env.apply_rs(name, key_creating(&env, name)).await;
    }
    let args = ["--aws-write-rate", "0.5"];
    env.start_rotor_with_endpoint(&args, &proxy.url);
    let calls = |op: &str| proxy.calls().get(op).copied().unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while calls("CreateKey") == 0 {
        assert!(Instant::now() < deadline, "no CreateKey\n{}", env.rotor_log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Long enough for every object to reach the write budget, well short of
    // the next token (2 s).
    tokio::time::sleep(Duration::from_millis(900)).await;
    env.rotor.as_mut().unwrap().kill();
    // Calls the dead process sent have reached the proxy by now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let create_keys = calls("CreateKey");
    let list = env.rs_api().list(&ListParams::default()).await.unwrap();
    let marked: Vec<_> = list
        .items
        .iter()
        .filter(|rs| condition(rs, "KmsKeyReady").is_some_and(|c| c.reason == "CreatingKey"))
        .map(|rs| rs.metadata.name.clone().unwrap_or_default())
        .collect();
    assert!(
        create_keys < N as u64,
        "the kill must land while objects wait: {create_keys} CreateKey"
    );
    // A kill between saving the mark and sending the call leaves one object
    // marked that sent nothing (one write token every 2 s: at most one).
    let may_be_marked = create_keys + 1;
    assert!(
        marked.len() as u64 <= may_be_marked,
        "{} objects marked CreatingKey, {create_keys} CreateKey sent: {marked:?}",
        marked.len()
    );

    let before = calls("ListKeys");
    env.start_rotor_with_endpoint(&[], &proxy.url);
    for name in &names {
        env.wait_ready(name).await;
    }
    // One scan reads ListKeys pages of 1,000 over every key of the shared
    // moto account.
    let pages = key_owners(&kms()).await.len().div_ceil(1000).max(1) as u64;
    let listed = calls("ListKeys") - before;
    assert!(
        listed <= may_be_marked * pages,
        "{listed} ListKeys pages after the restart ({pages} a scan), {create_keys} CreateKey before it"
    );
    let keys = keys_by_owner(&format!("{CLUSTER}/{}/", env.ns)).await;
    assert_eq!(keys.len(), N, "one key per object: {keys:?}");
    assert!(
        keys.values().all(|k| k.len() == 1),
        "one key per object: {keys:?}"
    );
}

// ---------------------------------------------------------------- 4. leader failover

/// Two replicas with leader election (3 s lease), six objects with a
/// Deployment each. The leader is SIGKILLed as soon as the first Secret or
/// Deployment shows it working on a round of rotations, with rollouts still
/// pending. The standby, which made no AWS call while waiting, takes the
/// lease within the lease duration plus one retry period, finishes the
/// round, and every Deployment is rolled exactly once.
#[tokio::test]
async fn the_leader_killed_mid_round_fails_over_without_a_double_rollout() {
    const N: usize = 6;
    const LEASE: Duration = Duration::from_secs(3);
    let mut env = Env::new().await;
    let fleet = Fleet::new(env.client.clone(), &env.ns, &env.prefix, "l", N);
    fleet.create(|name| env.owner(name)).await;
    let ns = env.ns.clone();
    // One reconcile at a time: the round takes several of them, so the kill
    // falls inside it.
    let flags = leader_election_flags(&ns, "rotor-rel", &["--concurrency", "1"]);
    let leases: Api<Lease> = Api::namespaced(env.client.clone(), &ns);
    let holder = || async {
        leases
            .get_opt("rotor-rel")
            .await
            .ok()
            .flatten()
            .and_then(|l| l.spec?.holder_identity)
    };

    env.start_rotor(&flags);
    fleet
        .wait_ready(Duration::from_secs(30), env.rotor.as_ref().unwrap())
        .await;
    let first = holder().await.expect("a leader");
    let standby_aws = AwsProxy::start(&testbed().aws_endpoint);
    let mut standby = spawn_rotor(
        &testbed().rotor_kubeconfig,
        &standby_aws.url,
        &[
            &["--namespace", ns.as_str(), "--cluster-name", CLUSTER],
            &flags[..],
        ]
        .concat(),
    );
    eventually("the standby to wait", Duration::from_secs(20), || async {
        standby.logs().contains("waiting to become leader").then_some(())
    })
    .await;
    let before = fleet.generations().await;

    let round = fleet.rotate(&fleet.names, 1).await;
    // Kill at the first sign of the round (polled as fast as the API answers).
    let deadline = Instant::now() + Duration::from_secs(20);
    // Untouched, each object is behind twice: its Secret and its Deployment.
    while fleet.behind(&round, 1).await.is_none_or(|b| b.len() == 2 * N) {
        assert!(
            Instant::now() < deadline,
            "the leader never started the round\n{}",
            env.rotor_log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let standby_calls = standby_aws.calls();
    env.rotor.as_mut().unwrap().kill();
    let killed = Instant::now();
    let left = fleet
        .behind(&round, 1)
        .await
        .expect("list Secrets and Deployments");
    eprintln!("the leader died leaving {left:?}");
    assert!(
        left.iter().any(|b| b.contains("-app rolled for")),
        "rollouts must be pending when the leader dies"
    );
    assert!(
        standby_calls.is_empty(),
        "the standby called AWS while another replica led: {standby_calls:?}"
    );

    let second = eventually(
        "the standby to take the lease",
        Duration::from_secs(15),
        || async { holder().await.filter(|h| *h != first) },
    )
    .await;
    let failover = killed.elapsed();
    eprintln!("failover to {second} after {failover:?}");
    // The lease expires LEASE after its last renewal, which came before the
    // kill; the standby looks every retry period (LEASE/5); plus 1 s for a
    // loaded machine.
    assert!(
        failover <= LEASE + LEASE / 5 + Duration::from_secs(1),
        "failover took {failover:?}"
    );
    assert!(
        standby.logs().contains("became leader"),
        "{}",
        standby.log_tail(20)
    );

    fleet
        .wait_followed(&round, 1, Duration::from_secs(30), &standby)
        .await;
    wait_sweeps(&standby, 2.0).await;
    fleet.assert_rolled(&before, &round, 1).await;
    assert_healthy(&mut standby).await;
}

// ---------------------------------------------------------------- 5. a failing Secret watch

/// The chart's ClusterRole without list and watch on Secrets (get, create
/// and patch stay: rotor still writes its Secrets), as `role`, applied over
/// what `install_cluster_wide` made.
async fn deny_secret_watch(admin: &Client, role: &str) {
    let path = testbed::repo_root().join("charts/rotor/files/clusterrole-rules.yaml");
    let mut rules: Vec<PolicyRule> = serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let secrets = rules
        .iter_mut()
        .find(|r| {
            r.resources
                .as_ref()
                .is_some_and(|res| res.iter().any(|x| x == "secrets"))
        })
        .expect("a rule for Secrets");
    secrets.verbs.retain(|v| v != "list" && v != "watch");
    let cluster_role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": role}, "rules": rules,
    });
    Api::<ClusterRole>::all(admin.clone())
        .patch(
            role,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&cluster_role),
        )
        .await
        .unwrap_or_else(|e| panic!("cluster role: {e}"));
}

/// For each fleet, how long after now until its Secrets hold `versions`
/// (looked at every 100 ms, for at most `limit`); `None` past it.
async fn secrets_reach(rounds: &[(&Fleet, Versions)], limit: Duration) -> Vec<Option<Duration>> {
    let start = Instant::now();
    let mut reached = vec![None; rounds.len()];
    while reached.contains(&None) && start.elapsed() < limit {
        for ((fleet, versions), reached) in rounds.iter().zip(&mut reached) {
            if reached.is_some() {
                continue;
            }
            let Ok(list) = fleet.secrets().list(&ListParams::default()).await else {
                continue;
            };
            let held = |name: &String| {
                list.items
                    .iter()
                    .find(|s| s.metadata.name.as_ref() == Some(name))
                    .and_then(|s| s.metadata.annotations.as_ref()?.get(VERSION_ID_ANNOTATION))
            };
            if versions.iter().all(|(name, version)| held(name) == Some(version)) {
                *reached = Some(start.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    reached
}

/// rotor's Secret watch failing for good (its role lost list and watch on
/// Secrets: 403 on every try) must not hold back the rotations the sweep
/// finds. A watch error that reached kube-runtime's Controller used to pause
/// all of that controller's triggers behind one shared backoff (0.8 s
/// doubling to 30 s, plus up to as much again of jitter), reset only by a
/// trigger getting through; the watch itself retries about every second, so
/// each pause ended in another error. After 50 s a rotation waited out the
/// rest of a 25–60 s pause. Two namespaces with an object each (refresh
/// 1 s), so two controllers with pauses of their own, on a private control
/// plane: a rotation in each must reach its Secret within 8 s (and its
/// consumer be rolled once). The old code passed only when both pauses
/// happened to end within 8 s of the rotation.
#[tokio::test]
async fn a_failing_secret_watch_does_not_hold_back_rotations() {
    const FAILING_FOR: Duration = Duration::from_secs(50);
    const BOUND: Duration = Duration::from_secs(8);
    let role = "rotor-no-secret-watch";
    let (cp, admin) = private_control_plane(role).await;
    deny_secret_watch(&admin, role).await;
    let rotor_client = testbed::k8s::client_from(&cp.rotor_kubeconfig)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let suffix = random_suffix();
    let cluster = format!("rel-{suffix}");
    let mut fleets = Vec::new();
    for scope in ["a", "b"] {
        let ns = format!("rel-{suffix}-{scope}");
        create_namespace(&admin, &ns).await;
        // The API server must already refuse what rotor's Secret watch asks.
        let as_rotor: Api<Secret> = Api::namespaced(rotor_client.clone(), &ns);
        eventually(
            "rotor to be refused a Secret list",
            Duration::from_secs(10),
            || async {
                matches!(
                    as_rotor.list(&ListParams::default()).await,
                    Err(kube::Error::Api(e)) if e.code == 403
                )
                .then_some(())
            },
        )
        .await;
        let fleet = Fleet::new(admin.clone(), &ns, &format!("it/{suffix}/{scope}/"), "w", 1);
        fleet.create(|name| format!("{cluster}/{ns}/{name}")).await;
        fleets.push(fleet);
    }
    let namespaces = fleets.iter().map(|f| f.ns.as_str()).collect::<Vec<_>>().join(",");
    let started = Instant::now();
    let mut rotor = spawn_rotor(
        &cp.rotor_kubeconfig,
        &testbed().aws_endpoint,
        &["--namespace", &namespaces, "--cluster-name", &cluster],
    );
    for fleet in &fleets {
        fleet.wait_ready(Duration::from_secs(30), &rotor).await;
    }
    eprintln!("Ready {:?} after rotor started", started.elapsed());
    let mut before = Vec::new();
    for fleet in &fleets {
        before.push(fleet.generations().await);
    }
    tokio::time::sleep(FAILING_FOR.saturating_sub(started.elapsed())).await;

    let mut rounds = Vec::new();
    for fleet in &fleets {
        rounds.push((fleet, fleet.rotate(&fleet.names, 1).await));
    }
    let rotated = started.elapsed();
    let delays = secrets_reach(&rounds, Duration::from_secs(65)).await;
    eprintln!("rotated {rotated:?} after rotor started; Secrets followed after {delays:?}");
    assert!(
        delays.iter().all(|d| d.is_some_and(|d| d <= BOUND)),
        "each rotation must reach its Secret within {BOUND:?}, took {delays:?}\nrotor log:\n{}",
        rotor.log_tail(40)
    );
    for ((fleet, versions), before) in rounds.iter().zip(&before) {
        fleet
            .wait_followed(versions, 1, Duration::from_secs(30), &rotor)
            .await;
        fleet.assert_rolled(before, versions, 1).await;
    }
    assert!(
        rotor.logs().contains("secrets is forbidden"),
        "the Secret watch was expected to fail (403)\n{}",
        rotor.log_tail(40)
    );
    assert_healthy(&mut rotor).await;
}

/// After a failed CreateKey, the next attempt scans every key in the region
/// for one the failed call may have made, reading each key's tags. One failed
/// read among them must not fail the whole scan, or the object never
/// converges while AWS is flaky (the soak's 20%-fault round left 6 of 200
/// objects retrying for good). A region of its own holding 40 other keys; a
/// fifth of the tag reads fail, with a code the SDK does not retry itself.
#[tokio::test]
async fn a_key_scan_survives_failing_tag_reads() {
    const REGION: &str = "eu-north-1";
    let env = Env::new().await;
    let proxy = AwsProxy::start(&testbed().aws_endpoint);
    let kms = testbed::aws::kms_in(&testbed().aws_endpoint, REGION);
    let keys = key_owners(&kms).await.len();
    for _ in keys..40 {
        kms.create_key()
            .description("rotor test: nobody's key")
            .send()
            .await
            .unwrap();
    }
    let rule = |op: &str, count: i64| json!({"operation": op, "count": count, "kind": "error", "status": 400, "code": "KMSInternalException"});
    proxy.fault_spec(rule("CreateKey", 1));
    let mut flaky = rule("ListResourceTags", -1);
    flaky["probability"] = json!(0.2);
    proxy.fault_spec(flaky);
    let mut spec = key_creating(&env, "scan");
    spec["secretsManager"]["region"] = json!(REGION);
    env.apply_rs("scan", spec).await;
    let mut env = env;
    env.start_rotor_with_endpoint(&[], &proxy.url);
    // A failed scan waits for the object's backoff before the next attempt:
    // more time than `wait_ready` gives on a busy machine.
    let started = Instant::now();
    let rs_api = env.rs_api();
    eventually("the object Ready", Duration::from_secs(90), || async {
        let rs = rs_api.get("scan").await.ok()?;
        condition(&rs, "Ready")
            .is_some_and(|c| c.status == "True")
            .then_some(())
    })
    .await;
    eprintln!("Ready after {:.1} s", started.elapsed().as_secs_f64());
    let calls = proxy.calls();
    eprintln!("AWS calls: {calls:?}");
    assert_eq!(
        calls.get("CreateKey"),
        Some(&2),
        "one failed CreateKey, then one that made the key"
    );
    let owner = env.owner("scan");
    let mine = key_owners(&kms)
        .await
        .into_iter()
        .filter(|(_, o)| o.as_deref() == Some(owner.as_str()))
        .count();
    assert_eq!(mine, 1, "one key owned by the object");
}
