//! Restarting the workloads that consume a Secret: discovery, the decision
//! rule, and the pod-template patch.
//!
//! What this module provides:
//!
//! - [`annotation_key`]`(secret_name) -> String`: the pod-template annotation
//!   `rotor.dev/<secret-name>` (hashed for names over 63 characters).
//! - [`pod_spec_references`]`(&PodSpec, secret) -> bool`: whether a pod spec
//!   uses the Secret (env `secretKeyRef`, `envFrom.secretRef`, `secret` and
//!   `projected` volumes; containers, init and ephemeral containers).
//! - [`Workloads`]: reflector caches of Deployments, StatefulSets and
//!   DaemonSets. [`Workloads::new`]`(client, &scopes)` returns the cache and
//!   the future that keeps it updated (spawn it); then
//!   [`Workloads::wait_until_ready`], [`Workloads::is_ready`],
//!   [`Workloads::consumers`]`(ns, secret)` for `rollout.mode: Auto` and
//!   [`Workloads::get`]`(ns, kind, name)` for `Explicit` targets, both giving
//!   [`Workload`]s.
//! - [`needs_roll`]: the pure decision "restart this workload for this
//!   version?", exactly once per version and never spuriously.
//! - [`roll`]`(client, ns, kind, name, key, version)`: server-side applies
//!   only `spec.template.metadata.annotations[key] = version`.
//!
//! A typical reconcile, once the Secret holds `version`:
//!
//! ```ignore
//! let key = annotation_key(secret);
//! for w in workloads.consumers(ns, secret) {
//!     if needs_roll(w.annotation(&key), w.created, version, initial, written_at) {
//!         roll(&client, ns, w.kind, &w.name, &key, version).await?;
//!     }
//! }
//! ```

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::future::Future;

use futures::future::{self, BoxFuture};
use futures::{FutureExt, StreamExt};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{
    DaemonSet, DaemonSetSpec, Deployment, DeploymentSpec, StatefulSet, StatefulSetSpec,
};
use k8s_openapi::api::core::v1::{
    Container, EnvFromSource, EnvVar, EnvVarSource, EphemeralContainer, PodSpec, PodTemplateSpec,
    ProjectedVolumeSource, SecretEnvSource, SecretProjection, SecretVolumeSource, Volume, VolumeProjection,
};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, Patch, PatchParams};
use kube::core::Status;
use kube::runtime::reflector::store::WriterDropped;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tracing::warn;

use super::FIELD_MANAGER;
use crate::api::WorkloadKind;

/// Prefix of the pod-template annotation that records the rolled-out version.
pub const ANNOTATION_PREFIX: &str = "rotor.dev/";

/// Longest name part of an annotation key the API server accepts.
const MAX_NAME_PART: usize = 63;
/// Characters of the Secret name kept before the hash when it is too long.
const KEPT_NAME_CHARS: usize = 54;

/// Workload annotation dropped from the cache: a full copy of the object as
/// last applied by kubectl, often the largest thing in its metadata.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// The pod-template annotation recording the version a workload was rolled
/// for: `rotor.dev/<secret-name>`. Annotation name parts are limited to 63
/// characters, so longer Secret names become their first 54 characters, `-`,
/// and the first 8 hex digits of the name's SHA-256 (63 characters in all).
pub fn annotation_key(secret_name: &str) -> String {
    if secret_name.len() <= MAX_NAME_PART {
        return format!("{ANNOTATION_PREFIX}{secret_name}");
    }
    let digest = Sha256::digest(secret_name.as_bytes());
    let hash: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    // Secret names are ASCII (DNS subdomains); `chars` only keeps a stray
    // non-ASCII name from panicking on a byte slice.
    let head: String = secret_name.chars().take(KEPT_NAME_CHARS).collect();
    format!("{ANNOTATION_PREFIX}{head}-{hash}")
}

/// Whether a pod spec uses the Secret named `secret`: through
/// `env[].valueFrom.secretKeyRef` or `envFrom[].secretRef` of any container,
/// init container or ephemeral container, or a `secret` volume, or a
/// `projected` volume with a `secret` source. ConfigMaps of the same name do
/// not count.
pub fn pod_spec_references(spec: &PodSpec, secret: &str) -> bool {
    if secret.is_empty() {
        return false;
    }
    spec.containers
        .iter()
        .any(|c| env_references(c.env.as_deref(), c.env_from.as_deref(), secret))
        || spec
            .init_containers
            .iter()
            .flatten()
            .any(|c| env_references(c.env.as_deref(), c.env_from.as_deref(), secret))
        || spec
            .ephemeral_containers
            .iter()
            .flatten()
            .any(|c| env_references(c.env.as_deref(), c.env_from.as_deref(), secret))
        || spec
            .volumes
            .iter()
            .flatten()
            .any(|v| volume_references(v, secret))
}

