//! One reconcile: the stage table (spec, KMS key, AWS secret, rotation,
//! mirror, rollout), how a failure is recorded, and when to look again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use rand::Rng;
use tracing::warn;

use super::memory::RotationReport;
use super::status::{Run, patch_status};
use super::{Context, cleanup, events, provision, sync};
use crate::api::conditions::{self, Condition};
use crate::api::{OWNER_TAG, RotatedSecret, validate};
use crate::aws::secrets::SecretMeta;
use crate::{Error, Result};

/// How long a reconcile waits, at the start, for the first sweep.
const FIRST_SWEEP_WAIT: Duration = Duration::from_secs(60);

/// Which status condition a failure belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Spec,
    Kms,
    Secret,
    Rotation,
    Sync,
    Rollout,
}

impl Stage {
    fn condition(self) -> &'static str {
        match self {
            Stage::Spec => conditions::READY,
            Stage::Kms => conditions::KMS_KEY_READY,
            Stage::Secret => conditions::SECRET_READY,
            Stage::Rotation => conditions::ROTATION_CONFIGURED,
            Stage::Sync => conditions::SYNCED,
            Stage::Rollout => conditions::ROLLED_OUT,
        }
    }
}

#[tracing::instrument(skip(rs, ctx), fields(namespace = rs.namespace(), name = %rs.name_any()))]
pub async fn reconcile(rs: Arc<RotatedSecret>, ctx: Arc<Context>) -> Result<Action> {
    // Refreshes, sweep triggers and retries take one of `--concurrency`
    // slots, or step aside for a moment; the controller runs a few more
    // reconciles than that, so work a user waits for (a new object, an
    // edit, a deletion) never queues behind a backlog of refreshes.
    let _slot = match is_priority(&rs) {
        true => None,
        false => match ctx.background.clone().try_acquire_owned() {
            Ok(slot) => Some(slot),
            Err(_) => {
                let wait = rand::rng().random_range(1000..3000);
                return Ok(Action::requeue(Duration::from_millis(wait)));
            }
        },
    };
    ctx.memory.checking(&rs);
    let start = Instant::now();
    let work = async {
        if rs.metadata.deletion_timestamp.is_some() {
            cleanup::cleanup(&rs, &ctx).await
        } else {
            apply(&rs, &ctx).await
        }
    };
    // kube-runtime re-raises a reconcile's panic and takes every object down
    // with it. A panic (a bug, but one day there will be one) stays with its
    // object: reported there, counted, and retried with backoff. Shared state
    // stays usable: the memory's lock recovers from poisoning.
    let res = match std::panic::AssertUnwindSafe(work).catch_unwind().await {
        Ok(res) => res,
        Err(_) => {
            ctx.metrics.reconcile_panicked();
            report_panic(&rs, &ctx).await;
            Err(Error::Panic)
        }
    };
    ctx.metrics
        .reconciled(start.elapsed(), res.as_ref().err().map(Error::category));
    if res.is_ok() {
        ctx.memory.succeeded(&rs);
    }
    res
}

/// Work a user is waiting for: a new object, an edited spec, a deletion.
fn is_priority(rs: &RotatedSecret) -> bool {
    rs.metadata.deletion_timestamp.is_some()
        || rs
            .status
            .as_ref()
            .is_none_or(|s| s.observed_generation != rs.metadata.generation)
}

/// Marks the object after a panic in its reconcile: `Ready` False with
/// reason `InternalError`, and a Warning Event. Best effort; the panic hook
/// has logged where it happened (without its message, which may quote
/// values).
async fn report_panic(rs: &RotatedSecret, ctx: &Context) {
    let old = ctx
        .memory
        .last_status(rs)
        .unwrap_or_else(|| rs.status.clone().unwrap_or_default());
    let mut new = old.clone();
    let err = Error::Panic;
    conditions::upsert(
        &mut new.conditions,
        Condition::new(conditions::READY, false, err.reason(), err.to_string()),
        rs.metadata.generation,
        &Timestamp::now().to_string(),
    );
    match patch_status(ctx, rs, &old, &new).await {
        Ok(()) => ctx.memory.remember_status(rs, &new),
        Err(e) => warn!(error = %e, "could not record the internal error in status"),
    }
    events::publish(
        ctx,
        rs,
        EventType::Warning,
        err.reason(),
        "Reconcile",
        err.to_string(),
    )
    .await;
}

