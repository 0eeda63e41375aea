//! What rotor remembers between reconciles, and the scheduling decisions
//! made from it. One owner, one lock: an entry per object (failures,
//! convergence, watching, detection, last written status, a reported failed
//! rotation) and one per secret ARN (its metadata as last seen, and since
//! when a rotation has been pending). Entries are pruned on every sweep
//! against the object stores and the listing, so the process does not grow
//! with objects and secrets that are gone.
//!
//! Every decision takes the time explicitly (`now`, and `wall` where
//! `nextRotationDate` is compared), so it is tested with no clock.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;

use super::provision::stuck_after;
use crate::api::conditions;
use crate::api::{RotatedSecret, RotatedSecretStatus, duration};
use crate::aws::arn::Arn;
use crate::aws::secrets::SecretMeta;
use crate::backoff::Backoff;

const DEFAULT_REFRESH: Duration = Duration::from_secs(60);
/// A convergence asked for by drift is not repeated sooner than this, so a
/// setting AWS reports differently from how it was set cannot loop.
const DRIFT_QUIET: Duration = Duration::from_secs(60);
pub const RETRY: Backoff = Backoff {
    base: Duration::from_secs(2),
    max: Duration::from_secs(300),
};

/// The operator settings the decisions depend on.
#[derive(Clone, Debug)]
pub struct Policy {
    pub min_refresh: Duration,
    pub drift_interval: Duration,
    pub default_region: String,
}

impl Policy {
    pub fn refresh_interval(&self, rs: &RotatedSecret) -> Duration {
        duration::parse(&rs.spec.refresh_interval)
            .unwrap_or(DEFAULT_REFRESH)
            .max(self.min_refresh)
    }

    /// How long a rotation of this object may take: its window, else a day.
    pub fn rotation_window(&self, rs: &RotatedSecret) -> Duration {
        stuck_after(rs.spec.rotation.as_ref().and_then(|r| r.window.as_deref()))
    }

    pub fn region_of<'a>(&'a self, rs: &'a RotatedSecret) -> &'a str {
        rs.spec
            .secrets_manager
            .region
            .as_deref()
            .unwrap_or(&self.default_region)
    }

    /// Time until the object's next rotation window opens (zero while it is
    /// open), if one is scheduled. The window opens one refresh interval
    /// before `nextRotationDate` and closes when a rotation of that length
    /// would be called stuck: a date that passed without a rotation (a
    /// failing Lambda, a cancelled schedule) does not keep the object on
    /// DescribeSecret forever.
    pub fn until_rotation_window(&self, rs: &RotatedSecret, wall: Timestamp) -> Option<Duration> {
        let next: Timestamp = rs.status.as_ref()?.next_rotation_date.as_deref()?.parse().ok()?;
        let now = wall.as_second();
        let opens = next.as_second() - self.refresh_interval(rs).as_secs() as i64;
        let closes = next.as_second() + self.rotation_window(rs).as_secs() as i64;
        if now > closes {
            return None;
        }
        Some(Duration::from_secs(opens.saturating_sub(now).max(0) as u64))
    }
}

/// Whether the object's AWS settings were brought in line, and when.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Convergence {
    /// Converge on the next reconcile (drift, a vanished secret).
    Requested,
    /// Converged at this generation and time.
    Done { generation: Option<i64>, at: Instant },
}

/// What rotor reports about an object's last rotation (from events).
#[derive(Clone, Debug, PartialEq)]
pub enum RotationReport {
    /// Failed at this time, when the Secret held this version.
    Failed(Timestamp, Option<String>),
    /// A failure was reported and is over: the condition must be redone.
    Cleared,
}

#[derive(Clone, Debug, Default)]
struct ObjectMemory {
    /// The object this entry is about: a new object under the same name
    /// starts afresh.
    uid: Option<String>,
    /// Consecutive transient failures, for backoff.
    failures: u32,
    convergence: Option<Convergence>,
    /// Checked with DescribeSecret on every refresh until the Secret holds
    /// another version than `synced`, or until `until` (an event or
    /// rotate-now whose rotation never comes must not pin it forever).
    watch: Option<(Option<String>, Instant)>,
    /// A version other than the synced one, and when it was first noticed.
    detected: Option<(String, Instant)>,
    /// The status rotor last wrote, until the cache shows it (only the
    /// leader writes, so this is never older than the cache). Boxed: most
    /// entries have none, and the map reserves room for each inline.
    status: Option<Box<RotatedSecretStatus>>,
    rotation_report: Option<RotationReport>,
    /// When the sweep is to trigger the next check (`check_by_sweep`).
    due: Option<Instant>,
    /// What of the object a change of triggers a reconcile (`wants_reconcile`).
    seen: Option<u64>,
}

