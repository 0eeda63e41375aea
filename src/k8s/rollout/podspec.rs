//! Pure inspection of pod specs: whether one uses a Secret, and the slimmed
//! copy the workload caches keep (which must answer the same).

use k8s_openapi::api::core::v1::{
    Container, EnvFromSource, EnvVar, EnvVarSource, EphemeralContainer, PodSpec, ProjectedVolumeSource,
    SecretEnvSource, SecretProjection, SecretVolumeSource, Volume, VolumeProjection,
};

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

/// A pod spec reduced to what [`pod_spec_references`] reads; it answers the
/// same for every Secret name.
pub(super) fn slim_pod_spec(spec: PodSpec) -> PodSpec {
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

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{ConfigMapVolumeSource, EphemeralContainer};

    use super::*;
    use crate::k8s::rollout::fixtures::*;

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
}
