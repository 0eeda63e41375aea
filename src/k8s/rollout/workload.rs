//! The three workload kinds seen uniformly ([`PodTemplated`]), what rollout
//! keeps of each ([`Workload`]), and the slimming that bounds the caches.

use std::collections::BTreeMap;
use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{
    DaemonSet, DaemonSetSpec, Deployment, DeploymentSpec, StatefulSet, StatefulSetSpec,
};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::jiff::Timestamp;
use kube::api::ObjectMeta;
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;

use super::podspec::{pod_spec_references, slim_pod_spec};
use crate::api::WorkloadKind;

/// Workload annotation dropped from the cache: a full copy of the object as
/// last applied by kubectl, often the largest thing in its metadata.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

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
pub(super) trait PodTemplated:
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

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::DeploymentSpec;

    use super::*;
    use crate::k8s::rollout::fixtures::*;

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
}