/// One secret as last seen.
#[derive(Clone, Debug)]
pub struct Observed {
    /// Boxed: the map reserves room for each entry inline.
    pub meta: Box<SecretMeta>,
    /// When the call that saw it was sent: AWS's answer describes the secret
    /// as it was at some point after this, so observations are ordered by it.
    pub sent: Instant,
    /// When the answer arrived (how fresh the view is).
    pub at: Instant,
    pub wall: Timestamp,
    /// Since when `meta.pending_version` has been pending.
    pending_since: Option<Instant>,
}

#[derive(Debug, Default)]
struct SweepHealth {
    every: Duration,
    /// When each region was last listed. Per region: one object naming a
    /// region that fails (a typo, a disabled opt-in region) must not move
    /// every other object to DescribeSecret.
    regions: HashMap<String, Instant>,
}

#[derive(Default)]
struct State {
    objects: HashMap<ObjectRef<RotatedSecret>, ObjectMemory>,
    secrets: HashMap<String, Observed>,
    /// Owner tag value → ARN, for objects that have not pinned theirs yet.
    owners: HashMap<String, String>,
    sweep: SweepHealth,
}

/// The object's key here: its namespace and name. `ObjectRef::from` also
/// copies the uid and resourceVersion, which lookups ignore; the entry
/// keeps the uid it needs.
fn key(rs: &RotatedSecret) -> ObjectRef<RotatedSecret> {
    let mut key = ObjectRef::new(rs.metadata.name.as_deref().unwrap_or_default());
    key.namespace.clone_from(&rs.metadata.namespace);
    key
}

impl State {
    /// The object's entry, reset when the uid says it is another object.
    fn object(&mut self, rs: &RotatedSecret) -> &mut ObjectMemory {
        let uid = rs.uid();
        let entry = self.objects.entry(key(rs)).or_default();
        if entry.uid != uid {
            *entry = ObjectMemory {
                uid,
                ..ObjectMemory::default()
            };
        }
        entry
    }

    fn get_mut(&mut self, rs: &RotatedSecret) -> Option<&mut ObjectMemory> {
        self.objects.get_mut(&key(rs)).filter(|m| m.uid == rs.uid())
    }

    fn get(&self, rs: &RotatedSecret) -> Option<&ObjectMemory> {
        self.objects.get(&key(rs)).filter(|m| m.uid == rs.uid())
    }
}

/// The object's entry, without the written status once `rs` shows it.
fn forget_shown_status<'a>(state: &'a mut State, rs: &RotatedSecret) -> Option<&'a mut ObjectMemory> {
    let entry = state.get_mut(rs)?;
    if entry.status.as_deref() == rs.status.as_ref() {
        entry.status = None;
    }
    Some(entry)
}

pub struct Memory {
    pub policy: Policy,
    state: Mutex<State>,
}

impl Memory {
    pub fn new(policy: Policy) -> Self {
        let state = State {
            sweep: SweepHealth {
                every: DEFAULT_REFRESH,
                regions: HashMap::new(),
            },
            ..State::default()
        };
        Self {
            policy,
            state: Mutex::new(state),
        }
    }

    /// A panic elsewhere while the lock was held leaves plain data behind;
    /// keep going with it rather than take every object down.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    // --- convergence ---------------------------------------------------

    /// Whether the next reconcile must converge AWS settings: on a spec
    /// change, a request, or every drift interval. An object found Ready at
    /// its generation (converged by a previous process) is not redone now:
    /// its first drift check is spread over the interval by `spread` (0..1)
    /// so a restart does not describe every object at once.
    pub fn needs_converge(&self, rs: &RotatedSecret, now: Instant, spread: f64) -> bool {
        let drift = self.policy.drift_interval;
        let mut state = self.lock();
        let entry = state.object(rs);
        if entry.convergence.is_none() && ready_at_generation(rs) {
            let at = now
                .checked_sub(drift.mul_f64(spread.clamp(0.0, 1.0)))
                .unwrap_or(now);
            entry.convergence = Some(Convergence::Done {
                generation: rs.metadata.generation,
                at,
            });
        }
        match entry.convergence {
            Some(Convergence::Done { generation, at }) => {
                generation != rs.metadata.generation || now.saturating_duration_since(at) >= drift
            }
            _ => true,
        }
    }