fn env_references(env: Option<&[EnvVar]>, env_from: Option<&[EnvFromSource]>, secret: &str) -> bool {
    env.unwrap_or_default().iter().any(|e| {
        e.value_from
            .as_ref()
            .and_then(|f| f.secret_key_ref.as_ref())
            .is_some_and(|r| r.name == secret)
    }) || env_from
        .unwrap_or_default()
        .iter()
        .any(|e| e.secret_ref.as_ref().is_some_and(|r| r.name == secret))
}

fn volume_references(volume: &Volume, secret: &str) -> bool {
    volume
        .secret
        .as_ref()
        .is_some_and(|s| s.secret_name.as_deref() == Some(secret))
        || volume
            .projected
            .as_ref()
            .and_then(|p| p.sources.as_ref())
            .into_iter()
            .flatten()
            .any(|s| s.secret.as_ref().is_some_and(|s| s.name == secret))
}

/// Whether a workload must be restarted for `version` of its Secret. Exactly
/// once per version, and never when nobody can be running an older value:
///
/// - never when `version == initial_version`: the Secret has held only this
///   version since rotor created it;
/// - never when the pod template already carries `version`;
/// - never when the workload was created at or after `version_written_at`: it
///   started with the current value (pass the write time at full precision;
///   `creationTimestamp` has whole seconds, so a workload created in the same
///   second as the write compares as older and is rolled, the safe side);
/// - otherwise, including when either time is unknown, yes.
pub fn needs_roll(
    current_annotation: Option<&str>,
    workload_created: Option<Timestamp>,
    version: &str,
    initial_version: &str,
    version_written_at: Option<Timestamp>,
) -> bool {
    if version == initial_version || current_annotation == Some(version) {
        return false;
    }
    match (workload_created, version_written_at) {
        (Some(created), Some(written)) => created < written,
        _ => true,
    }
}

/// A Deployment, StatefulSet or DaemonSet, as far as rollout needs it.
#[derive(Clone, Debug, PartialEq)]
pub struct Workload {
    pub kind: WorkloadKind,
    pub name: String,
    /// `metadata.creationTimestamp`.
    pub created: Option<Timestamp>,
    /// `spec.template.metadata.annotations`.
    pub template_annotations: BTreeMap<String, String>,
}

impl Workload {
    /// The value of a pod-template annotation, e.g. [`annotation_key`] to get
    /// the version this workload was last rolled for.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.template_annotations.get(key).map(String::as_str)
    }
}

/// The three workload kinds, uniformly: their pod template, and how to shrink
/// a cached copy.
trait PodTemplated:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + Debug
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
    const KIND: WorkloadKind;
    fn template(&self) -> Option<&PodTemplateSpec>;
    /// Keeps only what rollout reads: name, namespace, uid, creation time,
    /// annotations (without kubectl's last-applied copy) and a pod template
    /// reduced to its annotations and its Secret references.
    fn slim(&mut self);

    fn to_workload(&self) -> Workload {
        Workload {
            kind: Self::KIND,
            name: self.name_any(),
            created: self.meta().creation_timestamp.as_ref().map(|t| t.0),
            template_annotations: self
                .template()
                .and_then(|t| t.metadata.as_ref())
                .and_then(|m| m.annotations.clone())
                .unwrap_or_default(),
        }
    }

    fn references(&self, secret: &str) -> bool {
        self.template()
            .and_then(|t| t.spec.as_ref())
            .is_some_and(|s| pod_spec_references(s, secret))
    }
}

macro_rules! pod_templated {
    ($kind:ident, $spec:ident) => {
        impl PodTemplated for $kind {
            const KIND: WorkloadKind = WorkloadKind::$kind;

            fn template(&self) -> Option<&PodTemplateSpec> {
                self.spec.as_ref().map(|s| &s.template)
            }

            fn slim(&mut self) {
                slim_meta(&mut self.metadata);
                self.status = None;
                self.spec = self.spec.take().map(|s| $spec {
                    template: slim_template(s.template),
                    ..$spec::default()
                });
            }
        }
    };
}

