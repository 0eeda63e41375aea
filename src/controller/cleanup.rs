//! Deleting a RotatedSecret: honour `deletionPolicy` in AWS, then let the
//! object go. "Already gone" counts as done, and an AWS outage never holds
//! the object forever: after `--cleanup-timeout` rotor warns and lets go.

use aws_sdk_kms::types::KeyState;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use tracing::{info, warn};

use super::events::{publish, reason};
use super::status::set_finalizers;
use super::{Context, FINALIZER};
use crate::api::{DeletionPolicy, OWNER_TAG, RELEASED_TAG, RotatedSecret};
use crate::aws::RegionClients;
use crate::{Error, Result};

const DEFAULT_RECOVERY_DAYS: i64 = 30;
const MIN_RECOVERY_DAYS: i64 = 7;
const KEY_PENDING_DAYS: i32 = 30;

pub async fn cleanup(rs: &RotatedSecret, ctx: &Context) -> Result<Action> {
    if !rs.finalizers().iter().any(|f| f == FINALIZER) {
        ctx.memory.forget(rs, std::time::Instant::now());
        return Ok(Action::await_change());
    }
    match release(rs, ctx).await {
        Ok(()) => {}
        Err(err) => {
            let since = rs
                .metadata
                .deletion_timestamp
                .as_ref()
                .map(|t| Timestamp::now().duration_since(t.0).as_secs())
                .unwrap_or_default();
            if since < ctx.cleanup_timeout.as_secs() as i64 {
                publish(
                    ctx,
                    rs,
                    EventType::Warning,
                    reason::CLEANUP_FAILED,
                    "Cleanup",
                    format!("AWS cleanup failed, will retry: {err}"),
                )
                .await;
                return Err(err);
            }
            warn!(error = %err, "giving up AWS cleanup");
            publish(
                ctx,
                rs,
                EventType::Warning,
                reason::CLEANUP_ABANDONED,
                "Cleanup",
                format!(
                    "AWS cleanup still failing after {}s; releasing the object. Clean up {} by hand: {err}",
                    ctx.cleanup_timeout.as_secs(),
                    rs.status
                        .as_ref()
                        .and_then(|s| s.arn.as_deref())
                        .unwrap_or("the AWS secret")
                ),
            )
            .await;
        }
    }
    let finalizers = rs
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    set_finalizers(ctx, rs, finalizers).await?;
    ctx.memory.forget(rs, std::time::Instant::now());
    Ok(Action::await_change())
}