    pub fn mark_converged(&self, rs: &RotatedSecret, now: Instant) {
        self.lock().object(rs).convergence = Some(Convergence::Done {
            generation: rs.metadata.generation,
            at: now,
        });
    }

    /// Asks for a convergence on the next reconcile (drift seen by the
    /// sweep), unless one ran within `DRIFT_QUIET` and this is not `urgent`
    /// (a secret scheduled for deletion or gone is looked at every sweep).
    pub fn request_converge(&self, rs: &RotatedSecret, urgent: bool, now: Instant) -> bool {
        let mut state = self.lock();
        let entry = state.object(rs);
        if let Some(Convergence::Done { at, .. }) = entry.convergence
            && now.saturating_duration_since(at) < DRIFT_QUIET
            && !urgent
        {
            return false;
        }
        entry.convergence = Some(Convergence::Requested);
        true
    }

    // --- failures --------------------------------------------------------

    /// Counts a transient failure; returns the consecutive count.
    pub fn failed(&self, rs: &RotatedSecret) -> u32 {
        let mut state = self.lock();
        let entry = state.object(rs);
        entry.failures = entry.failures.saturating_add(1);
        entry.failures
    }

    pub fn succeeded(&self, rs: &RotatedSecret) {
        if let Some(entry) = self.lock().objects.get_mut(&key(rs)) {
            entry.failures = 0;
        }
    }

    /// When to retry after the `attempts`-th transient failure: backoff,
    /// never longer than five refresh intervals.
    pub fn retry_in(&self, rs: &RotatedSecret, attempts: u32) -> Duration {
        RETRY.delay(attempts, self.policy.refresh_interval(rs).max(RETRY.base) * 5)
    }

    // --- status ----------------------------------------------------------

    /// The status rotor wrote last, while the cached object does not show
    /// it yet.
    pub fn last_status(&self, rs: &RotatedSecret) -> Option<RotatedSecretStatus> {
        let mut state = self.lock();
        forget_shown_status(&mut state, rs)?.status.as_deref().cloned()
    }

    /// Whether the watch shows something a reconcile must act on: a new
    /// object, or a change of its spec (generation), rotor's annotations
    /// (the cache keeps no others) or finalizers; not a status-only update
    /// (rotor's own writes). kube-runtime's `predicate_filter` does the same
    /// with a map of its own, about 0.3 KB an object.
    pub fn wants_reconcile(&self, rs: &RotatedSecret) -> bool {
        let mut hasher = DefaultHasher::new();
        let meta = &rs.metadata;
        (meta.generation, &meta.annotations, &meta.finalizers).hash(&mut hasher);
        let seen = Some(hasher.finish());
        std::mem::replace(&mut self.lock().object(rs).seen, seen) != seen
    }

    /// The watch delivered `rs`: a written status it shows is forgotten, so
    /// the copy lives only while the watch lags (at 10,000 objects the
    /// copies were 10 MB).
    pub fn watched(&self, rs: &RotatedSecret) {
        forget_shown_status(&mut self.lock(), rs);
    }

    pub fn remember_status(&self, rs: &RotatedSecret, status: &RotatedSecretStatus) {
        if rs.uid().is_some() {
            self.lock().object(rs).status = Some(Box::new(status.clone()));
        }
    }

    // --- what AWS showed ---------------------------------------------------

