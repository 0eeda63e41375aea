//! The RotatedSecret controller: reconcile, error policy and wiring.
//!
//! A reconcile walks the stages in order — spec, KMS key, AWS secret,
//! rotation, mirror — and records each stage's outcome in its condition.
//! Every step is idempotent: interrupted anywhere, the next reconcile
//! converges without duplicates.

mod cleanup;
mod drift;
mod poller;
mod provision;
mod sync;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt, future};
use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PartialObjectMeta, Patch, PatchParams};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Predicate, PredicateConfig, WatchStreamExt, predicates, reflector, watcher};
use kube::{Client, Resource, ResourceExt};
use rand::Rng;
use serde_json::json;
use sha2::{Digest, Sha256};
use tracing::{Instrument, field, info, info_span, warn};

use crate::api::conditions::{self, Condition};
use crate::api::{OWNER_TAG, RotatedSecret, RotatedSecretStatus, duration, validate};
use crate::aws::Aws;
use crate::aws::secrets::Description;
use crate::config::{AdoptionPolicy, LambdaPolicy, RunArgs};
use crate::k8s::leader::Elector;
use crate::k8s::mirror;
use crate::k8s::rollout::Workloads;
use crate::telemetry::{Metrics, Readiness};
use crate::{Error, Result};

/// Guards AWS-side cleanup; present only while there is some to do.
pub const FINALIZER: &str = "rotor.dev/cleanup";

const DEFAULT_REFRESH: Duration = Duration::from_secs(60);
const BACKOFF_BASE: Duration = Duration::from_secs(2);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
const MAX_EVENT_NOTE: usize = 1000;

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub aws: Aws,
    pub cluster_name: String,
    pub adoption: AdoptionPolicy,
    pub recorder: Recorder,
    pub reporter: Reporter,
    pub metrics: Arc<Metrics>,
    pub min_refresh: Duration,
    pub drift_interval: Duration,
    pub cleanup_timeout: Duration,
    pub rotate_now_min_interval: Duration,
    pub lambda_policy: LambdaPolicy,
    pub delete_created_kms_keys: bool,
    pub allowed_kms_key_accounts: Vec<String>,
    /// Consecutive transient failures per object, for exponential backoff.
    failures: Mutex<HashMap<ObjectRef<RotatedSecret>, u32>>,
    /// Generation and time of the last full convergence per object: AWS
    /// settings are re-checked on spec changes and every `drift_interval`,
    /// not on every refresh.
    converged: Mutex<HashMap<ObjectRef<RotatedSecret>, Converged>>,
    /// Deployments, StatefulSets and DaemonSets, for rollout.
    pub workloads: Workloads,
    /// Latest AWSCURRENT seen per secret ARN, by the sweep or a describe.
    seen: Mutex<HashMap<String, Seen>>,
    /// Objects to check with DescribeSecret on every refresh until their
    /// version moves (a rotation rotor asked for, or an event).
    /// The version synced when watching started, and when watching ends
    /// anyway (an event or rotate-now whose rotation never comes must not
    /// pin the object to DescribeSecret forever).
    watching: Mutex<HashMap<ObjectRef<RotatedSecret>, Watch>>,
    /// When Secrets Manager reported a failed rotation (a `RotationFailed`
    /// event), and the version the Secret held then: reported on the object
    /// until a new version arrives or a `RotationSucceeded` event.
    failed_rotations: Mutex<HashMap<ObjectRef<RotatedSecret>, RotationReport>>,
    /// When a new version was first noticed, for latency metrics.
    detected: Mutex<HashMap<ObjectRef<RotatedSecret>, (String, Instant)>>,
    /// The sweep's interval, and when it last listed each region. Health is
    /// per region: one object naming a region that fails (a typo, a disabled
    /// opt-in region) must not move every other object to DescribeSecret.
    sweep: Mutex<(Duration, HashMap<String, Instant>)>,
    /// The status rotor last wrote per object (with the object's uid): only
    /// the leader writes status, so this is never older than the cache.
    statuses: Mutex<HashMap<ObjectRef<RotatedSecret>, (String, RotatedSecretStatus)>>,
    /// Since when the sweep has seen AWSPENDING on a version, per ARN.
    pending: Mutex<HashMap<String, (String, Instant)>>,
}

/// One observation of a secret's AWSCURRENT.
#[derive(Debug, Clone)]
pub struct Seen {
    pub version: Option<String>,
    pub owner: Option<String>,
    /// When the answer arrived (how fresh the view is).
    pub at: Instant,
    /// When the call that saw this was sent: AWS's answer describes the
    /// secret as it was at some point after this instant, so observations
    /// are ordered by it.
    pub sent: Instant,
    pub wall: Timestamp,
    /// Rotation state as last seen, so status follows rotations without a
    /// describe. Always taken together: mixing an enabled flag and dates from
    /// two observations shows a cancelled rotation with a next date.
    pub rotation_enabled: bool,
    pub last_rotated: Option<String>,
    pub next_rotation: Option<String>,
}

