//! The mirror and rollout stages: AWSCURRENT into the target Secret, then a
//! restart of the workloads that still run an older version.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use std::time::Instant;

use tracing::info;

use super::events::{publish_about, reason};
use super::status::Run;
use super::values;
use crate::api::{RolledOut, RolloutMode, RotatedSecret, WorkloadKind, conditions};
use crate::aws::secrets::{SecretMeta, SecretValue};
use crate::k8s::mirror::{self, Written};
use crate::k8s::rollout;
use crate::{Error, Result};

/// The workloads to restart: the listed ones (missing ones are problems),
/// or every consumer of the Secret in the namespace.
fn targets(run: &Run<'_>) -> (Vec<rollout::Workload>, Vec<String>) {
    let (rs, workloads) = (run.rs, &run.ctx.workloads);
    let ns = rs.namespace().unwrap_or_default();
    let mut problems = Vec::new();
    let targets = match rs.spec.rollout.mode {
        RolloutMode::Explicit => rs
            .spec
            .rollout
            .targets
            .iter()
            .filter_map(|t| {
                let found = workloads.get(&ns, t.kind, &t.name);
                if found.is_none() {
                    problems.push(format!("{} {} not found", kind_str(t.kind), t.name));
                }
                found
            })
            .collect(),
        _ => workloads.consumers(&ns, rs.target_name()),
    };
    (targets, problems)
}

/// Records a restart in `status.rolledOut`, and as an Event on the workload,
/// where `kubectl describe` shows why it restarted, related to the
/// RotatedSecret that caused it.
async fn record_restart(run: &mut Run<'_>, w: &rollout::Workload, version: &str) {
    let (rs, ctx) = (run.rs, run.ctx);
    let kind = kind_str(w.kind);
    ctx.metrics.restarted(kind);
    info!(kind, workload = %w.name, version, "restarted workload");
    let entry = RolledOut {
        kind: w.kind,
        name: w.name.clone(),
        version_id: version.to_owned(),
        time: run.now.clone(),
    };
    let list = &mut run.status.rolled_out;
    list.retain(|r| !(r.kind == entry.kind && r.name == entry.name));
    list.insert(0, entry);
    list.truncate(MAX_ROLLED_OUT);
    let workload = ObjectReference {
        api_version: Some("apps/v1".to_owned()),
        kind: Some(kind.to_owned()),
        name: Some(w.name.clone()),
        namespace: rs.namespace(),
        ..ObjectReference::default()
    };
    let note = format!(
        "Restarted for AWS version {version} of Secret {} (RotatedSecret {})",
        rs.target_name(),
        rs.name_any()
    );
    publish_about(
        ctx,
        workload,
        Some(rs.object_ref(&())),
        reason::ROLLED_OUT,
        "Restart",
        note,
    )
    .await;
}

/// Most workloads listed in `status.rolledOut`.
const MAX_ROLLED_OUT: usize = 50;