    /// Records an observation sent at `sent`, unless a newer one is there.
    /// A ListSecrets page is sent before, and may land after, a DescribeSecret
    /// that follows one of rotor's own writes; the older view must not win,
    /// or status shows the state from before that write.
    pub fn record(&self, meta: &SecretMeta, sent: Instant, now: Instant) -> bool {
        let mut state = self.lock();
        let known = state.secrets.get(&meta.arn);
        if known.is_some_and(|k| k.sent > sent) {
            return false;
        }
        let pending_since = match (known, &meta.pending_version) {
            (_, None) => None,
            (Some(k), Some(v)) if k.meta.pending_version.as_ref() == Some(v) => k.pending_since.or(Some(now)),
            (_, Some(_)) => Some(now),
        };
        if let Some(owner) = meta.owner()
            && state.owners.get(owner) != Some(&meta.arn)
        {
            state.owners.insert(owner.to_owned(), meta.arn.clone());
        }
        // Most sweeps show a secret unchanged: keep the copy already held
        // rather than churn the heap with a new one every interval.
        let wall = Timestamp::now();
        if let Some(k) = state.secrets.get_mut(&meta.arn)
            && *k.meta == *meta
        {
            (k.sent, k.at, k.wall, k.pending_since) = (sent, now, wall, pending_since);
            return true;
        }
        let observed = Observed {
            meta: Box::new(meta.clone()),
            sent,
            at: now,
            wall,
            pending_since,
        };
        state.secrets.insert(meta.arn.clone(), observed);
        true
    }

    /// The secret a fresh listing shows under `owner`, for an object that
    /// has not pinned its ARN yet: its first sync needs no DescribeSecret.
    /// Only when the listing can say everything the first convergence needs
    /// (not replicas: ListSecrets does not show them) and the secret is
    /// live, named and placed as the spec says.
    pub fn listed_for(&self, rs: &RotatedSecret, owner: &str, now: Instant) -> Option<SecretMeta> {
        let sm = &rs.spec.secrets_manager;
        let region = self.policy.region_of(rs);
        let status = rs.status.as_ref();
        if !sm.replica_regions.is_empty()
            || status.is_some_and(|s| s.arn.is_some() || !s.managed_replicas.is_empty())
            || !self.sweep_healthy(region, now)
        {
            return None;
        }
        let state = self.lock();
        let seen = state.secrets.get(state.owners.get(owner)?)?;
        let fresh = now.saturating_duration_since(seen.at) <= state.sweep.every * 2;
        let placed = Arn::secret(&seen.meta.arn).is_some_and(|a| a.region == region);
        (fresh
            && placed
            && !seen.meta.deleted
            && seen.meta.name == sm.name
            && seen.meta.owner() == Some(owner))
        .then(|| (*seen.meta).clone())
    }

    /// Records what a DescribeSecret just showed. Sent a little before now:
    /// it still outranks any listing sent before the describe.
    pub fn described(&self, meta: &SecretMeta, now: Instant) {
        self.record(meta, now, now);
    }

    pub fn observed(&self, arn: &str) -> Option<Observed> {
        self.lock().secrets.get(arn).cloned()
    }

    /// How long ago AWS was last seen for this secret.
    pub fn check_age(&self, arn: &str, now: Instant) -> Duration {
        self.lock()
            .secrets
            .get(arn)
            .map_or(Duration::MAX, |o| now.saturating_duration_since(o.at))
    }

    /// How long the current AWSPENDING version has been seen pending.
    pub fn pending_for(&self, arn: &str, now: Instant) -> Duration {
        self.lock()
            .secrets
            .get(arn)
            .and_then(|o| o.pending_since)
            .map_or(Duration::ZERO, |since| now.saturating_duration_since(since))
    }

    // --- the sweep -----------------------------------------------------------

    pub fn set_poll_interval(&self, every: Duration) {
        self.lock().sweep.every = every;
    }

    pub fn swept(&self, region: &str, now: Instant) {
        self.lock().sweep.regions.insert(region.to_owned(), now);
    }

    /// Whether the sweep listed this region recently enough to be relied on.
    pub fn sweep_healthy(&self, region: &str, now: Instant) -> bool {
        let state = self.lock();
        let every = state.sweep.every;
        state
            .sweep
            .regions
            .get(region)
            .is_some_and(|t| now.saturating_duration_since(*t) <= every * 2 + Duration::from_secs(5))
    }