impl Context {
    pub fn owner_tag_value(&self, rs: &RotatedSecret) -> String {
        format!(
            "{}/{}/{}",
            self.cluster_name,
            rs.namespace().unwrap_or_default(),
            rs.name_any()
        )
    }

    fn refresh_interval(&self, rs: &RotatedSecret) -> Duration {
        duration::parse(&rs.spec.refresh_interval)
            .unwrap_or(DEFAULT_REFRESH)
            .max(self.min_refresh)
    }

    fn needs_converge(&self, rs: &RotatedSecret) -> bool {
        let mut converged = self
            .converged
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = ObjectRef::from(rs);
        if !converged.contains_key(&key) && ready_at_generation(rs) {
            // Converged before this process started: nothing to redo now (the
            // sweep reports drift), and the next drift check is spread over
            // the interval so a restart does not describe every object at once.
            let ago = self.drift_interval.mul_f64(rand::rng().random_range(0.0..1.0));
            converged.insert(
                key.clone(),
                (rs.metadata.generation, Instant::now().checked_sub(ago)),
            );
        }
        match converged.get(&key) {
            Some((generation, Some(at))) => {
                *generation != rs.metadata.generation || at.elapsed() >= self.drift_interval
            }
            _ => true,
        }
    }

    fn mark_converged(&self, rs: &RotatedSecret) {
        self.converged
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(
                ObjectRef::from(rs),
                (rs.metadata.generation, Some(Instant::now())),
            );
    }

    /// Asks for a convergence on the next reconcile (drift seen by the
    /// sweep), unless one ran within the last minute and this is not `urgent`:
    /// a setting AWS reports differently from how it was set must not loop,
    /// but a secret scheduled for deletion or gone is looked at every sweep.
    fn request_converge(&self, rs: &RotatedSecret, urgent: bool) -> bool {
        let mut converged = self
            .converged
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = ObjectRef::from(rs);
        if let Some((_, Some(at))) = converged.get(&key)
            && at.elapsed() < Duration::from_secs(60)
            && !urgent
        {
            return false;
        }
        converged.insert(key, (rs.metadata.generation, None));
        true
    }