/// Transient errors back off exponentially per object, with jitter so many
/// objects failing together (an AWS outage) do not retry in lockstep.
pub fn error_policy(rs: Arc<RotatedSecret>, err: &Error, ctx: Arc<Context>) -> Action {
    if !err.is_transient() {
        // Waiting for the user (a bad spec, ownership): retrying sooner
        // cannot help, and the refresh interval keeps the mirror following.
        warn!(error = %err, category = err.category(), "reconcile needs attention");
        return Action::requeue(ctx.memory.policy.refresh_interval(&rs));
    }
    let attempts = ctx.memory.failed(&rs);
    let delay = ctx.memory.retry_in(&rs, attempts);
    warn!(error = %err, category = err.category(), retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// Converges one object and records the outcome in its status. Failures are
/// returned: `error_policy` backs off transient ones and requeues those that
/// need the user (bad spec, ownership) at the refresh interval.
async fn apply(rs: &RotatedSecret, ctx: &Context) -> Result<Action> {
    let mut run = Run::new(rs, ctx);
    let outcome = stages(&mut run).await;
    let ready = match &outcome {
        Ok(()) => Condition::new(conditions::READY, true, "Ready", conditions::message::CONVERGED),
        Err((stage, err)) => {
            run.set(stage.condition(), false, err.reason(), err.to_string());
            Condition::new(conditions::READY, false, err.reason(), err.to_string())
        }
    };
    conditions::upsert(
        &mut run.status.conditions,
        ready,
        rs.metadata.generation,
        &run.now,
    );
    run.status.observed_generation = rs.metadata.generation;
    run.record_check_time();
    ctx.metrics.set_ready(
        &rs.namespace().unwrap_or_default(),
        &rs.name_any(),
        outcome.is_ok(),
    );
    run.save().await?;

    match outcome {
        Ok(()) => {
            let now = Instant::now();
            let after = ctx.memory.next_check(rs, now, Timestamp::now());
            Ok(match ctx.memory.check_by_sweep(rs, now, after) {
                true => Action::await_change(),
                false => Action::requeue(after),
            })
        }
        Err((_, err)) => {
            run.event(EventType::Warning, err.reason(), "Reconcile", err.to_string())
                .await;
            // Returned either way, so metrics count every failure with its
            // category (alerts need the ones waiting for a person);
            // `error_policy` decides when to look again.
            Err(err)
        }
    }
}

/// The failures of one run, each recorded on its stage's condition.
#[derive(Default)]
struct Failures(Vec<(Stage, Error)>);

impl Failures {
    fn add(&mut self, run: &mut Run<'_>, stage: Stage, err: Error) {
        run.set(stage.condition(), false, err.reason(), err.to_string());
        self.0.push((stage, err));
    }
}

/// Runs the stages in order. Once the AWS secret's identity is known and
/// owned (its ARN pinned in status), a failure in a stage that only
/// configures AWS (spec checks, key, settings, rotation, rotate-now) is
/// recorded on its own condition and the mirror still runs: a schedule AWS
/// refuses or a bad tag must never stop the Secret from following AWSCURRENT
/// while the rotation Lambda keeps changing the password. The first failure
/// is returned for `Ready`, the Event and the retry policy.
async fn stages(run: &mut Run<'_>) -> Result<(), (Stage, Error)> {
    let rs = run.rs;
    let known = run.status.arn.is_some();
    let mut failed = Failures::default();
    let valid = check_spec(run, &mut failed).await?;
    let spread = rand::rng().random_range(0.0..1.0);
    let converge = valid && run.ctx.memory.needs_converge(rs, Instant::now(), spread);

    let (key, key_ok) = if converge {
        match provision::ensure_key(run).await {
            Ok(key) => (key, true),
            // Without the key a new secret cannot be created, nor the key of
            // an existing one converged; the existing one is still mirrored.
            Err(e) if known => {
                failed.add(run, Stage::Kms, e);
                (None, false)
            }
            Err(e) => return Err((Stage::Kms, e)),
        }
    } else {
        (None, true)
    };
    let meta = secret_meta(run, converge, key.as_ref()).await?;
    if converge
        && key_ok
        && let Err(e) = provision::converge(run, &meta, key.as_ref()).await
    {
        failed.add(run, Stage::Secret, e);
    }
    if converge && let Err(e) = provision::ensure_rotation(run, &meta).await {
        failed.add(run, Stage::Rotation, e);
    }
    if valid && let Err(e) = provision::rotate_now(run, &meta).await {
        failed.add(run, Stage::Rotation, e);
    }
    match sync::sync_secret(run, &meta).await {
        Ok(written) => {
            if let Err(e) = sync::rollout(run, &written).await {
                failed.add(run, Stage::Rollout, e);
            }
        }
        Err(e) => failed.add(run, Stage::Sync, e),
    }
    report_rotation(run, &mut failed, valid && !converge).await;
    if converge && failed.0.is_empty() {
        run.ctx.memory.mark_converged(rs, Instant::now());
    }
    failed.0.into_iter().next().map_or(Ok(()), Err)
}

/// Checks the spec. Problems stop the run unless the secret is known and the
/// problem does not stop the mirror; then the run goes on without
/// configuring AWS (returns false).
async fn check_spec(run: &mut Run<'_>, failed: &mut Failures) -> Result<bool, (Stage, Error)> {
    let mut problems = validate::validate(&run.rs.spec).err().unwrap_or_default();
    problems.extend(context_problems(run));
    problems.extend(
        provision::replica_key_problems(run)
            .await
            .map_err(|e| (Stage::Spec, e))?,
    );
    match problems {
        problems if problems.is_empty() => Ok(true),
        problems if run.status.arn.is_some() && !validate::blocks_mirror(&run.rs.spec) => {
            failed.add(run, Stage::Spec, Error::InvalidSpec(problems));
            Ok(false)
        }
        problems => Err((Stage::Spec, Error::InvalidSpec(problems))),
    }
}

/// The secret's metadata. Between convergences the sweep's view is enough;
/// the full describe path runs on spec changes, drift checks, rotation
/// windows and when the sweep is stale.
async fn secret_meta(
    run: &mut Run<'_>,
    converge: bool,
    key: Option<&crate::aws::kms::KeyInfo>,
) -> Result<SecretMeta, (Stage, Error)> {
    let ctx = run.ctx;
    let owner = ctx.owner_tag_value(run.rs);
    if !*ctx.swept.borrow() {
        // Starting: the first sweep is about to say what thousands of
        // describes would. Bounded: a slow or failing AWS must not hold
        // reconciles back for long.
        let mut swept = ctx.swept.subscribe();
        let _ = tokio::time::timeout(FIRST_SWEEP_WAIT, swept.wait_for(|s| *s)).await;
    }
    let polled = (!converge)
        .then(|| {
            ctx.memory
                .polled(run.rs, &owner, Instant::now(), Timestamp::now())
        })
        .flatten();
    if let Some(meta) = polled {
        run.status.current_version_id = meta.current_version.clone();
        run.status.rotation_enabled = Some(meta.rotation_enabled);
        run.status.last_rotated_date = meta.last_rotated.clone();
        run.status.next_rotation_date = meta.next_rotation.clone();
        return Ok(meta);
    }
    let meta = provision::ensure_secret(run, key)
        .await
        .map_err(|e| (Stage::Secret, e))?;
    ctx.memory.described(&meta, Instant::now());
    Ok(meta)
}

/// Reports a failed rotation (from a `RotationFailed` event) after the
/// mirror: the Secret keeps AWSCURRENT, which a failed rotation never
/// moved, and the user learns the function failed. Once it is over, and
/// `redo` (the run did not already converge), the rotation condition is
/// redone from a fresh describe.
async fn report_rotation(run: &mut Run<'_>, failed: &mut Failures, redo: bool) {
    let synced = run.status.synced_version_id.clone();
    match run.ctx.memory.rotation_report(run.rs, synced.as_deref()) {
        Some(RotationReport::Failed(at, _)) => {
            let err = Error::Refused {
                reason: "RotationFailed",
                message: format!(
                    "Secrets Manager reported that a rotation failed at {at} (RotationFailed event); the Secret \
                     keeps the current version. Check the rotation function's logs; rotor clears this when a new \
                     version arrives"
                ),
            };
            failed.add(run, Stage::Rotation, err);
        }
        Some(RotationReport::Cleared) if redo => match provision::ensure_secret(run, None).await {
            Ok(meta) => {
                if let Err(e) = provision::ensure_rotation(run, &meta).await {
                    failed.add(run, Stage::Rotation, e);
                }
            }
            Err(e) => failed.add(run, Stage::Secret, e),
        },
        _ => {}
    }
}

/// Spec problems that depend on the operator's settings.
fn context_problems(run: &Run<'_>) -> Vec<String> {
    let (rs, ctx) = (run.rs, run.ctx);
    let mut problems = Vec::new();
    let owner = ctx.owner_tag_value(rs);
    if owner.chars().count() > 256 {
        problems.push(format!(
            "the ownership tag {OWNER_TAG}={owner:.40}... would be {} characters; AWS allows 256. \
             Use a shorter namespace or name",
            owner.chars().count()
        ));
    }
    let sm = &rs.spec.secrets_manager;
    let home = ctx.memory.policy.region_of(rs);
    if sm.replica_regions.iter().any(|r| r.region == home) {
        problems.push(format!(
            "secretsManager.replicaRegions: {home} is the secret's own region"
        ));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_edited_and_deleted_objects_go_first() {
        let mut rs = RotatedSecret::new("a", serde_yaml::from_str("secretsManager: {name: x}").unwrap());
        rs.metadata.generation = Some(2);
        assert!(is_priority(&rs), "new: no status");
        rs.status = Some(crate::api::RotatedSecretStatus {
            observed_generation: Some(1),
            ..Default::default()
        });
        assert!(is_priority(&rs), "edited");
        rs.status.as_mut().unwrap().observed_generation = Some(2);
        assert!(!is_priority(&rs), "a refresh");
        rs.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            Timestamp::now(),
        ));
        assert!(is_priority(&rs), "deleted");
    }
}