    /// Forgets what is gone: objects no longer in any store (or replaced:
    /// another uid), sweep health of regions no object names, and secrets of
    /// a listed region that a listing sent after their last observation did
    /// not show (`listed`: region → the listing's send time and ARNs).
    pub fn prune(
        &self,
        live: impl Fn(&ObjectRef<RotatedSecret>, Option<&str>) -> bool,
        regions: &BTreeSet<String>,
        listed: &HashMap<String, (Instant, HashSet<String>)>,
    ) {
        let mut state = self.lock();
        state.objects.retain(|key, m| live(key, m.uid.as_deref()));
        state.sweep.regions.retain(|r, _| regions.contains(r));
        state.secrets.retain(|arn, o| {
            let Some(region) = Arn::parse(arn).map(|a| a.region) else {
                return false;
            };
            match listed.get(region) {
                Some((sent, arns)) => o.sent > *sent || arns.contains(arn),
                None => true,
            }
        });
        let State { owners, secrets, .. } = &mut *state;
        owners.retain(|_, arn| secrets.contains_key(arn));
    }

    /// Forgets the object (its deletion is done). What was seen of its
    /// secret is replaced by a blank sent now: rotor just released or
    /// deleted it, so no listing sent before (one may be in flight) may make
    /// it look owned to an object re-created under the same name.
    pub fn forget(&self, rs: &RotatedSecret, now: Instant) {
        let mut state = self.lock();
        state.objects.remove(&key(rs));
        if let Some(arn) = rs.status.as_ref().and_then(|s| s.arn.clone()) {
            let blank = Observed {
                meta: Box::new(SecretMeta {
                    arn: arn.clone(),
                    ..SecretMeta::default()
                }),
                sent: now,
                at: now,
                wall: Timestamp::now(),
                pending_since: None,
            };
            state.secrets.insert(arn, blank);
        }
    }

    /// Entries held: objects and secrets.
    pub fn len(&self) -> (usize, usize) {
        let state = self.lock();
        (state.objects.len(), state.secrets.len())
    }

    // --- new versions ----------------------------------------------------

    /// Records when a version other than the synced one was first noticed;
    /// true the first time (for the detection metric).
    pub fn note_new_version(&self, rs: &RotatedSecret, version: Option<&str>, now: Instant) -> bool {
        let synced = rs.status.as_ref().and_then(|s| s.synced_version_id.as_deref());
        let (Some(version), Some(synced)) = (version, synced) else {
            return false;
        };
        if version == synced {
            return false;
        }
        let mut state = self.lock();
        let entry = state.object(rs);
        if entry.detected.as_ref().is_some_and(|(v, _)| v == version) {
            return false;
        }
        entry.detected = Some((version.to_owned(), now));
        true
    }

    pub fn detected_at(&self, rs: &RotatedSecret, version: &str) -> Option<Instant> {
        let state = self.lock();
        let (v, at) = state.get(rs)?.detected.as_ref()?;
        (v == version).then_some(*at)
    }

    pub fn clear_detected(&self, rs: &RotatedSecret) {
        if let Some(entry) = self.lock().objects.get_mut(&key(rs)) {
            entry.detected = None;
        }
    }

    // --- watching --------------------------------------------------------

    /// Check this object with DescribeSecret until its version moves, for at
    /// most its rotation window.
    pub fn watch(&self, rs: &RotatedSecret, now: Instant) {
        let synced = rs.status.as_ref().and_then(|s| s.synced_version_id.clone());
        let until = now + self.policy.rotation_window(rs);
        self.lock().object(rs).watch = Some((synced, until));
    }

    /// Stops watching once the Secret holds a version other than the one
    /// it held when watching started.
    pub fn unwatch_if_moved(&self, rs: &RotatedSecret, synced: Option<&str>) {
        let mut state = self.lock();
        if let Some(entry) = state.objects.get_mut(&key(rs))
            && entry
                .watch
                .as_ref()
                .is_some_and(|(before, _)| before.as_deref() != synced)
        {
            entry.watch = None;
        }
    }

    /// Watched (a rotation asked for or announced), or in its rotation
    /// window: ListSecrets may lag here, so the object describes itself.
    pub fn is_watching(&self, rs: &RotatedSecret, now: Instant, wall: Timestamp) -> bool {
        {
            let mut state = self.lock();
            if let Some(entry) = state.objects.get_mut(&key(rs)) {
                match entry.watch {
                    Some((_, until)) if until > now => return true,
                    Some(_) => entry.watch = None,
                    None => {}
                }
            }
        }
        self.policy
            .until_rotation_window(rs, wall)
            .is_some_and(|d| d.is_zero())
    }

