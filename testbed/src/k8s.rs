//! Kubernetes on the test bed: clients, and what rotor needs installed
//! cluster-wide (the CRD, the chart's ClusterRole bound to the `rotor` user).

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, ResourceExt};
use serde_json::json;

use crate::try_eventually;

pub async fn client_from(path: &Path) -> Result<Client, String> {
    let kc = Kubeconfig::read_from(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Client::try_from(config).map_err(|e| e.to_string())
}

/// Installs `crd` (what `rotor crd` prints: pass `rotor::api::crd::crd()`)
/// and waits until it is established, then the chart's ClusterRole bound to
/// the `rotor` user as `role`; applied by field manager `manager`, idempotent.
pub async fn install_cluster_wide(
    admin: &Client,
    crd: &CustomResourceDefinition,
    manager: &str,
    role: &str,
) -> Result<(), String> {
    let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
    let pp = PatchParams::apply(manager).force();
    crds.patch(&crd.name_any(), &pp, &Patch::Apply(crd))
        .await
        .map_err(|e| format!("the generated CRD does not install on the API server: {e}"))?;
    try_eventually("CRD established", Duration::from_secs(30), || async {
        let c = crds.get(&crd.name_any()).await.ok()?;
        c.status?
            .conditions?
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
            .then_some(())
    })
    .await?;

    let rules_path = crate::repo_root().join("charts/rotor/files/clusterrole-rules.yaml");
    let rules: Vec<PolicyRule> = serde_yaml::from_str(
        &std::fs::read_to_string(&rules_path).map_err(|e| format!("{}: {e}", rules_path.display()))?,
    )
    .map_err(|e| format!("{}: {e}", rules_path.display()))?;
    let cluster_role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": role}, "rules": rules,
    });
    Api::<ClusterRole>::all(admin.clone())
        .patch(role, &pp, &Patch::Apply(&cluster_role))
        .await
        .map_err(|e| format!("cluster role: {e}"))?;
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": role},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "rotor"}],
    });
    Api::<ClusterRoleBinding>::all(admin.clone())
        .patch(role, &pp, &Patch::Apply(&binding))
        .await
        .map_err(|e| format!("cluster role binding: {e}"))?;
    Ok(())
}
