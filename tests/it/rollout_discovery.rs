//! Finding a Secret's consumers through the workload caches, and rolling them
//! with a pod-template annotation, on the real test bed.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use rotor::api::WorkloadKind;
use rotor::k8s::rollout::{
    Workloads, annotation_key, field_manager, needs_roll, roll, template_annotation_patch,
};
use serde_json::{Value, json};

use crate::common::{Env, eventually};

const SECRET: &str = "app-secret";

fn container(extra: Value) -> Value {
    let mut c = json!({"name": "app", "image": "busybox", "command": ["sleep", "3600"]});
    c.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    c
}

/// A workload with a `team: blue` pod-template annotation and the given pod spec.
fn workload(kind: WorkloadKind, name: &str, pod_spec: Value) -> Value {
    let labels = json!({"app": name});
    let mut spec = json!({
        "selector": {"matchLabels": labels},
        "template": {
            "metadata": {"labels": labels, "annotations": {"team": "blue"}},
            "spec": pod_spec,
        },
    });
    if kind == WorkloadKind::StatefulSet {
        spec["serviceName"] = json!(name);
    }
    json!({
        "apiVersion": "apps/v1",
        "kind": format!("{kind:?}"),
        "metadata": {"name": name, "annotations": {"owner": "tests"}},
        "spec": spec,
    })
}

async fn create(client: &Client, ns: &str, kind: WorkloadKind, name: &str, pod_spec: Value) {
    let obj = workload(kind, name, pod_spec);
    let pp = PostParams::default();
    match kind {
        WorkloadKind::Deployment => Api::<Deployment>::namespaced(client.clone(), ns)
            .create(&pp, &serde_json::from_value(obj).unwrap())
            .await
            .map(drop),
        WorkloadKind::StatefulSet => Api::<StatefulSet>::namespaced(client.clone(), ns)
            .create(&pp, &serde_json::from_value(obj).unwrap())
            .await
            .map(drop),
        WorkloadKind::DaemonSet => Api::<DaemonSet>::namespaced(client.clone(), ns)
            .create(&pp, &serde_json::from_value(obj).unwrap())
            .await
            .map(drop),
    }
    .unwrap_or_else(|e| panic!("create {kind:?} {name}: {e}"));
}

fn secret_env(secret: &str) -> Value {
    json!({"env": [{"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": secret, "key": "password"}}}]})
}

/// Pod-template annotations of a workload, read from the API server.
async fn template_annotations(
    client: &Client,
    ns: &str,
    kind: WorkloadKind,
    name: &str,
) -> BTreeMap<String, String> {
    let template = match kind {
        WorkloadKind::Deployment => {
            Api::<Deployment>::namespaced(client.clone(), ns)
                .get(name)
                .await
                .unwrap()
                .spec
                .unwrap()
                .template
        }
        WorkloadKind::StatefulSet => {
            Api::<StatefulSet>::namespaced(client.clone(), ns)
                .get(name)
                .await
                .unwrap()
                .spec
                .unwrap()
                .template
        }
        WorkloadKind::DaemonSet => {
            Api::<DaemonSet>::namespaced(client.clone(), ns)
                .get(name)
                .await
                .unwrap()
                .spec
                .unwrap()
                .template
        }
    };
    template.metadata.unwrap().annotations.unwrap_or_default()
}

fn names(workloads: &[rotor::k8s::rollout::Workload]) -> Vec<(WorkloadKind, &str)> {
    workloads.iter().map(|w| (w.kind, w.name.as_str())).collect()
}

