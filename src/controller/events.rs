//! Kubernetes Events about RotatedSecrets and the workloads rotor restarts.
//! Publishing never fails a reconcile: a failure is logged.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Resource;
use kube::runtime::events::{Event, EventType, Recorder};
use tracing::warn;

use super::Context;
use crate::api::RotatedSecret;
use crate::api::conditions;

/// events.k8s.io refuses notes over 1 KiB; a cut note still says what happened.
const MAX_EVENT_NOTE: usize = 1000;

/// The reasons of rotor's Normal Events (Warnings carry the error's reason,
/// the same as the condition's). Part of the user-facing contract (api.md).
pub mod reason {
    pub const ADOPTED: &str = "Adopted";
    pub const CLEANUP_ABANDONED: &str = "CleanupAbandoned";
    pub const CLEANUP_FAILED: &str = "CleanupFailed";
    pub const CREATED: &str = "Created";
    pub const DELETED: &str = "Deleted";
    pub const KMS_KEY_CREATED: &str = "KmsKeyCreated";
    pub const KMS_KEY_DELETED: &str = "KmsKeyDeleted";
    pub const RECLAIMED: &str = "Reclaimed";
    pub const RELEASED: &str = "Released";
    pub const RESTORED: &str = "Restored";
    pub const ROLLED_OUT: &str = "RolledOut";
    pub const ROTATION_CANCELLED: &str = "RotationCancelled";
    pub const ROTATION_CONFIGURED: &str = "RotationConfigured";
    pub const ROTATION_REQUESTED: &str = "RotationRequested";
    pub const ROTATION_STUCK: &str = "RotationStuck";
    pub const SYNCED: &str = "Synced";
}

/// Publishes an Event about a RotatedSecret.
pub async fn publish(
    ctx: &Context,
    rs: &RotatedSecret,
    type_: EventType,
    reason: &str,
    action: &str,
    mut note: String,
) {
    conditions::truncate(&mut note, MAX_EVENT_NOTE);
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note),
        action: action.to_owned(),
        secondary: None,
    };
    // kube's Recorder folds events with the same reason into one series and
    // keeps the first note. Repeated failures should fold; a Normal event
    // (a new version synced, a workload restarted) names a distinct change,
    // so it goes through a fresh recorder and keeps its own note.
    let fresh;
    let recorder = match type_ {
        EventType::Warning => &ctx.recorder,
        EventType::Normal => {
            fresh = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
            &fresh
        }
    };
    if let Err(e) = recorder.publish(&event, &rs.object_ref(&())).await {
        warn!(error = %e, "publishing event failed");
    }
}

/// Publishes a Normal Event about another object (a restarted workload).
pub async fn publish_about(
    ctx: &Context,
    regarding: ObjectReference,
    related: Option<ObjectReference>,
    reason: &str,
    action: &str,
    note: String,
) {
    let event = Event {
        type_: EventType::Normal,
        reason: reason.to_owned(),
        note: Some(note),
        action: action.to_owned(),
        secondary: related,
    };
    let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
    if let Err(e) = recorder.publish(&event, &regarding).await {
        warn!(error = %e, "publishing event failed");
    }
}