/// Mirrors AWSCURRENT into the target Secret, reading the value only when the
/// Secret does not already hold this version rendered from this generation.
/// Returns the Secret's history as it now stands.
pub async fn sync_secret(run: &mut Run<'_>, desc: &SecretMeta) -> Result<Written> {
    let (rs, ctx) = (run.rs, run.ctx);
    let ns = rs.namespace().unwrap_or_default();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let name = rs.target_name();
    let generation = rs.metadata.generation.unwrap_or_default().to_string();
    if ctx
        .memory
        .note_new_version(rs, desc.current_version.as_deref(), Instant::now())
    {
        ctx.metrics.rotation_observed("describe");
    }

    let previous = match mirror::get(&api, name).await? {
        Some(existing) if !mirror::is_controlled_by(&existing, rs) => {
            return Err(Error::Refused {
                reason: "SecretConflict",
                message: format!(
                    "Secret {ns}/{name} exists and is not owned by this RotatedSecret; rotor will not overwrite it. \
                     Delete it or set spec.target.name to another name"
                ),
            });
        }
        Some(existing) => Written::of(&existing),
        None => Written::default(),
    };
    if let Some(current) = desc.current_version.as_deref()
        && previous.version.as_deref() == Some(current)
        && previous.generation.as_deref() == Some(generation.as_str())
    {
        mark_synced(run, current);
        return Ok(previous);
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
    let batched = match desc.current_version.as_deref() {
        Some(version) => {
            ctx.values
                .take(&desc.arn, version, Instant::now() + values::WAIT)
                .await
        }
        None => None,
    };
    let value = match batched {
        Some(value) => value,
        None => ctx.aws.current_value(&rc, &desc.arn).await?,
    };
    let data = render_bounded(&rs.spec.target, &value).await?;
    keep_keys(rs, &previous, &generation, &data, &value.version_id)?;
    let written = previous.next(&value.version_id, &generation, Timestamp::now(), &data);
    mirror::apply(&api, rs, &written, &data).await?;
    ctx.metrics.secret_written();
    if previous.version.as_deref() != Some(value.version_id.as_str())
        && let Some(at) = ctx.memory.detected_at(rs, &value.version_id)
    {
        ctx.metrics.rotation_reached_secret(at.elapsed());
    }
    info!(secret = name, version_id = %value.version_id, "Secret written");
    run.event(
        EventType::Normal,
        reason::SYNCED,
        "Sync",
        format!("Secret {name} now holds AWS version {}", value.version_id),
    )
    .await;

    // AWSCURRENT may have moved between describe and read: the read is newer.
    run.status.current_version_id = Some(value.version_id.clone());
    run.status.last_sync_time = Some(run.now.clone());
    mark_synced(run, &value.version_id);
    Ok(written)
}

/// Refuses a version that drops data keys the Secret holds, unless the
/// spec allows it: rotor keeps the last good Secret.
fn keep_keys(
    rs: &RotatedSecret,
    previous: &Written,
    generation: &str,
    data: &mirror::SecretData,
    version: &str,
) -> Result<()> {
    let dropped = previous.dropped_keys(generation, data);
    if !dropped.is_empty() && !rs.spec.target.allow_key_removal {
        let mut keys = dropped.join(", ");
        conditions::truncate(&mut keys, 200);
        return Err(Error::Refused {
            reason: "KeysRemoved",
            message: format!(
                "AWS version {} lacks data keys the Secret holds ({keys}); rotor keeps the last good Secret. Fix \
                 the AWS secret's value, or set spec.target.allowKeyRemoval: true to accept the new shape",
                version
            ),
        });
    }
    Ok(())
}

/// Renders off the async runtime under a time limit: a tenant's template
/// must not hold a runtime thread that other objects' reconciles need. Fuel
/// bounds the work, so a render that is still running at the limit ends soon
/// after on its own.
async fn render_bounded(target: &crate::api::TargetSpec, value: &SecretValue) -> Result<mirror::SecretData> {
    let (target, value) = (target.clone(), value.clone());
    let task = tokio::task::spawn_blocking(move || mirror::render(&target, &value));
    match tokio::time::timeout(crate::template::TIME_LIMIT, task).await {
        Ok(Ok(rendered)) => rendered,
        Ok(Err(_)) => Err(Error::Render {
            message: "target.template: rendering failed unexpectedly".to_owned(),
        }),
        Err(_) => Err(Error::Render {
            message: format!(
                "target.template: rendering took longer than {:?}",
                crate::template::TIME_LIMIT
            ),
        }),
    }
}

fn mark_synced(run: &mut Run<'_>, version: &str) {
    run.status.synced_version_id = Some(version.to_owned());
    run.ctx.memory.unwatch_if_moved(run.rs, Some(version));
    let msg = format!("Secret {} holds version {version}", run.rs.target_name());
    run.set(conditions::SYNCED, true, "Synced", msg);
}

fn kind_str(kind: WorkloadKind) -> &'static str {
    match kind {
        WorkloadKind::Deployment => "Deployment",
        WorkloadKind::StatefulSet => "StatefulSet",
        WorkloadKind::DaemonSet => "DaemonSet",
    }
}

/// Restarts every consumer that still runs a version older than the one the
/// Secret holds, by setting the pod-template annotation `rotor.dev/<secret>`
/// to that VersionId. The decision reads only state that survives a crash
/// (the workload's annotation, the Secret's history), so re-running it, a
/// restart or another replica never restarts anything twice.
pub async fn rollout(run: &mut Run<'_>, written: &Written) -> Result<()> {
    let (rs, ctx) = (run.rs, run.ctx);
    let spec = &rs.spec.rollout;
    if spec.mode == RolloutMode::Disabled {
        run.set(
            conditions::ROLLED_OUT,
            true,
            "Disabled",
            conditions::message::ROLLOUT_DISABLED,
        );
        ctx.memory.clear_detected(rs);
        return Ok(());
    }
    let (Some(version), Some(initial)) = (written.version.as_deref(), written.initial_version.as_deref())
    else {
        return Ok(());
    };
    if !ctx.workloads.is_ready() {
        return Err(Error::NotReady(
            "workload caches are not synced yet; nothing is restarted before they are",
        ));
    }
    let ns = rs.namespace().unwrap_or_default();
    let key = rollout::annotation_key(rs.target_name());
    let (targets, mut problems) = targets(run);

    let mut restarted = 0;
    for w in &targets {
        if !rollout::needs_roll(w.annotation(&key), w.created, version, initial, written.at) {
            continue;
        }
        let kind = kind_str(w.kind);
        match rollout::roll(&ctx.client, &ns, w.kind, &w.name, &key, version).await {
            // Already at this version: the workload cache lagged behind an
            // earlier roll. Not a restart, so no Event and no count.
            Ok(false) => {}
            Ok(true) => {
                restarted += 1;
                record_restart(run, w, version).await;
            }
            Err(e) => {
                let mut msg = e.to_string();
                conditions::truncate(&mut msg, 200);
                problems.push(format!("{kind} {}: {msg}", w.name));
            }
        }
    }
    if restarted > 0
        && let Some(at) = ctx.memory.detected_at(rs, version)
    {
        ctx.metrics.rotation_reached_rollout(at.elapsed());
    }
    if problems.is_empty() {
        ctx.memory.clear_detected(rs);
        let msg: conditions::Text = match targets.len() {
            0 => conditions::message::NO_CONSUMERS.into(),
            n => format!("{n} workload(s) run version {version}").into(),
        };
        run.set(conditions::ROLLED_OUT, true, "RolledOut", msg);
        return Ok(());
    }
    Err(Error::Refused {
        reason: "RolloutFailed",
        message: format!(
            "could not restart every consumer for version {version} (the others were restarted): {}",
            problems.join("; ")
        ),
    })
}