    fn forget(&self, rs: &RotatedSecret) {
        let key = ObjectRef::from(rs);
        self.failed_rotations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&key);
        self.converged
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&key);
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&key);
        self.watching
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&key);
        self.detected
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&key);
        self.statuses
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&key);
    }

    /// How long the sweep has seen `version` pending on `arn` (`None` clears).
    fn pending_for(&self, arn: &str, version: Option<&str>) -> Duration {
        let mut pending = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(version) = version else {
            pending.remove(arn);
            return Duration::ZERO;
        };
        match pending.get(arn) {
            Some((v, since)) if v == version => since.elapsed(),
            _ => {
                pending.insert(arn.to_owned(), (version.to_owned(), Instant::now()));
                Duration::ZERO
            }
        }
    }

    fn last_status(&self, rs: &RotatedSecret) -> Option<RotatedSecretStatus> {
        let statuses = self
            .statuses
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (uid, status) = statuses.get(&ObjectRef::from(rs))?;
        (Some(uid) == rs.uid().as_ref()).then(|| status.clone())
    }

    fn remember_status(&self, rs: &RotatedSecret, status: &RotatedSecretStatus) {
        if let Some(uid) = rs.uid() {
            self.statuses
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(ObjectRef::from(rs), (uid, status.clone()));
        }
    }

    /// Records an observation unless a newer one is already there. A
    /// ListSecrets page is sent before, and may land after, a DescribeSecret
    /// that follows one of rotor's own writes; the older view must not win,
    /// or status shows the state from before that write.
    pub fn record_seen_as(&self, arn: &str, seen: Seen) -> bool {
        let mut all = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if all.get(arn).is_some_and(|known| known.sent > seen.sent) {
            return false;
        }
        all.insert(arn.to_owned(), seen);
        true
    }

    /// Records what a DescribeSecret just showed.
    pub fn record_seen(&self, desc: &Description) {
        // Sent a little before now: it still outranks any listing sent
        // before the describe, which is what matters.
        self.record_seen_as(
            &desc.arn,
            Seen {
                version: desc.current_version.clone(),
                owner: desc.owner().map(str::to_owned),
                at: Instant::now(),
                sent: Instant::now(),
                wall: Timestamp::now(),
                rotation_enabled: desc.rotation_enabled,
                last_rotated: desc.last_rotated.clone(),
                next_rotation: desc.next_rotation.clone(),
            },
        );
    }

    fn seen(&self, arn: &str) -> Option<Seen> {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(arn)
            .cloned()
    }

    fn check_age(&self, arn: &str) -> Duration {
        self.seen(arn).map(|s| s.at.elapsed()).unwrap_or(Duration::MAX)
    }

    fn set_poll_interval(&self, every: Duration) {
        self.sweep
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .0 = every;
    }

    fn swept(&self, region: &str) {
        self.sweep
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .1
            .insert(region.to_owned(), Instant::now());
    }

    /// Forgets sweep health of regions no object names any more.
    fn keep_regions(&self, regions: &std::collections::BTreeSet<String>) {
        self.sweep
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .1
            .retain(|r, _| regions.contains(r));
    }

    fn region_of<'a>(&'a self, rs: &'a RotatedSecret) -> &'a str {
        rs.spec
            .secrets_manager
            .region
            .as_deref()
            .unwrap_or(self.aws.default_region())
    }

    /// Whether the sweep covered every region recently enough to be relied on.
    fn sweep_healthy(&self, region: &str) -> bool {
        let sweep = self
            .sweep
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let every = sweep.0;
        sweep
            .1
            .get(region)
            .is_some_and(|t| t.elapsed() <= every * 2 + Duration::from_secs(5))
    }

    /// Records when a version different from the synced one was first noticed.
    fn note_new_version(&self, rs: &RotatedSecret, version: Option<&str>, source: &'static str) {
        let (Some(version), Some(synced)) = (
            version,
            rs.status.as_ref().and_then(|s| s.synced_version_id.as_deref()),
        ) else {
            return;
        };
        if version == synced {
            return;
        }
        let mut detected = self
            .detected
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = ObjectRef::from(rs);
        if detected.get(&key).is_none_or(|(v, _)| v != version) {
            detected.insert(key, (version.to_owned(), Instant::now()));
            self.metrics.rotation_observed(source);
        }
    }

    fn detected_at(&self, rs: &RotatedSecret, version: &str) -> Option<Instant> {
        let detected = self
            .detected
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        detected
            .get(&ObjectRef::from(rs))
            .filter(|(v, _)| v == version)
            .map(|(_, at)| *at)
    }

    fn clear_detected(&self, rs: &RotatedSecret) {
        self.detected
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&ObjectRef::from(rs));
    }

    /// Check this object with DescribeSecret until its version moves.
    pub fn watch(&self, rs: &RotatedSecret) {
        let synced = rs.status.as_ref().and_then(|s| s.synced_version_id.clone());
        let until = Instant::now() + self.rotation_window(rs);
        self.watching
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(ObjectRef::from(rs), (synced, until));
    }

    /// How long a rotation of this object may take: its window, else a day.
    fn rotation_window(&self, rs: &RotatedSecret) -> Duration {
        provision::stuck_after(rs.spec.rotation.as_ref().and_then(|r| r.window.as_deref()))
    }

    /// Records what a rotation event says about the object's rotation.
    pub fn rotation_event(&self, rs: &RotatedSecret, event: &str) {
        let mut reports = self
            .failed_rotations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = ObjectRef::from(rs);
        match event {
            "RotationFailed" => {
                let synced = rs.status.as_ref().and_then(|s| s.synced_version_id.clone());
                reports.insert(key, RotationReport::Failed(Timestamp::now(), synced));
            }
            "RotationSucceeded" if reports.contains_key(&key) => {
                reports.insert(key, RotationReport::Cleared);
            }
            _ => {}
        }
    }

    /// The failed rotation to report, if it is still the latest news; a
    /// version that moved since (a later rotation succeeded) clears it.
    /// `Cleared` is returned once.
    fn rotation_report(&self, rs: &RotatedSecret, synced: Option<&str>) -> Option<RotationReport> {
        let mut reports = self
            .failed_rotations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = ObjectRef::from(rs);
        match reports.get(&key)? {
            RotationReport::Failed(at, before) if before.as_deref() == synced => {
                Some(RotationReport::Failed(*at, before.clone()))
            }
            _ => {
                reports.remove(&key);
                Some(RotationReport::Cleared)
            }
        }
    }

    /// Stops watching once the Secret holds a version other than the one
    /// it held when watching started.
    fn unwatch_if_moved(&self, rs: &RotatedSecret, synced: Option<&str>) {
        let mut watching = self
            .watching
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = ObjectRef::from(rs);
        if watching
            .get(&key)
            .is_some_and(|(before, _)| before.as_deref() != synced)
        {
            watching.remove(&key);
        }
    }

    /// In its rotation window (from `nextRotationDate`), or waiting for a
    /// rotation: ListSecrets may lag here, so the object describes itself.
    fn is_watching(&self, rs: &RotatedSecret) -> bool {
        let key = ObjectRef::from(rs);
        let mut watching = self
            .watching
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match watching.get(&key) {
            Some((_, until)) if *until > Instant::now() => return true,
            Some(_) => {
                watching.remove(&key);
            }
            None => {}
        }
        drop(watching);
        self.until_rotation_window(rs).is_some_and(|d| d.is_zero())
    }

    /// Time until the object's next rotation window opens (zero while it is
    /// open), if one is scheduled. The window opens one refresh interval
    /// before `nextRotationDate` and closes when a rotation of that length
    /// would be called stuck: a date that passed without a rotation (a
    /// failing Lambda, a cancelled schedule) does not keep the object on
    /// DescribeSecret forever.
    fn until_rotation_window(&self, rs: &RotatedSecret) -> Option<Duration> {
        let next: Timestamp = rs.status.as_ref()?.next_rotation_date.as_deref()?.parse().ok()?;
        let now = Timestamp::now().as_second();
        let opens = next.as_second() - self.refresh_interval(rs).as_secs() as i64;
        let closes = next.as_second() + self.rotation_window(rs).as_secs() as i64;
        if now > closes {
            return None;
        }
        Some(Duration::from_secs(opens.saturating_sub(now).max(0) as u64))
    }

    /// What the sweep says about this object's secret, when fresh and
    /// trustworthy; `None` means: ask AWS with DescribeSecret.
    fn polled(&self, rs: &RotatedSecret) -> Option<Description> {
        let status = rs.status.as_ref()?;
        let arn = status.arn.as_deref()?;
        if self.is_watching(rs) || !self.sweep_healthy(self.region_of(rs)) {
            return None;
        }
        let seen = self.seen(arn)?;
        let every = self
            .sweep
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .0;
        if seen.at.elapsed() > every * 2 || seen.owner.as_deref() != Some(self.owner_tag_value(rs).as_str()) {
            return None;
        }
        Some(Description {
            arn: arn.to_owned(),
            name: rs.spec.secrets_manager.name.clone(),
            tags: seen
                .owner
                .map(|o| (OWNER_TAG.to_owned(), o))
                .into_iter()
                .collect(),
            current_version: seen.version,
            rotation_enabled: seen.rotation_enabled,
            last_rotated: seen.last_rotated,
            next_rotation: seen.next_rotation,
            ..Description::default()
        })
    }

    /// When to look at an object again when nothing triggers it: at the
    /// refresh interval while watching or while the sweep is unhealthy,
    /// otherwise at the next rotation window or the drift interval.
    fn next_check(&self, rs: &RotatedSecret) -> Duration {
        let refresh = self.refresh_interval(rs);
        if self.is_watching(rs) || !self.sweep_healthy(self.region_of(rs)) {
            return refresh;
        }
        let window = self.until_rotation_window(rs).unwrap_or(Duration::MAX);
        window.min(self.drift_interval).max(refresh)
    }
}