pod_templated!(Deployment, DeploymentSpec);
pod_templated!(StatefulSet, StatefulSetSpec);
pod_templated!(DaemonSet, DaemonSetSpec);

fn slim_meta(meta: &mut ObjectMeta) {
    let mut annotations = meta.annotations.take();
    if let Some(a) = annotations.as_mut() {
        a.remove(LAST_APPLIED);
    }
    *meta = ObjectMeta {
        name: meta.name.take(),
        namespace: meta.namespace.take(),
        uid: meta.uid.take(),
        creation_timestamp: meta.creation_timestamp.take(),
        annotations,
        ..ObjectMeta::default()
    };
}

fn slim_template(template: PodTemplateSpec) -> PodTemplateSpec {
    PodTemplateSpec {
        metadata: template.metadata.map(|m| ObjectMeta {
            annotations: m.annotations,
            ..ObjectMeta::default()
        }),
        spec: template.spec.map(slim_pod_spec),
    }
}

/// A pod spec reduced to what [`pod_spec_references`] reads; it answers the
/// same for every Secret name.
fn slim_pod_spec(spec: PodSpec) -> PodSpec {
    PodSpec {
        containers: spec
            .containers
            .into_iter()
            .map(|c| Container {
                name: c.name,
                env: secret_env(c.env),
                env_from: secret_env_from(c.env_from),
                ..Container::default()
            })
            .collect(),
        init_containers: spec.init_containers.map(|cs| {
            cs.into_iter()
                .map(|c| Container {
                    name: c.name,
                    env: secret_env(c.env),
                    env_from: secret_env_from(c.env_from),
                    ..Container::default()
                })
                .collect()
        }),
        ephemeral_containers: spec.ephemeral_containers.map(|cs| {
            cs.into_iter()
                .map(|c| EphemeralContainer {
                    name: c.name,
                    env: secret_env(c.env),
                    env_from: secret_env_from(c.env_from),
                    ..EphemeralContainer::default()
                })
                .collect()
        }),
        volumes: spec
            .volumes
            .map(|vs| vs.into_iter().filter_map(secret_volume).collect()),
        ..PodSpec::default()
    }
}

fn secret_env(env: Option<Vec<EnvVar>>) -> Option<Vec<EnvVar>> {
    let kept: Vec<EnvVar> = env?
        .into_iter()
        .filter_map(|e| {
            let secret_key_ref = e.value_from?.secret_key_ref?;
            Some(EnvVar {
                name: e.name,
                value: None,
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(secret_key_ref),
                    ..EnvVarSource::default()
                }),
            })
        })
        .collect();
    (!kept.is_empty()).then_some(kept)
}

fn secret_env_from(env_from: Option<Vec<EnvFromSource>>) -> Option<Vec<EnvFromSource>> {
    let kept: Vec<EnvFromSource> = env_from?
        .into_iter()
        .filter_map(|e| {
            Some(EnvFromSource {
                secret_ref: Some(SecretEnvSource {
                    name: e.secret_ref?.name,
                    ..SecretEnvSource::default()
                }),
                ..EnvFromSource::default()
            })
        })
        .collect();
    (!kept.is_empty()).then_some(kept)
}

