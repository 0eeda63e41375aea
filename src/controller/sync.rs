//! The mirror stage: AWSCURRENT into the target Secret.

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::events::EventType;
use tracing::info;

use super::Run;
use crate::api::conditions;
use crate::aws::secrets::Description;
use crate::k8s::mirror;
use crate::{Error, Result};

/// Mirrors AWSCURRENT into the target Secret, reading the value only when the
/// Secret does not already hold this version rendered from this generation.
pub async fn sync_secret(run: &mut Run<'_>, desc: &Description) -> Result<()> {
    let (rs, ctx) = (run.rs, run.ctx);
    let ns = rs.namespace().unwrap_or_default();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let name = rs.target_name();
    let existing = mirror::get(&api, name).await?;
    let generation = rs.metadata.generation.unwrap_or_default().to_string();

    if let Some(existing) = &existing {
        if !mirror::is_controlled_by(existing, rs) {
            return Err(Error::Refused {
                reason: "SecretConflict",
                message: format!(
                    "Secret {ns}/{name} exists and is not owned by this RotatedSecret; rotor will not overwrite it. \
                     Delete it or set spec.target.name to another name"
                ),
            });
        }
        if let Some(current) = desc.current_version.as_deref()
            && mirror::written_for(existing) == (Some(current), Some(generation.as_str()))
        {
            run.status.synced_version_id = Some(current.to_owned());
            run.set(
                conditions::SYNCED,
                true,
                "Synced",
                format!("Secret {name} holds version {current}"),
            );
            return Ok(());
        }
    }
    if desc.current_version.is_none() {
        return Err(Error::Refused {
            reason: "NoCurrentVersion",
            message: format!(
                "AWS secret {:?} has no AWSCURRENT version yet: give it a value (spec.secretsManager.initialValue, \
                 PutSecretValue, or a rotation)",
                rs.spec.secrets_manager.name
            ),
        });
    }

    let rc = ctx.aws.region(rs.spec.secrets_manager.region.as_deref());
    let value = ctx.aws.current_value(&rc, &desc.arn).await?;
    let data = mirror::render(&rs.spec.target, &value)?;
    mirror::apply(&api, rs, &value.version_id, &data).await?;
    ctx.metrics.secret_written();
    info!(secret = name, version_id = %value.version_id, "Secret written");
    run.event(
        EventType::Normal,
        "Synced",
        "Sync",
        format!("Secret {name} now holds AWS version {}", value.version_id),
    )
    .await;

    // AWSCURRENT may have moved between describe and read: the read is newer.
    run.status.current_version_id = Some(value.version_id.clone());
    run.status.synced_version_id = Some(value.version_id.clone());
    run.status.last_sync_time = Some(run.now.clone());
    run.set(
        conditions::SYNCED,
        true,
        "Synced",
        format!("Secret {name} holds version {}", value.version_id),
    );
    Ok(())
}
