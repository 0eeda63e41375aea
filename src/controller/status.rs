//! The run record of one reconcile (the object, the status being built) and
//! how status and finalizers are written: only what changed, guarded where
//! a lost update would matter.

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::EventType;
use serde_json::json;

use super::{Context, FINALIZER, events};
use crate::api::conditions::{self, Condition};
use crate::api::{RotatedSecret, RotatedSecretStatus};
use crate::{Error, Result};

/// What a reconcile is working on: the object, the status being built, and
/// the time stamp used for its conditions.
pub struct Run<'a> {
    pub rs: &'a RotatedSecret,
    pub ctx: &'a Context,
    pub status: RotatedSecretStatus,
    pub now: String,
    /// The status as last written (or as read), to send only changes.
    saved: RotatedSecretStatus,
    /// The finalizer was added during this run (the cached object lags).
    finalizer: bool,
}

impl<'a> Run<'a> {
    /// Starts from the status rotor last wrote: the cache can lag behind it
    /// (a reconcile queued right behind another).
    pub fn new(rs: &'a RotatedSecret, ctx: &'a Context) -> Self {
        let status = ctx
            .memory
            .last_status(rs)
            .unwrap_or_else(|| rs.status.clone().unwrap_or_default());
        Run {
            rs,
            ctx,
            saved: status.clone(),
            status,
            now: stamp(Timestamp::now()),
            finalizer: false,
        }
    }

    pub fn set(&mut self, type_: &str, ok: bool, reason: &str, message: impl Into<conditions::Text>) {
        conditions::upsert(
            &mut self.status.conditions,
            Condition::new(type_, ok, reason, message),
            self.rs.metadata.generation,
            &self.now,
        );
    }

    pub async fn event(&self, type_: EventType, reason: &str, action: &str, note: String) {
        events::publish(self.ctx, self.rs, type_, reason, action, note).await;
    }

    /// Whether the status differs from what was last written.
    pub fn changed(&self) -> bool {
        self.status != self.saved
    }

    /// Writes what changed in the status since the last save: used at the
    /// end, and mid-reconcile right after an AWS write whose result must
    /// survive a crash before the reconcile ends.
    pub async fn save(&mut self) -> Result<()> {
        if self.changed() {
            patch_status(self.ctx, self.rs, &self.saved, &self.status)
                .await
                .map_err(Error::Kube)?;
            self.saved = self.status.clone();
            self.ctx.memory.remember_status(self.rs, &self.status);
        }
        Ok(())
    }

    /// Adds the cleanup finalizer before the first AWS write that leaves
    /// something to clean up.
    pub async fn ensure_finalizer(&mut self) -> Result<()> {
        if self.finalizer || self.rs.finalizers().iter().any(|f| f == FINALIZER) {
            return Ok(());
        }
        let mut finalizers = self.rs.finalizers().to_vec();
        finalizers.push(FINALIZER.to_owned());
        set_finalizers(self.ctx, self.rs, finalizers).await?;
        self.finalizer = true;
        Ok(())
    }

    /// `status.lastCheckTime`: when AWS was last seen for this secret.
    /// Written with other status changes, or when it is a drift interval
    /// old, so idle objects do not each cost an API write per poll (the
    /// exact age is the `rotor_version_check_age_seconds` metric).
    pub fn record_check_time(&mut self) {
        let Some(seen) = self
            .status
            .arn
            .as_deref()
            .and_then(|arn| self.ctx.memory.observed(arn))
        else {
            return;
        };
        let recorded: Option<Timestamp> = self
            .status
            .last_check_time
            .as_deref()
            .and_then(|t| t.parse().ok());
        let drift = self.ctx.memory.policy.drift_interval.as_secs() as i64;
        let old = recorded.is_none_or(|t| seen.wall.as_second() - t.as_second() >= drift);
        if old || self.changed() {
            self.status.last_check_time = Some(stamp(seen.wall));
        }
    }
}

/// A status time, to the second as Kubernetes writes its own (`metav1.Time`):
/// the nanoseconds told nobody anything, and made each of the eight or so
/// times an object's status holds a size class bigger in every cache.
pub fn stamp(t: Timestamp) -> String {
    Timestamp::from_second(t.as_second()).unwrap_or(t).to_string()
}

/// Replaces the finalizer list, guarded by resourceVersion so a concurrent
/// change by someone else fails (and is retried) instead of being lost.
pub async fn set_finalizers(ctx: &Context, rs: &RotatedSecret, finalizers: Vec<String>) -> Result<()> {
    let api: Api<RotatedSecret> = Api::namespaced(ctx.client.clone(), &rs.namespace().unwrap_or_default());
    let patch = json!({"metadata": {"resourceVersion": rs.resource_version(), "finalizers": finalizers}});
    api.patch(&rs.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// Sends only the status fields that changed, as a JSON merge patch: the
/// object a reconcile starts from can lag behind rotor's own last write, and
/// a full replace would then roll back fields this reconcile did not touch.
pub async fn patch_status(
    ctx: &Context,
    rs: &RotatedSecret,
    old: &RotatedSecretStatus,
    new: &RotatedSecretStatus,
) -> kube::Result<()> {
    let api: Api<RotatedSecret> = Api::namespaced(ctx.client.clone(), &rs.namespace().unwrap_or_default());
    let patch = json!({ "status": merge_diff(old, new) });
    api.patch_status(&rs.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(drop)
}

/// Top-level fields of `new` that differ from `old`; removed ones as null.
fn merge_diff(old: &RotatedSecretStatus, new: &RotatedSecretStatus) -> serde_json::Value {
    let to_map = |s: &RotatedSecretStatus| match serde_json::to_value(s) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    };
    let (old, new) = (to_map(old), to_map(new));
    let mut diff = serde_json::Map::new();
    for (k, v) in &new {
        if old.get(k) != Some(v) {
            diff.insert(k.clone(), v.clone());
        }
    }
    for k in old.keys() {
        if !new.contains_key(k) {
            diff.insert(k.clone(), serde_json::Value::Null);
        }
    }
    serde_json::Value::Object(diff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_diff_sends_only_changes() {
        let old = RotatedSecretStatus {
            arn: Some("a".into()),
            last_sync_time: Some("t".into()),
            kms_key_arn: Some("k".into()),
            ..Default::default()
        };
        let new = RotatedSecretStatus {
            arn: Some("a".into()),
            last_sync_time: Some("t2".into()),
            ..Default::default()
        };
        assert_eq!(
            merge_diff(&old, &new),
            json!({"lastSyncTime": "t2", "kmsKeyArn": null})
        );
        assert_eq!(merge_diff(&new, &new), json!({}));
    }
}