fn secret_volume(v: Volume) -> Option<Volume> {
    if let Some(s) = v.secret {
        return Some(Volume {
            name: v.name,
            secret: Some(SecretVolumeSource {
                secret_name: s.secret_name,
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
    }
    let sources: Vec<VolumeProjection> = v
        .projected?
        .sources?
        .into_iter()
        .filter_map(|p| {
            Some(VolumeProjection {
                secret: Some(SecretProjection {
                    name: p.secret?.name,
                    ..SecretProjection::default()
                }),
                ..VolumeProjection::default()
            })
        })
        .collect();
    (!sources.is_empty()).then(|| Volume {
        name: v.name,
        projected: Some(ProjectedVolumeSource {
            sources: Some(sources),
            ..ProjectedVolumeSource::default()
        }),
        ..Volume::default()
    })
}

/// The caches of one scope (a namespace, or all).
#[derive(Clone)]
struct Scope {
    deployments: Store<Deployment>,
    stateful_sets: Store<StatefulSet>,
    daemon_sets: Store<DaemonSet>,
}

/// Reflector caches of the Deployments, StatefulSets and DaemonSets in the
/// watched scopes. Cheap to clone; every clone reads the same caches. Cached
/// objects are slimmed (see `PodTemplated::slim`) to bound memory.
#[derive(Clone)]
pub struct Workloads {
    scopes: Vec<Scope>,
}

impl Workloads {
    /// Caches for each scope (`Some(namespace)`, or `None` for all
    /// namespaces), and the future that fills and updates them: spawn it (it
    /// runs until dropped; watch errors are logged and retried with backoff).
    /// Until it has listed everything, [`Workloads::is_ready`] is false.
    pub fn new(
        client: Client,
        scopes: &[Option<String>],
    ) -> (Workloads, impl Future<Output = ()> + Send + 'static) {
        let mut drivers = Vec::new();
        let scopes = scopes
            .iter()
            .map(|scope| {
                let (deployments, d) = cache::<Deployment>(&client, scope.as_deref());
                let (stateful_sets, s) = cache::<StatefulSet>(&client, scope.as_deref());
                let (daemon_sets, ds) = cache::<DaemonSet>(&client, scope.as_deref());
                drivers.extend([d, s, ds]);
                Scope {
                    deployments,
                    stateful_sets,
                    daemon_sets,
                }
            })
            .collect();
        (Workloads { scopes }, future::join_all(drivers).map(|_| ()))
    }

    /// Resolves once every cache has listed its objects: nothing may be
    /// restarted before that. Errors only if the driver future was dropped.
    ///
    /// Polls instead of awaiting the stores: kube-runtime 5's store
    /// readiness wakes only the last task that polled it, and
    /// [`Workloads::is_ready`] polls it from reconciles (with a no-op
    /// waker), which would leave an awaiting task asleep forever.
    pub async fn wait_until_ready(&self) -> Result<(), WriterDropped> {
        loop {
            if let Some(ready) = self.check_ready() {
                return ready;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Whether every cache has listed its objects (without waiting).
    pub fn is_ready(&self) -> bool {
        matches!(self.check_ready(), Some(Ok(())))
    }

    /// `None` while some cache has not listed yet.
    fn check_ready(&self) -> Option<Result<(), WriterDropped>> {
        for scope in &self.scopes {
            for ready in [
                scope.deployments.wait_until_ready().now_or_never()?,
                scope.stateful_sets.wait_until_ready().now_or_never()?,
                scope.daemon_sets.wait_until_ready().now_or_never()?,
            ] {
                if let Err(e) = ready {
                    return Some(Err(e));
                }
            }
        }
        Some(Ok(()))
    }

    /// `rollout.mode: Auto`: every Deployment, StatefulSet and DaemonSet in
    /// `ns` whose pod template references the Secret `secret`, sorted by kind
    /// and name.
    pub fn consumers(&self, ns: &str, secret: &str) -> Vec<Workload> {
        let mut found = Vec::new();
        for scope in &self.scopes {
            found.extend(consumers_in(&scope.deployments, ns, secret));
            found.extend(consumers_in(&scope.stateful_sets, ns, secret));
            found.extend(consumers_in(&scope.daemon_sets, ns, secret));
        }
        found.sort_by(|a, b| (a.kind, &a.name).cmp(&(b.kind, &b.name)));
        found.dedup_by(|a, b| a.kind == b.kind && a.name == b.name);
        found
    }

    /// `rollout.mode: Explicit`: the named workload, if it is in the cache.
    pub fn get(&self, ns: &str, kind: WorkloadKind, name: &str) -> Option<Workload> {
        self.scopes.iter().find_map(|scope| match kind {
            WorkloadKind::Deployment => get_in(&scope.deployments, ns, name),
            WorkloadKind::StatefulSet => get_in(&scope.stateful_sets, ns, name),
            WorkloadKind::DaemonSet => get_in(&scope.daemon_sets, ns, name),
        })
    }
}

fn consumers_in<K: PodTemplated>(store: &Store<K>, ns: &str, secret: &str) -> Vec<Workload> {
    store
        .state_filter(|o| o.namespace().as_deref() == Some(ns) && o.references(secret))
        .iter()
        .map(|o| o.to_workload())
        .collect()
}

fn get_in<K: PodTemplated>(store: &Store<K>, ns: &str, name: &str) -> Option<Workload> {
    store
        .get(&ObjectRef::new(name).within(ns))
        .map(|o| o.to_workload())
}

fn cache<K: PodTemplated>(client: &Client, ns: Option<&str>) -> (Store<K>, BoxFuture<'static, ()>) {
    let api: Api<K> = match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let (reader, writer) = reflector::store();
    let scope = ns.map(str::to_owned);
    // The watch cache may serve a slightly stale list; that is harmless here
    // because a roll is an idempotent apply of the same value.
    let driver = watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(K::slim)
        .reflect(writer)
        .for_each(move |event| {
            if let Err(e) = event {
                warn!(kind = ?K::KIND, namespace = ?scope, error = %e, "workload watch failed; retrying");
            }
            future::ready(())
        })
        .boxed();
    (reader, driver)
}

/// The field manager for one annotation key. Each key needs its own manager:
/// an apply replaces everything its manager applied before, so applying key
/// B under the manager that applied key A would remove A from the template
/// (restarting the workload, and then A's roll would remove B, forever).
pub fn field_manager(key: &str) -> String {
    format!("{FIELD_MANAGER}/{key}")
}

/// The server-side apply body setting only the pod-template annotation.
pub fn template_annotation_patch(kind: WorkloadKind, name: &str, key: &str, version: &str) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": kind_name(kind),
        "metadata": {"name": name},
        "spec": {"template": {"metadata": {"annotations": {key: version}}}},
    })
}

fn kind_name(kind: WorkloadKind) -> &'static str {
    match kind {
        WorkloadKind::Deployment => "Deployment",
        WorkloadKind::StatefulSet => "StatefulSet",
        WorkloadKind::DaemonSet => "DaemonSet",
    }
}

/// Restarts a workload for `version` by server-side applying only
/// `spec.template.metadata.annotations[key] = version` (forced, with the
/// manager from [`field_manager`]). Applying the value the template already
/// has changes nothing and restarts nothing. Returns whether the pod
/// template changed (a restart), from the workload's generation. A missing
/// workload is a NotFound error; nothing is created.
pub async fn roll(
    client: &Client,
    ns: &str,
    kind: WorkloadKind,
    name: &str,
    key: &str,
    version: &str,
) -> Result<bool, kube::Error> {
    match kind {
        WorkloadKind::Deployment => apply_annotation::<Deployment>(client, ns, name, key, version).await,
        WorkloadKind::StatefulSet => apply_annotation::<StatefulSet>(client, ns, name, key, version).await,
        WorkloadKind::DaemonSet => apply_annotation::<DaemonSet>(client, ns, name, key, version).await,
    }
}

async fn apply_annotation<K: PodTemplated>(
    client: &Client,
    ns: &str,
    name: &str,
    key: &str,
    version: &str,
) -> Result<bool, kube::Error> {
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    // An apply on a missing object is a create. The metadata GET turns a
    // workload deleted since the cache saw it into a plain NotFound. A
    // resourceVersion precondition would close the remaining race too, but
    // needs the same GET and then conflicts with every status update the
    // workload's controller makes meanwhile. That race cannot create
    // anything either: the partial object has no selector and no containers,
    // which API validation requires of every apps/v1 workload, so it fails
    // with Invalid.
    let Some(before) = api.get_metadata_opt(name).await? else {
        return Err(not_found(K::KIND, name));
    };
    let patch = template_annotation_patch(K::KIND, name, key, version);
    let pp = PatchParams::apply(&field_manager(key)).force();
    let after = api.patch_metadata(name, &pp, &Patch::Apply(&patch)).await?;
    // The cache rollout decides from can lag behind a roll rotor made a
    // moment ago (the Secret write re-triggers the reconcile at once); the
    // apply is then a no-op, and the caller must not report it as a restart
    // (a second RolledOut Event, rotor_restarts_total).
    Ok(after.metadata.generation != before.metadata.generation)
}

fn not_found(kind: WorkloadKind, name: &str) -> kube::Error {
    let kind = kind_name(kind);
    kube::Error::Api(
        Status::failure(&format!("{kind} {name:?} not found"), "NotFound")
            .with_code(404)
            .boxed(),
    )
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{
        ConfigMapEnvSource, ConfigMapKeySelector, ConfigMapProjection, ConfigMapVolumeSource, EnvVarSource,
        SecretKeySelector,
    };

    use super::*;

    // ---- annotation_key

    #[test]
    fn short_names_are_used_as_is() {
        assert_eq!(annotation_key("db-credentials"), "rotor.dev/db-credentials");
        assert_eq!(annotation_key("a.b-c"), "rotor.dev/a.b-c");
    }

    #[test]
    fn name_of_exactly_63_is_kept() {
        let name = "x".repeat(63);
        assert_eq!(annotation_key(&name), format!("rotor.dev/{name}"));
    }

    #[test]
    fn name_of_64_is_hashed_to_63() {
        // sha256("a"*54 + "0123456789") starts with 0fb52399 (sha256sum).
        let name = format!("{}0123456789", "a".repeat(54));
        assert_eq!(name.len(), 64);
        let key = annotation_key(&name);
        assert_eq!(key, format!("rotor.dev/{}-0fb52399", "a".repeat(54)));
        assert_eq!(key.strip_prefix(ANNOTATION_PREFIX).unwrap().len(), 63);
    }

    #[test]
    fn long_names_are_truncated_and_hashed() {
        let name = "averyveryveryverylongsecretnamethatkeepsgoingandgoingpastthelimit.example.com";
        let key = annotation_key(name);
        assert_eq!(
            key,
            "rotor.dev/averyveryveryverylongsecretnamethatkeepsgoingandgoingp-29ec33ff"
        );
        // Names sharing the first 54 characters still differ.
        let other = format!("{}x", &name[..name.len() - 1]);
        assert_ne!(annotation_key(&other), key);
        assert_eq!(annotation_key(&"b".repeat(253)).len(), "rotor.dev/".len() + 63);
    }

    // ---- pod_spec_references

    fn env_secret(secret: &str) -> EnvVar {
        EnvVar {
            name: "PASSWORD".into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: secret.into(),
                    key: "password".into(),
                    optional: None,
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        }
    }

    fn env_configmap(name: &str) -> EnvVar {
        EnvVar {
            name: "CONFIG".into(),
            value_from: Some(EnvVarSource {
                config_map_key_ref: Some(ConfigMapKeySelector {
                    name: name.into(),
                    key: "k".into(),
                    optional: None,
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        }
    }

    fn env_from_secret(secret: &str) -> EnvFromSource {
        EnvFromSource {
            secret_ref: Some(SecretEnvSource {
                name: secret.into(),
                optional: None,
            }),
            ..EnvFromSource::default()
        }
    }

    fn env_from_configmap(name: &str) -> EnvFromSource {
        EnvFromSource {
            config_map_ref: Some(ConfigMapEnvSource {
                name: name.into(),
                optional: None,
            }),
            ..EnvFromSource::default()
        }
    }

    fn container(env: Vec<EnvVar>, env_from: Vec<EnvFromSource>) -> Container {
        Container {
            name: "app".into(),
            image: Some("busybox".into()),
            env: Some(env),
            env_from: Some(env_from),
            ..Container::default()
        }
    }

    fn secret_vol(secret: &str) -> Volume {
        Volume {
            name: "creds".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.into()),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        }
    }

    fn projected_vol(projections: Vec<VolumeProjection>) -> Volume {
        Volume {
            name: "all".into(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(projections),
                ..ProjectedVolumeSource::default()
            }),
            ..Volume::default()
        }
    }

    fn projection_secret(secret: &str) -> VolumeProjection {
        VolumeProjection {
            secret: Some(SecretProjection {
                name: secret.into(),
                ..SecretProjection::default()
            }),
            ..VolumeProjection::default()
        }
    }

    fn projection_configmap(name: &str) -> VolumeProjection {
        VolumeProjection {
            config_map: Some(ConfigMapProjection {
                name: name.into(),
                ..ConfigMapProjection::default()
            }),
            ..VolumeProjection::default()
        }
    }

    fn pod(containers: Vec<Container>, volumes: Vec<Volume>) -> PodSpec {
        PodSpec {
            containers,
            volumes: Some(volumes),
            ..PodSpec::default()
        }
    }

    /// Asserts the answer for `spec`, and that the slimmed copy the cache
    /// keeps gives the same answer.
    fn check(spec: &PodSpec, secret: &str, expected: bool) {
        assert_eq!(pod_spec_references(spec, secret), expected, "{spec:?}");
        let slim = slim_pod_spec(spec.clone());
        assert_eq!(pod_spec_references(&slim, secret), expected, "{slim:?}");
    }

    #[test]
    fn env_secret_key_ref_references() {
        let spec = pod(vec![container(vec![env_secret("db")], vec![])], vec![]);
        check(&spec, "db", true);
        check(&spec, "other", false);
    }

    #[test]
    fn env_from_secret_ref_references() {
        let spec = pod(vec![container(vec![], vec![env_from_secret("db")])], vec![]);
        check(&spec, "db", true);
        check(&spec, "dbx", false);
    }

    #[test]
    fn secret_volume_references() {
        let spec = pod(vec![container(vec![], vec![])], vec![secret_vol("db")]);
        check(&spec, "db", true);
        check(&spec, "d", false);
    }

    #[test]
    fn projected_secret_source_references() {
        let spec = pod(
            vec![container(vec![], vec![])],
            vec![projected_vol(vec![
                projection_configmap("db"),
                projection_secret("db"),
            ])],
        );
        check(&spec, "db", true);
        check(&spec, "other", false);
    }

    #[test]
    fn init_and_ephemeral_containers_reference() {
        let spec = PodSpec {
            containers: vec![container(vec![], vec![])],
            init_containers: Some(vec![container(vec![env_secret("init-db")], vec![])]),
            ephemeral_containers: Some(vec![EphemeralContainer {
                name: "debug".into(),
                env_from: Some(vec![env_from_secret("debug-db")]),
                ..EphemeralContainer::default()
            }]),
            ..PodSpec::default()
        };
        check(&spec, "init-db", true);
        check(&spec, "debug-db", true);
        check(&spec, "db", false);
    }

    #[test]
    fn configmaps_of_the_same_name_do_not_reference() {
        let spec = pod(
            vec![container(
                vec![env_configmap("db")],
                vec![env_from_configmap("db")],
            )],
            vec![
                Volume {
                    name: "cm".into(),
                    config_map: Some(ConfigMapVolumeSource {
                        name: "db".into(),
                        ..ConfigMapVolumeSource::default()
                    }),
                    ..Volume::default()
                },
                projected_vol(vec![projection_configmap("db")]),
            ],
        );
        check(&spec, "db", false);
    }

    #[test]
    fn plain_values_and_empty_specs_do_not_reference() {
        let spec = pod(
            vec![container(
                vec![EnvVar {
                    name: "DB".into(),
                    value: Some("db".into()),
                    ..EnvVar::default()
                }],
                vec![],
            )],
            vec![],
        );
        check(&spec, "db", false);
        check(&PodSpec::default(), "db", false);
        // A selector with an empty name never matches the empty secret name.
        let empty = pod(vec![container(vec![env_secret("")], vec![])], vec![]);
        check(&empty, "", false);
    }

    #[test]
    fn any_of_several_containers_and_volumes() {
        let spec = pod(
            vec![
                container(vec![env_secret("a")], vec![env_from_secret("b")]),
                container(vec![env_configmap("c"), env_secret("c")], vec![]),
            ],
            vec![secret_vol("d"), projected_vol(vec![projection_secret("e")])],
        );
        for s in ["a", "b", "c", "d", "e"] {
            check(&spec, s, true);
        }
        check(&spec, "f", false);
    }

    #[test]
    fn slimming_drops_what_rollout_does_not_read() {
        let mut d = Deployment {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("shop".into()),
                labels: Some(BTreeMap::from([("app".into(), "web".into())])),
                annotations: Some(BTreeMap::from([
                    (LAST_APPLIED.into(), "{...}".into()),
                    ("team".into(), "blue".into()),
                ])),
                resource_version: Some("42".into()),
                ..ObjectMeta::default()
            },
            spec: Some(DeploymentSpec {
                replicas: Some(3),
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(BTreeMap::from([("app".into(), "web".into())])),
                        annotations: Some(BTreeMap::from([("rotor.dev/db".into(), "v1".into())])),
                        ..ObjectMeta::default()
                    }),
                    spec: Some(pod(
                        vec![container(
                            vec![env_secret("db"), env_configmap("cm")],
                            vec![env_from_configmap("cm")],
                        )],
                        vec![secret_vol("db"), projected_vol(vec![projection_configmap("cm")])],
                    )),
                },
                ..DeploymentSpec::default()
            }),
            ..Deployment::default()
        };
        d.slim();
        assert_eq!(d.metadata.labels, None);
        assert_eq!(d.metadata.resource_version, None);
        assert_eq!(
            d.metadata.annotations,
            Some(BTreeMap::from([("team".into(), "blue".into())]))
        );
        let spec = d.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, None);
        let template = &spec.template;
        assert_eq!(template.metadata.as_ref().unwrap().labels, None);
        let pod = template.spec.as_ref().unwrap();
        let c = &pod.containers[0];
        assert_eq!(c.image, None);
        assert_eq!(c.env.as_ref().unwrap().len(), 1);
        assert_eq!(c.env_from, None);
        assert_eq!(pod.volumes.as_ref().unwrap().len(), 1);

        let w = d.to_workload();
        assert_eq!(w.kind, WorkloadKind::Deployment);
        assert_eq!(w.name, "web");
        assert_eq!(w.annotation("rotor.dev/db"), Some("v1"));
        assert_eq!(w.annotation("rotor.dev/other"), None);
        assert!(d.references("db"));
        assert!(!d.references("cm"));
    }

    // ---- needs_roll

    fn ts(s: &str) -> Option<Timestamp> {
        Some(s.parse().unwrap())
    }

    const WRITTEN: &str = "2025-03-01T10:00:00.500Z";

    #[test]
    fn old_workload_without_annotation_rolls() {
        assert!(needs_roll(
            None,
            ts("2025-01-01T00:00:00Z"),
            "v2",
            "v1",
            ts(WRITTEN)
        ));
    }

    #[test]
    fn old_workload_with_older_annotation_rolls() {
        assert!(needs_roll(
            Some("v1"),
            ts("2025-01-01T00:00:00Z"),
            "v2",
            "v1",
            ts(WRITTEN)
        ));
        assert!(needs_roll(
            Some("v2"),
            ts("2025-01-01T00:00:00Z"),
            "v3",
            "v1",
            ts(WRITTEN)
        ));
    }

    #[test]
    fn initial_version_never_rolls() {
        assert!(!needs_roll(
            None,
            ts("2025-01-01T00:00:00Z"),
            "v1",
            "v1",
            ts(WRITTEN)
        ));
        assert!(!needs_roll(Some("v0"), None, "v1", "v1", None));
    }

    #[test]
    fn annotation_already_at_version_never_rolls() {
        assert!(!needs_roll(
            Some("v2"),
            ts("2025-01-01T00:00:00Z"),
            "v2",
            "v1",
            ts(WRITTEN)
        ));
        assert!(!needs_roll(Some("v2"), None, "v2", "v1", None));
    }

    #[test]
    fn workload_created_after_or_at_the_write_never_rolls() {
        assert!(!needs_roll(
            None,
            ts("2025-03-01T10:00:01Z"),
            "v2",
            "v1",
            ts(WRITTEN)
        ));
        assert!(!needs_roll(None, ts(WRITTEN), "v2", "v1", ts(WRITTEN)));
        assert!(!needs_roll(
            Some("v1"),
            ts("2026-01-01T00:00:00Z"),
            "v2",
            "v1",
            ts(WRITTEN)
        ));
    }

    #[test]
    fn workload_created_before_the_write_rolls() {
        // Same second, but creationTimestamp has whole seconds: the safe side.
        assert!(needs_roll(
            None,
            ts("2025-03-01T10:00:00Z"),
            "v2",
            "v1",
            ts(WRITTEN)
        ));
        assert!(needs_roll(
            None,
            ts("2025-03-01T09:59:59Z"),
            "v2",
            "v1",
            ts(WRITTEN)
        ));
    }

    #[test]
    fn unknown_times_roll() {
        assert!(needs_roll(None, None, "v2", "v1", ts(WRITTEN)));
        assert!(needs_roll(None, ts("2025-03-01T10:00:01Z"), "v2", "v1", None));
        assert!(needs_roll(Some("v1"), None, "v2", "v1", None));
    }

    // ---- patch shape

    #[test]
    fn patch_sets_only_the_template_annotation() {
        let p = template_annotation_patch(WorkloadKind::StatefulSet, "db", "rotor.dev/s", "v9");
        assert_eq!(
            p,
            json!({
                "apiVersion": "apps/v1", "kind": "StatefulSet",
                "metadata": {"name": "db"},
                "spec": {"template": {"metadata": {"annotations": {"rotor.dev/s": "v9"}}}},
            })
        );
        assert_eq!(field_manager("rotor.dev/s"), "rotor/rotor.dev/s");
        assert!(field_manager(&annotation_key(&"z".repeat(253))).len() <= 128);
    }

    #[test]
    fn not_found_is_recognisable() {
        match not_found(WorkloadKind::DaemonSet, "gone") {
            kube::Error::Api(s) => {
                assert!(s.is_not_found());
                assert!(s.message.contains("DaemonSet"), "{}", s.message);
            }
            other => panic!("{other:?}"),
        }
    }
}