    // --- rotation events -------------------------------------------------

    /// Records what a rotation event says about the object's rotation.
    pub fn rotation_event(&self, rs: &RotatedSecret, event: &str, wall: Timestamp) {
        let mut state = self.lock();
        let entry = state.object(rs);
        match event {
            "RotationFailed" => {
                let synced = rs.status.as_ref().and_then(|s| s.synced_version_id.clone());
                entry.rotation_report = Some(RotationReport::Failed(wall, synced));
            }
            "RotationSucceeded" if entry.rotation_report.is_some() => {
                entry.rotation_report = Some(RotationReport::Cleared);
            }
            _ => {}
        }
    }

    /// The failed rotation to report, if it is still the latest news; a
    /// version that moved since (a later rotation succeeded) clears it.
    /// `Cleared` is returned once.
    pub fn rotation_report(&self, rs: &RotatedSecret, synced: Option<&str>) -> Option<RotationReport> {
        let mut state = self.lock();
        let entry = state.objects.get_mut(&key(rs))?;
        match entry.rotation_report.as_ref()? {
            RotationReport::Failed(_, before) if before.as_deref() == synced => entry.rotation_report.clone(),
            _ => {
                entry.rotation_report = None;
                Some(RotationReport::Cleared)
            }
        }
    }

    // --- scheduling ------------------------------------------------------

    /// What the sweep says about this object's secret, when fresh and
    /// trustworthy; `None` means: ask AWS with DescribeSecret.
    pub fn polled(
        &self,
        rs: &RotatedSecret,
        owner: &str,
        now: Instant,
        wall: Timestamp,
    ) -> Option<SecretMeta> {
        let arn = rs.status.as_ref()?.arn.as_deref()?;
        if self.is_watching(rs, now, wall) || !self.sweep_healthy(self.policy.region_of(rs), now) {
            return None;
        }
        let state = self.lock();
        let seen = state.secrets.get(arn)?;
        let fresh = now.saturating_duration_since(seen.at) <= state.sweep.every * 2;
        (fresh && seen.meta.owner() == Some(owner)).then(|| (*seen.meta).clone())
    }

    /// Whether the sweep, rather than a timer of its own, is to trigger
    /// the object's next check, `after` from `now`: checks further off than
    /// a poll interval (drift, the next rotation window) can be a sweep
    /// late. At 10,000 objects a timer each in kube-runtime's scheduler is
    /// about 7 MB; here it is an `Instant` in an entry the object has anyway.
    pub fn check_by_sweep(&self, rs: &RotatedSecret, now: Instant, after: Duration) -> bool {
        let mut state = self.lock();
        let by_sweep = after > state.sweep.every;
        state.object(rs).due = by_sweep.then(|| now + after);
        by_sweep
    }

    /// Whether the object's next check, left to the sweep, has come.
    pub fn is_due(&self, rs: &RotatedSecret, now: Instant) -> bool {
        self.lock()
            .get_mut(rs)
            .and_then(|m| m.due)
            .is_some_and(|at| at <= now)
    }

    /// A reconcile runs: whatever it returns decides the next check.
    pub fn checking(&self, rs: &RotatedSecret) {
        if let Some(m) = self.lock().get_mut(rs) {
            m.due = None;
        }
    }

    /// When to look at an object again when nothing triggers it: at the
    /// refresh interval while watching or while the sweep is unhealthy,
    /// otherwise at the next rotation window or the drift interval.
    pub fn next_check(&self, rs: &RotatedSecret, now: Instant, wall: Timestamp) -> Duration {
        let refresh = self.policy.refresh_interval(rs);
        if self.is_watching(rs, now, wall) || !self.sweep_healthy(self.policy.region_of(rs), now) {
            return refresh;
        }
        let window = self
            .policy
            .until_rotation_window(rs, wall)
            .unwrap_or(Duration::MAX);
        window.min(self.policy.drift_interval).max(refresh)
    }
}

/// Ready at the current generation: a previous process converged it.
fn ready_at_generation(rs: &RotatedSecret) -> bool {
    rs.status.as_ref().is_some_and(|s| {
        s.observed_generation == rs.metadata.generation
            && conditions::find(&s.conditions, conditions::READY).is_some_and(|c| c.is_true())
    })
}

#[cfg(test)]
mod tests;