/// What rotor reports about an object's last rotation (from events).
#[derive(Clone, Debug, PartialEq)]
enum RotationReport {
    /// Failed at this time, when the Secret held this version.
    Failed(Timestamp, Option<String>),
    /// A failure was reported and is over: the condition must be redone.
    Cleared,
}

/// The version synced when watching started, and the end of watching.
type Watch = (Option<String>, Instant);

/// The generation last converged and when (`None`: converge on the next reconcile).
type Converged = (Option<i64>, Option<Instant>);

/// Ready at the current generation: a previous process converged it.
fn ready_at_generation(rs: &RotatedSecret) -> bool {
    rs.status.as_ref().is_some_and(|s| {
        s.observed_generation == rs.metadata.generation
            && conditions::find(&s.conditions, conditions::READY).is_some_and(|c| c.is_true())
    })
}

/// A ClientRequestToken (UUID-shaped, as AWS wants) derived from the
/// object's uid and a purpose, so a retried write is recognised by AWS as
/// the same request and never creates a second version or rotation.
pub fn request_token(rs: &RotatedSecret, purpose: &str) -> String {
    let digest = Sha256::digest(format!("{}/{purpose}", rs.uid().unwrap_or_default()));
    let h: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Which status condition a failure belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Spec,
    Kms,
    Secret,
    Rotation,
    Sync,
    Rollout,
    Cleanup,
}

impl Stage {
    fn condition(self) -> &'static str {
        match self {
            Stage::Spec | Stage::Cleanup => conditions::READY,
            Stage::Kms => conditions::KMS_KEY_READY,
            Stage::Secret => conditions::SECRET_READY,
            Stage::Rotation => conditions::ROTATION_CONFIGURED,
            Stage::Sync => conditions::SYNCED,
            Stage::Rollout => conditions::ROLLED_OUT,
        }
    }
}

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

