//! Pod-spec builders shared by the unit tests of `podspec` and `workload`.

use k8s_openapi::api::core::v1::{
    ConfigMapEnvSource, ConfigMapKeySelector, ConfigMapProjection, Container, EnvFromSource, EnvVar,
    EnvVarSource, PodSpec, ProjectedVolumeSource, SecretEnvSource, SecretKeySelector, SecretProjection,
    SecretVolumeSource, Volume, VolumeProjection,
};

pub(super) fn env_secret(secret: &str) -> EnvVar {
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

pub(super) fn env_configmap(name: &str) -> EnvVar {
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

pub(super) fn env_from_secret(secret: &str) -> EnvFromSource {
    EnvFromSource {
        secret_ref: Some(SecretEnvSource {
            name: secret.into(),
            optional: None,
        }),
        ..EnvFromSource::default()
    }
}

pub(super) fn env_from_configmap(name: &str) -> EnvFromSource {
    EnvFromSource {
        config_map_ref: Some(ConfigMapEnvSource {
            name: name.into(),
            optional: None,
        }),
        ..EnvFromSource::default()
    }
}

pub(super) fn container(env: Vec<EnvVar>, env_from: Vec<EnvFromSource>) -> Container {
    Container {
        name: "app".into(),
        image: Some("busybox".into()),
        env: Some(env),
        env_from: Some(env_from),
        ..Container::default()
    }
}

pub(super) fn secret_vol(secret: &str) -> Volume {
    Volume {
        name: "creds".into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.into()),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

pub(super) fn projected_vol(projections: Vec<VolumeProjection>) -> Volume {
    Volume {
        name: "all".into(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(projections),
            ..ProjectedVolumeSource::default()
        }),
        ..Volume::default()
    }
}

pub(super) fn projection_secret(secret: &str) -> VolumeProjection {
    VolumeProjection {
        secret: Some(SecretProjection {
            name: secret.into(),
            ..SecretProjection::default()
        }),
        ..VolumeProjection::default()
    }
}

pub(super) fn projection_configmap(name: &str) -> VolumeProjection {
    VolumeProjection {
        config_map: Some(ConfigMapProjection {
            name: name.into(),
            ..ConfigMapProjection::default()
        }),
        ..VolumeProjection::default()
    }
}

pub(super) fn pod(containers: Vec<Container>, volumes: Vec<Volume>) -> PodSpec {
    PodSpec {
        containers,
        volumes: Some(volumes),
        ..PodSpec::default()
    }
}