async fn release(rs: &RotatedSecret, ctx: &Context) -> Result<()> {
    let rc = ctx.aws.region(rs.spec.secrets_manager.region.as_deref());
    let me = ctx.owner_tag_value(rs);
    let delete = rs.spec.secrets_manager.deletion_policy == DeletionPolicy::Delete;
    let Some(arn) = rs.status.as_ref().and_then(|s| s.arn.clone()) else {
        // No secret was recorded, but this object may have created a key.
        if delete {
            release_key(rs, ctx, &rc, None, &me).await?;
        }
        return Ok(());
    };
    let Some(desc) = ctx.aws.describe_secret(&rc, &arn).await? else {
        // Already gone, possibly deleted without recovery by an earlier
        // attempt that then failed on the key: the key still needs releasing,
        // or it would be left behind for good.
        if delete {
            release_key(rs, ctx, &rc, Some(&arn), &me).await?;
        }
        return Ok(());
    };
    if desc.owner() != Some(me.as_str()) {
        info!(%arn, "AWS secret no longer owned by this object; leaving it");
        return Ok(());
    }
    match rs.spec.secrets_manager.deletion_policy {
        DeletionPolicy::Retain => {
            // The released-from tag first: a crash in between leaves a secret
            // still owned, never one neither owned nor re-claimable.
            ctx.aws.tag_secret(&rc, &arn, RELEASED_TAG, &me).await?;
            ctx.aws.untag_secret(&rc, &arn, &[OWNER_TAG.to_owned()]).await?;
            publish(
                ctx,
                rs,
                EventType::Normal,
                reason::RELEASED,
                "Cleanup",
                format!(
                    "Left AWS secret {arn} in place (deletionPolicy Retain) and released it ({OWNER_TAG} removed, \
                     {RELEASED_TAG} set: re-creating this RotatedSecret re-claims it)"
                ),
            )
            .await;
        }
        DeletionPolicy::Delete => {
            if !desc.deleted {
                let regions: Vec<String> = desc.replicas.iter().flat_map(|r| r.keys()).cloned().collect();
                if !regions.is_empty() {
                    ctx.aws.remove_replicas(&rc, &arn, &regions).await?;
                }
                let asked = rs
                    .spec
                    .secrets_manager
                    .recovery_window_in_days
                    .unwrap_or(DEFAULT_RECOVERY_DAYS);
                // A secret rotor did not create is never deleted beyond recovery.
                let adopted = rs.status.as_ref().is_some_and(|s| s.adopted);
                let days = if adopted && asked == 0 {
                    MIN_RECOVERY_DAYS
                } else {
                    asked
                };
                ctx.aws.delete_secret(&rc, &arn, days).await?;
                publish(
                    ctx,
                    rs,
                    EventType::Normal,
                    reason::DELETED,
                    "Cleanup",
                    if days == 0 {
                        format!("Deleted AWS secret {arn} without recovery")
                    } else {
                        format!("Scheduled AWS secret {arn} for deletion in {days} days")
                    },
                )
                .await;
            }
            release_key(rs, ctx, &rc, Some(&desc.arn), &me).await?;
        }
    }
    Ok(())
}

/// Schedules the key for deletion only when the operator opted in
/// (`--delete-created-kms-keys`), this object created it, the alias still
/// points at it, and no other secret in the region uses it: rotor's own, a
/// released or adopted one without an owner tag, or one pending deletion
/// (which can still be restored). Without the opt-in, keys are left alone:
/// rotor cannot see every ciphertext a key protects.
async fn release_key(
    rs: &RotatedSecret,
    ctx: &Context,
    rc: &RegionClients,
    secret_arn: Option<&str>,
    me: &str,
) -> Result<(), Error> {
    let Some(spec) = rs.spec.secrets_manager.kms_key.as_ref().filter(|k| k.create) else {
        return Ok(());
    };
    if !ctx.delete_created_kms_keys {
        return Ok(());
    }
    let Some(key_arn) = rs.status.as_ref().and_then(|s| s.kms_key_arn.as_deref()) else {
        return Ok(());
    };
    let Some(key) = ctx.aws.describe_key(rc, key_arn).await? else {
        return Ok(());
    };
    if key.state == Some(KeyState::PendingDeletion)
        || ctx.aws.key_owner(rc, &key.key_id).await?.as_deref() != Some(me)
    {
        return Ok(());
    }
    let alias = spec.alias.as_deref();
    let in_use = ctx.aws.list_all(rc).await?.into_iter().any(|s| {
        Some(s.arn.as_str()) != secret_arn && s.kms_key_id.as_deref().is_some_and(|k| key.named_by(k, alias))
    });
    if in_use {
        info!(key = %key.arn, "KMS key still used by another secret; keeping it");
        return Ok(());
    }
    if let Some(alias) = alias {
        // An alias someone re-pointed at another key is theirs now.
        if ctx
            .aws
            .describe_key(rc, alias)
            .await?
            .is_some_and(|k| k.key_id == key.key_id)
        {
            ctx.aws.delete_alias(rc, alias).await?;
        }
    }
    ctx.aws
        .schedule_key_deletion(rc, &key.key_id, KEY_PENDING_DAYS)
        .await?;
    publish(
        ctx,
        rs,
        EventType::Normal,
        reason::KMS_KEY_DELETED,
        "Cleanup",
        format!(
            "Scheduled KMS key {} for deletion in {KEY_PENDING_DAYS} days",
            key.arn
        ),
    )
    .await;
    Ok(())
}