impl Run<'_> {
    pub fn set(&mut self, type_: &str, ok: bool, reason: &str, message: impl Into<String>) {
        conditions::upsert(
            &mut self.status.conditions,
            Condition::new(type_, ok, reason, message),
            self.rs.metadata.generation,
            &self.now,
        );
    }

    pub async fn event(&self, type_: EventType, reason: &str, action: &str, note: String) {
        publish(self.ctx, self.rs, type_, reason, action, note).await;
    }

    /// Writes what changed in the status since the last save: used at the
    /// end, and mid-reconcile right after an AWS write whose result must
    /// survive a crash before the reconcile ends.
    pub async fn save(&mut self) -> Result<()> {
        if self.status != self.saved {
            patch_status(self.ctx, self.rs, &self.saved, &self.status)
                .await
                .map_err(Error::Kube)?;
            self.saved = self.status.clone();
            self.ctx.remember_status(self.rs, &self.status);
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
}

/// Replaces the finalizer list, guarded by resourceVersion so a concurrent
/// change by someone else fails (and is retried) instead of being lost.
async fn set_finalizers(ctx: &Context, rs: &RotatedSecret, finalizers: Vec<String>) -> Result<()> {
    let api: Api<RotatedSecret> = Api::namespaced(ctx.client.clone(), &rs.namespace().unwrap_or_default());
    let patch = json!({"metadata": {"resourceVersion": rs.resource_version(), "finalizers": finalizers}});
    api.patch(&rs.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

#[tracing::instrument(skip(rs, ctx), fields(namespace = rs.namespace(), name = %rs.name_any()))]
async fn reconcile(rs: Arc<RotatedSecret>, ctx: Arc<Context>) -> Result<Action> {
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
    // stays usable: every lock recovers from poisoning.
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
        ctx.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&ObjectRef::from(rs.as_ref()));
    }
    res
}

/// Marks the object after a panic in its reconcile: `Ready` False with
/// reason `InternalError`, and a Warning Event. Best effort; the panic hook
/// has logged where it happened (without its message, which may quote
/// values).
async fn report_panic(rs: &RotatedSecret, ctx: &Context) {
    let old = ctx
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
        Ok(()) => ctx.remember_status(rs, &new),
        Err(e) => warn!(error = %e, "could not record the internal error in status"),
    }
    publish(
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
fn error_policy(rs: Arc<RotatedSecret>, err: &Error, ctx: Arc<Context>) -> Action {
    if !err.is_transient() {
        // Waiting for the user (a bad spec, ownership): retrying sooner
        // cannot help, and the refresh interval keeps the mirror following.
        warn!(error = %err, category = err.category(), "reconcile needs attention");
        return Action::requeue(ctx.refresh_interval(&rs));
    }
    let attempts = {
        let mut failures = ctx
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = failures.entry(ObjectRef::from(rs.as_ref())).or_default();
        *n = n.saturating_add(1);
        *n
    };
    let delay = backoff(attempts).min(ctx.refresh_interval(&rs).max(BACKOFF_BASE) * 5);
    let jittered = delay.mul_f64(rand::rng().random_range(0.8..1.2));
    warn!(error = %err, category = err.category(), retry_in = ?jittered, "reconcile failed");
    Action::requeue(jittered)
}

fn backoff(attempts: u32) -> Duration {
    BACKOFF_BASE
        .saturating_mul(1u32 << attempts.saturating_sub(1).min(16))
        .min(BACKOFF_MAX)
}

/// Converges one object and records the outcome in its status. Failures are
/// returned: `error_policy` backs off transient ones and requeues those that
/// need the user (bad spec, ownership) at the refresh interval.
async fn apply(rs: &RotatedSecret, ctx: &Context) -> Result<Action> {
    // The cache can lag behind rotor's own last status write (a reconcile
    // queued right behind another): start from what was last written.
    let old_status = ctx
        .last_status(rs)
        .unwrap_or_else(|| rs.status.clone().unwrap_or_default());
    let mut run = Run {
        rs,
        ctx,
        status: old_status.clone(),
        now: Timestamp::now().to_string(),
        saved: old_status,
        finalizer: false,
    };

    let outcome = stages(&mut run).await;
    if let Err((stage, err)) = &outcome {
        run.set(stage.condition(), false, err.reason(), err.to_string());
    }
    let ready = match &outcome {
        Ok(()) => Condition::new(
            conditions::READY,
            true,
            "Ready",
            "AWS secret converged and Secret in sync",
        ),
        Err((_, err)) => Condition::new(conditions::READY, false, err.reason(), err.to_string()),
    };
    conditions::upsert(
        &mut run.status.conditions,
        ready,
        rs.metadata.generation,
        &run.now,
    );
    run.status.observed_generation = rs.metadata.generation;
    record_check_time(&mut run);
    ctx.metrics.set_ready(
        &rs.namespace().unwrap_or_default(),
        &rs.name_any(),
        outcome.is_ok(),
    );

    run.save().await?;

    match outcome {
        Ok(()) => Ok(Action::requeue(ctx.next_check(rs))),
        Err((_, err)) => {
            publish(
                ctx,
                rs,
                EventType::Warning,
                err.reason(),
                "Reconcile",
                err.to_string(),
            )
            .await;
            // Returned either way, so metrics count every failure with its
            // category (alerts need the ones waiting for a person);
            // `error_policy` decides when to look again.
            Err(err)
        }
    }
}

/// `status.lastCheckTime`: when AWS was last seen for this secret. Written
/// with other status changes, or when it is a drift interval old, so idle
/// objects do not each cost an API write per poll (the exact age is the
/// `rotor_version_check_age_seconds` metric).
fn record_check_time(run: &mut Run<'_>) {
    let Some(seen) = run.status.arn.as_deref().and_then(|arn| run.ctx.seen(arn)) else {
        return;
    };
    let recorded: Option<Timestamp> = run.status.last_check_time.as_deref().and_then(|t| t.parse().ok());
    let old = recorded
        .is_none_or(|t| seen.wall.as_second() - t.as_second() >= run.ctx.drift_interval.as_secs() as i64);
    if old || run.status != run.saved {
        run.status.last_check_time = Some(seen.wall.to_string());
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
    let mut failed: Vec<(Stage, Error)> = Vec::new();
    let fail = |run: &mut Run<'_>, failed: &mut Vec<(Stage, Error)>, stage: Stage, err: Error| {
        run.set(stage.condition(), false, err.reason(), err.to_string());
        failed.push((stage, err));
    };

    let mut problems = validate::validate(&rs.spec).err().unwrap_or_default();
    problems.extend(context_problems(run).err().unwrap_or_default());
    problems.extend(
        provision::replica_key_problems(run)
            .await
            .map_err(|e| (Stage::Spec, e))?,
    );
    let valid = match problems {
        problems if problems.is_empty() => true,
        problems if known && !validate::blocks_mirror(&rs.spec) => {
            fail(run, &mut failed, Stage::Spec, Error::InvalidSpec(problems));
            false
        }
        problems => return Err((Stage::Spec, Error::InvalidSpec(problems))),
    };
    let converge = valid && run.ctx.needs_converge(rs);

    let (key, key_ok) = if converge {
        match provision::ensure_key(run).await {
            Ok(key) => (key, true),
            // Without the key a new secret cannot be created, nor the key of
            // an existing one converged; the existing one is still mirrored.
            Err(e) if known => {
                fail(run, &mut failed, Stage::Kms, e);
                (None, false)
            }
            Err(e) => return Err((Stage::Kms, e)),
        }
    } else {
        (None, true)
    };
    // Between convergences, the sweep's view of the secret is enough; the
    // full describe path runs on spec changes, drift checks, rotation
    // windows and when the sweep is stale.
    let desc = match run.ctx.polled(rs).filter(|_| !converge) {
        Some(desc) => {
            run.status.current_version_id = desc.current_version.clone();
            run.status.rotation_enabled = Some(desc.rotation_enabled);
            run.status.last_rotated_date = desc.last_rotated.clone();
            run.status.next_rotation_date = desc.next_rotation.clone();
            desc
        }
        None => {
            let desc = provision::ensure_secret(run, key.as_ref())
                .await
                .map_err(|e| (Stage::Secret, e))?;
            run.ctx.record_seen(&desc);
            desc
        }
    };
    if converge && key_ok {
        if let Err(e) = provision::converge(run, &desc, key.as_ref()).await {
            fail(run, &mut failed, Stage::Secret, e);
        }
    }
    if converge && let Err(e) = provision::ensure_rotation(run, &desc).await {
        fail(run, &mut failed, Stage::Rotation, e);
    }
    if valid && let Err(e) = provision::rotate_now(run, &desc).await {
        fail(run, &mut failed, Stage::Rotation, e);
    }
    match sync::sync_secret(run, &desc).await {
        Ok(written) => {
            if let Err(e) = sync::rollout(run, &written).await {
                fail(run, &mut failed, Stage::Rollout, e);
            }
        }
        Err(e) => fail(run, &mut failed, Stage::Sync, e),
    }
    // Reported after the mirror: the Secret keeps AWSCURRENT, which a failed
    // rotation never moved, and the user learns the function failed.
    match run
        .ctx
        .rotation_report(rs, run.status.synced_version_id.as_deref())
    {
        Some(RotationReport::Failed(at, _)) => {
            let err = Error::Refused {
                reason: "RotationFailed",
                message: format!(
                    "Secrets Manager reported that a rotation failed at {at} (RotationFailed event); the Secret \
                     keeps the current version. Check the rotation function's logs; rotor clears this when a new \
                     version arrives"
                ),
            };
            fail(run, &mut failed, Stage::Rotation, err);
        }
        // Over: describe once and redo the rotation condition from AWS.
        Some(RotationReport::Cleared) if valid && !converge => {
            match provision::ensure_secret(run, None).await {
                Ok(desc) => {
                    if let Err(e) = provision::ensure_rotation(run, &desc).await {
                        fail(run, &mut failed, Stage::Rotation, e);
                    }
                }
                Err(e) => fail(run, &mut failed, Stage::Secret, e),
            }
        }
        _ => {}
    }
    if converge && failed.is_empty() {
        run.ctx.mark_converged(rs);
    }
    failed.into_iter().next().map_or(Ok(()), Err)
}

/// Spec problems that depend on the operator's settings.
fn context_problems(run: &Run<'_>) -> Result<(), Vec<String>> {
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
    let home = sm.region.as_deref().unwrap_or(ctx.aws.default_region());
    if sm.replica_regions.iter().any(|r| r.region == home) {
        problems.push(format!(
            "secretsManager.replicaRegions: {home} is the secret's own region"
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// Sends only the status fields that changed, as a JSON merge patch: the
/// object a reconcile starts from can lag behind rotor's own last write, and
/// a full replace would then roll back fields this reconcile did not touch.
async fn patch_status(
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

/// Publishes a Normal Event about another object (a restarted workload).
async fn publish_about(
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

/// Publishes an Event; failing to publish is logged, never fails a reconcile.
async fn publish(
    ctx: &Context,
    rs: &RotatedSecret,
    type_: EventType,
    reason: &str,
    action: &str,
    mut note: String,
) {
    // events.k8s.io refuses notes over 1 KiB; a cut note still says what happened.
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

/// Runs the controller until SIGTERM/SIGINT.
pub async fn run(args: RunArgs, metrics: Arc<Metrics>, readiness: Arc<Readiness>) -> Result<(), String> {
    let client = Client::try_default()
        .await
        .map_err(|e| format!("no Kubernetes client configuration: {e}"))?;
    let aws = Aws::from_env(args.aws_write_rate, metrics.clone()).await?;
    info!(region = aws.default_region(), cluster = %args.cluster_name, "starting rotor");
    let reporter = Reporter {
        controller: "rotor".into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let recorder = Recorder::new(client.clone(), reporter.clone());

    let elector = args.leader_election.then(|| {
        let identity = std::env::var("POD_NAME")
            .unwrap_or_else(|_| format!("rotor-{:08x}", rand::rng().random::<u32>()));
        Elector::new(
            client.clone(),
            &args.leader_election_namespace,
            &args.leader_election_lease,
            identity,
            args.leader_election_lease_duration,
        )
    });
    if let Some(elector) = &elector {
        // A standby replica is healthy and ready to take over.
        readiness.set(true);
        elector.acquire().await;
        readiness.set(false);
    }

    // One controller per watched namespace (or one for all): the API has no
    // multi-namespace watch, and separate stores keep their resyncs apart.
    let scopes: Vec<Option<String>> = if args.namespaces.is_empty() {
        vec![None]
    } else {
        args.namespaces.iter().cloned().map(Some).collect()
    };
    let (workloads, workload_watch) = Workloads::new(client.clone(), &scopes);
    let health = readiness.clone();
    tokio::spawn(async move {
        // The workload watches cannot be rebuilt in place: if they stop,
        // rollout would act on a frozen cache, so /healthz fails instead
        // and the kubelet restarts rotor.
        let outcome = tokio::spawn(workload_watch).await;
        warn!(
            panicked = outcome.is_err(),
            "workload watches stopped; reporting unhealthy"
        );
        health.set_unhealthy();
    });

    let ctx = Arc::new(Context {
        client: client.clone(),
        aws,
        cluster_name: args.cluster_name.clone(),
        adoption: AdoptionPolicy::new(&args.adoption_namespaces),
        recorder,
        reporter,
        metrics,
        min_refresh: args.min_refresh_interval,
        drift_interval: args.drift_interval,
        cleanup_timeout: args.cleanup_timeout,
        rotate_now_min_interval: args.rotate_now_min_interval,
        lambda_policy: LambdaPolicy::new(&args.allowed_lambda_arns),
        delete_created_kms_keys: args.delete_created_kms_keys,
        allowed_kms_key_accounts: args.allowed_kms_key_accounts.clone(),
        failures: Mutex::default(),
        converged: Mutex::default(),
        workloads: workloads.clone(),
        seen: Mutex::default(),
        watching: Mutex::default(),
        failed_rotations: Mutex::default(),
        detected: Mutex::default(),
        sweep: Mutex::new((DEFAULT_REFRESH, HashMap::new())),
        statuses: Mutex::default(),
        pending: Mutex::default(),
    });

    let mut pollers = Vec::new();
    let mut runs = Vec::new();
    let mut synced = Vec::new();
    for scope in scopes {
        let (rs_api, secret_api): (Api<RotatedSecret>, Api<PartialObjectMeta<Secret>>) = match &scope {
            Some(ns) => (
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
            ),
            None => (Api::all(client.clone()), Api::all(client.clone())),
        };
        // Metadata only, and only rotor's Secrets: no other Secret's data is
        // ever held in memory.
        let owned = watcher(
            secret_api,
            watcher::Config::default().labels(&mirror::managed_selector()),
        )
        .default_backoff()
        .touched_objects();
        // Status-only updates (rotor's own writes) do not trigger a reconcile;
        // spec, annotation (rotate-now) and finalizer changes do.
        let (reader, writer) = reflector::store();
        // Readiness is read off the stream (InitDone) rather than awaited on
        // the store: kube's Store::wait_until_ready wakes only one waiter.
        let listed = Arc::new(AtomicBool::new(false));
        let listed_flag = listed.clone();
        synced.push(listed);
        let objects = watcher(rs_api, watcher::Config::default().any_semantic())
            .default_backoff()
            .reflect(writer)
            .inspect(move |e| {
                if matches!(e, Ok(watcher::Event::InitDone)) {
                    listed_flag.store(true, Ordering::Relaxed);
                }
            })
            .applied_objects()
            .predicate_filter(
                predicates::generation
                    .combine(predicates::annotations)
                    .combine(predicates::finalizers),
                PredicateConfig::default(),
            );
        // The version sweep and SQS events trigger reconciles through here.
        let (trigger, triggered) = futures::channel::mpsc::channel(4096);
        let controller = Controller::for_stream(objects, reader)
            .owns_stream(owned)
            .reconcile_on(triggered)
            .with_config(ControllerConfig::default().concurrency(args.concurrency))
            .shutdown_on_signal();
        pollers.push(poller::Scope {
            store: controller.store(),
            trigger,
        });
        let span = info_span!("controller", namespace = field::debug(&scope));
        runs.push(
            controller
                .run(reconcile, error_policy, ctx.clone())
                .for_each(|res| {
                    if let Err(e) = res {
                        tracing::debug!(error = %e, "controller event");
                    }
                    future::ready(())
                })
                .instrument(span),
        );
    }

    supervise("sweep", &ctx.metrics, {
        let (ctx, pollers) = (ctx.clone(), pollers.clone());
        move || poller::sweep_loop(ctx.clone(), pollers.clone())
    });
    if let Some(queue_url) = args.events_queue_url.clone() {
        info!(%queue_url, "consuming Secrets Manager events");
        supervise("events", &ctx.metrics, {
            let (ctx, pollers) = (ctx.clone(), pollers.clone());
            move || {
                let (tx, rx) = tokio::sync::mpsc::channel(1024);
                let consume = crate::aws::events::consume(
                    ctx.aws.sqs(&queue_url),
                    queue_url.clone(),
                    tx,
                    ctx.metrics.clone(),
                );
                let route = poller::event_loop(ctx.clone(), pollers.clone(), rx);
                async move {
                    // Either half ending ends both; the supervisor restarts them.
                    futures::future::select(Box::pin(consume), Box::pin(route)).await;
                }
            }
        });
    }
    tokio::spawn(async move {
        while !(synced.iter().all(|s| s.load(Ordering::Relaxed)) && workloads.is_ready()) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        info!("caches synced");
        readiness.set_ready();
    });
    let controllers = future::join_all(runs);
    match elector {
        None => {
            controllers.await;
        }
        Some(elector) => {
            tokio::select! {
                _ = controllers => {}
                _ = elector.hold() => return Err("lost the leader lease; exiting so a standby can take over".into()),
            }
            elector.release().await;
        }
    }
    info!("controller stopped");
    Ok(())
}

/// Runs a background task for the life of the process, restarting it with
/// backoff whenever it ends or panics (counted in
/// `rotor_task_restarts_total{task}`), so it never dies silently.
fn supervise<F, Fut>(task: &'static str, metrics: &Arc<Metrics>, mut make: F)
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let metrics = metrics.clone();
    tokio::spawn(async move {
        let mut delay = Duration::from_secs(1);
        loop {
            let started = Instant::now();
            let outcome = tokio::spawn(make()).await;
            metrics.task_restarted(task);
            warn!(task, panicked = outcome.is_err(), retry_in = ?delay, "background task stopped; restarting");
            if started.elapsed() > Duration::from_secs(300) {
                delay = Duration::from_secs(1);
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(60));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(1), Duration::from_secs(2));
        assert_eq!(backoff(2), Duration::from_secs(4));
        assert_eq!(backoff(5), Duration::from_secs(32));
        assert_eq!(backoff(40), BACKOFF_MAX);
    }

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

    #[test]
    fn request_tokens_are_stable_uuids() {
        let mut rs = RotatedSecret::new("a", serde_yaml::from_str("secretsManager: {name: x}").unwrap());
        rs.metadata.uid = Some("1234".into());
        let t = request_token(&rs, "create");
        assert_eq!(t.len(), 36);
        assert_eq!(t, request_token(&rs, "create"));
        assert_ne!(t, request_token(&rs, "rotate-now:x"));
    }
}