#[tokio::test]
async fn consumers_are_discovered_and_rolled_once() {
    let env = Env::new().await;
    let (client, ns) = (env.client.clone(), env.ns.as_str());
    use WorkloadKind::{DaemonSet as Ds, Deployment as Deploy, StatefulSet as Sts};

    // Consumers, one per way of referencing the Secret.
    create(
        &client,
        ns,
        Deploy,
        "env-ref",
        json!({"containers": [container(secret_env(SECRET))]}),
    )
    .await;
    create(
        &client,
        ns,
        Deploy,
        "init-env-from",
        json!({
            "initContainers": [container(json!({"name": "init", "envFrom": [{"secretRef": {"name": SECRET}}]}))],
            "containers": [container(json!({}))],
        }),
    )
    .await;
    create(
        &client,
        ns,
        Sts,
        "volume",
        json!({
            "containers": [container(json!({}))],
            "volumes": [{"name": "creds", "secret": {"secretName": SECRET}}],
        }),
    )
    .await;
    create(
        &client,
        ns,
        Ds,
        "projected",
        json!({
            "containers": [container(json!({}))],
            "volumes": [{"name": "all", "projected": {"sources": [
                {"configMap": {"name": "settings"}},
                {"secret": {"name": SECRET}},
            ]}}],
        }),
    )
    .await;
    // Non-consumers: another Secret, ConfigMaps of the same name, a plain value.
    create(
        &client,
        ns,
        Deploy,
        "other-secret",
        json!({
            "containers": [container(secret_env("other"))],
            "volumes": [{"name": "creds", "secret": {"secretName": format!("{SECRET}-2")}}],
        }),
    )
    .await;
    create(
        &client,
        ns,
        Deploy,
        "configmap",
        json!({"containers": [container(json!({
            "envFrom": [{"configMapRef": {"name": SECRET}}],
            "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": SECRET, "key": "k"}}}],
        }))]}),
    )
    .await;
    create(
        &client,
        ns,
        Sts,
        "cm-volume",
        json!({
            "containers": [container(json!({}))],
            "volumes": [
                {"name": "cm", "configMap": {"name": SECRET}},
                {"name": "all", "projected": {"sources": [{"configMap": {"name": SECRET}}]}},
            ],
        }),
    )
    .await;
    create(
        &client,
        ns,
        Ds,
        "plain",
        json!({"containers": [container(json!({"env": [{"name": "SECRET", "value": SECRET}]}))]}),
    )
    .await;

    let (workloads, driver) = Workloads::new(client.clone(), &[Some(ns.to_owned())]);
    let (all_namespaces, all_driver) = Workloads::new(client.clone(), &[None]);
    let tasks = [tokio::spawn(driver), tokio::spawn(all_driver)];
    // `is_ready` is also false once a driver stops, so this proves both that
    // the caches sync and that their drivers are running.
    for w in [&workloads, &all_namespaces] {
        eventually("the workload caches to sync", Duration::from_secs(30), || async {
            w.is_ready().then_some(())
        })
        .await;
    }

    let expected = vec![
        (Deploy, "env-ref"),
        (Deploy, "init-env-from"),
        (Sts, "volume"),
        (Ds, "projected"),
    ];
    assert_eq!(names(&workloads.consumers(ns, SECRET)), expected);
    assert_eq!(names(&all_namespaces.consumers(ns, SECRET)), expected);
    assert!(workloads.consumers(ns, "nobody-uses-this").is_empty());
    assert!(workloads.consumers("kube-system", SECRET).is_empty());

    // Explicit targets.
    let other = workloads.get(ns, Deploy, "other-secret").expect("cached");
    assert_eq!(other.annotation("team"), Some("blue"));
    assert!(other.created.is_some());
    assert!(workloads.get(ns, Sts, "other-secret").is_none());
    assert!(workloads.get(ns, Deploy, "missing").is_none());

    // A consumer created later shows up through the watch.
    create(
        &client,
        ns,
        Ds,
        "late",
        json!({"containers": [container(secret_env(SECRET))]}),
    )
    .await;
    eventually(
        "the late consumer in the cache",
        Duration::from_secs(10),
        || async {
            names(&workloads.consumers(ns, SECRET))
                .contains(&(Ds, "late"))
                .then_some(())
        },
    )
    .await;

    // Roll one Deployment: only the annotation changes.
    let key = annotation_key(SECRET);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let before = deployments.get("env-ref").await.unwrap();
    let w = workloads.get(ns, Deploy, "env-ref").unwrap();
    assert!(needs_roll(
        w.annotation(&key),
        w.created,
        "v2",
        "v1",
        Some(k8s_openapi::jiff::Timestamp::now())
    ));
    roll(&client, ns, Deploy, "env-ref", &key, "v2")
        .await
        .expect("roll");
    let after = deployments.get("env-ref").await.unwrap();
    let (b, a) = (before.spec.as_ref().unwrap(), after.spec.as_ref().unwrap());
    assert_eq!(
        a.template.metadata.as_ref().unwrap().annotations,
        Some(BTreeMap::from([
            ("team".to_owned(), "blue".to_owned()),
            (key.clone(), "v2".to_owned()),
        ]))
    );
    assert_eq!(a.template.spec, b.template.spec);
    assert_eq!(
        a.template.metadata.as_ref().unwrap().labels,
        b.template.metadata.as_ref().unwrap().labels
    );
    assert_eq!((a.replicas, &a.selector), (b.replicas, &b.selector));
    assert_eq!(
        after.annotations().get("owner").map(String::as_str),
        Some("tests")
    );
    let generation = after.metadata.generation.unwrap();
    assert_eq!(generation, before.metadata.generation.unwrap() + 1);
    let managers: Vec<_> = after
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|m| m.manager.as_deref())
        .collect();
    assert!(managers.contains(&field_manager(&key).as_str()), "{managers:?}");

    // The same version again changes nothing, and the cache sees the value.
    roll(&client, ns, Deploy, "env-ref", &key, "v2")
        .await
        .expect("second roll");
    let again = deployments.get("env-ref").await.unwrap();
    assert_eq!(again.metadata.generation, Some(generation));
    let cached = eventually(
        "the cache sees the annotation",
        Duration::from_secs(10),
        || async {
            workloads
                .get(ns, Deploy, "env-ref")
                .filter(|w| w.annotation(&key) == Some("v2"))
        },
    )
    .await;
    assert!(!needs_roll(
        cached.annotation(&key),
        cached.created,
        "v2",
        "v1",
        Some(k8s_openapi::jiff::Timestamp::now())
    ));

    // A second Secret's annotation on the same workload leaves the first alone,
    // and a new version of the first leaves the second alone.
    let key2 = annotation_key("another-secret");
    roll(&client, ns, Deploy, "env-ref", &key2, "w1").await.unwrap();
    roll(&client, ns, Deploy, "env-ref", &key, "v3").await.unwrap();
    let annotations = template_annotations(&client, ns, Deploy, "env-ref").await;
    assert_eq!(annotations.get(&key).map(String::as_str), Some("v3"));
    assert_eq!(annotations.get(&key2).map(String::as_str), Some("w1"));
    assert_eq!(annotations.get("team").map(String::as_str), Some("blue"));

    // StatefulSets and DaemonSets, with a key for a 64+ character Secret name.
    let long_key = annotation_key(&format!("{}-credentials", "x".repeat(60)));
    for (kind, name) in [(Sts, "volume"), (Ds, "projected")] {
        roll(&client, ns, kind, name, &long_key, "v2")
            .await
            .unwrap_or_else(|e| panic!("roll {kind:?}: {e}"));
        let annotations = template_annotations(&client, ns, kind, name).await;
        assert_eq!(annotations.get(&long_key).map(String::as_str), Some("v2"));
        assert_eq!(annotations.get("team").map(String::as_str), Some("blue"));
    }

    // A deleted or never-existing workload is NotFound and is not created.
    deployments
        .delete("other-secret", &Default::default())
        .await
        .unwrap();
    eventually("other-secret deleted", Duration::from_secs(20), || async {
        deployments
            .get_opt("other-secret")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    for (kind, name) in [
        (Deploy, "other-secret"),
        (Deploy, "never-existed"),
        (Sts, "never-existed"),
        (Ds, "never-existed"),
    ] {
        match roll(&client, ns, kind, name, &key, "v2").await {
            Err(kube::Error::Api(s)) if s.is_not_found() => {}
            other => panic!("roll of missing {kind:?} {name}: {other:?}"),
        }
    }
    assert!(deployments.get_opt("other-secret").await.unwrap().is_none());
    assert!(deployments.get_opt("never-existed").await.unwrap().is_none());
    eventually(
        "the cache drops the deleted workload",
        Duration::from_secs(10),
        || async { workloads.get(ns, Deploy, "other-secret").is_none().then_some(()) },
    )
    .await;

    // Even without the existence check (a deletion racing the roll), the
    // apply body cannot create a workload: the API server rejects it.
    let pp = PatchParams::apply(&field_manager(&key)).force();
    for kind in [Deploy, Sts, Ds] {
        let patch = template_annotation_patch(kind, "raced", &key, "v2");
        let res = match kind {
            Deploy => Api::<Deployment>::namespaced(client.clone(), ns)
                .patch_metadata("raced", &pp, &Patch::Apply(&patch))
                .await
                .map(drop),
            Sts => Api::<StatefulSet>::namespaced(client.clone(), ns)
                .patch_metadata("raced", &pp, &Patch::Apply(&patch))
                .await
                .map(drop),
            Ds => Api::<DaemonSet>::namespaced(client.clone(), ns)
                .patch_metadata("raced", &pp, &Patch::Apply(&patch))
                .await
                .map(drop),
        };
        match res {
            Err(kube::Error::Api(s)) if s.code == 422 => {}
            other => panic!("partial apply of a missing {kind:?}: {other:?}"),
        }
    }
    assert!(deployments.get_opt("raced").await.unwrap().is_none());

    for t in tasks {
        t.abort();
    }
}
