//! Noticing new AWSCURRENT versions cheaply.
//!
//! The sweep lists every secret this cluster owns with ListSecrets (100 per
//! call, each entry with its version stages) once per poll interval, its
//! pages spread over the interval (`Pace`), and triggers a reconcile, page
//! by page, only for objects whose AWSCURRENT differs from what their
//! Secret holds: ceil(N/100) calls per interval, whatever N. ListSecrets
//! is eventually consistent, so it is the safety net; objects in their
//! rotation window, or waiting for a rotation rotor asked for, are checked
//! with DescribeSecret by their own reconciles (see `Context::polled`).
//! Optional SQS events trigger the named object at once.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::channel::mpsc::Sender;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::mpsc::Receiver;
use tracing::{debug, info, warn};

use super::provision::stuck_after;
use super::{Context, drift};
use crate::api::RotatedSecret;
use crate::aws::events::SecretChange;
use crate::aws::secrets::SecretMeta;

const IDLE_INTERVAL: Duration = Duration::from_secs(60);
/// How long the first sweep waits for the object stores to list.
const FIRST_LIST_WAIT: Duration = Duration::from_secs(30);

/// One watched scope: its object cache and its controller's trigger.
#[derive(Clone)]
pub struct Scope {
    pub store: Store<RotatedSecret>,
    pub trigger: Sender<ObjectRef<RotatedSecret>>,
    /// Set once the store has listed every object.
    pub listed: Arc<AtomicBool>,
}

impl Scope {
    fn send(&mut self, rs: &RotatedSecret) {
        // A full channel means a reconcile is already queued for plenty of
        // objects; the next sweep retries whatever is still behind.
        if let Err(e) = self.trigger.try_send(ObjectRef::from(rs)) {
            debug!(error = %e, "trigger dropped");
        }
    }
}

/// The poll interval: the smallest refresh interval among the objects,
/// never below the operator's floor.
fn interval(ctx: &Context, scopes: &[Scope]) -> Duration {
    scopes
        .iter()
        .flat_map(|s| s.store.state())
        .map(|rs| ctx.memory.policy.refresh_interval(&rs))
        .min()
        .unwrap_or(IDLE_INTERVAL)
        .max(ctx.memory.policy.min_refresh)
}

pub async fn sweep_loop(ctx: Arc<Context>, mut scopes: Vec<Scope>) {
    // No `store.wait_until_ready()` here. kube-runtime 5's store readiness
    // (a futures oneshot behind `DelayedInit`) keeps only the waker of the
    // last task that polled it, and the controller's own applier waits on
    // this same store: with a second waiter, one of them is never woken.
    // Seen on the test bed: this loop never ran a single sweep, so every
    // object fell back to DescribeSecret each refresh. The sweep does not
    // need a listed store anyway: it records what AWS says for every owned
    // secret, and an object missing from the store now gets its own first
    // reconcile when the store lists it. The first sweep does wait (a
    // little, on the flag the stream sets) for the stores: with the objects
    // known, it queues batched value reads for all that are behind.
    let started = Instant::now();
    while !scopes.iter().all(|s| s.listed.load(Ordering::Relaxed)) && started.elapsed() < FIRST_LIST_WAIT {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut last: Option<Instant> = None;
    let mut pages = 0;
    loop {
        let every = interval(&ctx, &scopes);
        ctx.memory.set_poll_interval(every);
        if last.is_none_or(|t| t.elapsed() >= every) {
            let start = Instant::now();
            last = Some(start);
            let mut pace = Pace::new(start, every, pages);
            let ok = sweep(&ctx, &mut scopes, &mut pace).await;
            pages = pace.listed;
            ctx.swept.send_replace(true);
            ctx.metrics
                .sweep(ok, start.elapsed(), oldest_check(&ctx, &scopes));
            for scope in scopes.iter_mut() {
                trigger_due(&ctx, scope);
            }
            // Once an interval, after the sweep's pages are dropped.
            crate::heap::release_free();
        }
        // Recompute the interval at least every `min_refresh`: an object
        // created with a shorter refreshInterval than the current interval
        // (or the first one, after an idle 60 s start) must not wait for the
        // long sleep to end before its rotations are noticed.
        let due = every.saturating_sub(last.map_or(Duration::ZERO, |t| t.elapsed()));
        tokio::time::sleep(
            due.min(ctx.memory.policy.min_refresh)
                .max(Duration::from_millis(100)),
        )
        .await;
    }
}

/// Spreads a sweep's pages over most of the poll interval, in the same
/// rhythm every sweep, so that each page comes round one interval after its
/// last listing however fast AWS answers. Listed in a burst, a rotation
/// waited the interval plus however much longer this sweep took than the
/// last (4 s at 10,000 secrets on the test bed), and AWS got every page at
/// once.
struct Pace {
    start: Instant,
    step: Duration,
    /// Pages the last sweep listed: more than that are listed at once.
    expected: u32,
    listed: u32,
}

impl Pace {
    /// The share of the interval a sweep's pages are spread over; the rest
    /// is room for slower answers.
    const SHARE: f64 = 0.8;

    fn new(start: Instant, every: Duration, expected: u32) -> Pace {
        Pace {
            start,
            step: every.mul_f64(Self::SHARE) / expected.max(1),
            expected,
            listed: 0,
        }
    }

    /// A page was listed: how long to wait before asking for the next one.
    /// Not `paced` (a first sweep, or one after a failure): at once.
    fn next(&mut self, paced: bool, now: Instant) -> Duration {
        self.listed += 1;
        if !paced || self.listed >= self.expected {
            return Duration::ZERO;
        }
        (self.start + self.step * self.listed).saturating_duration_since(now)
    }
}

/// One sweep over every region in use. Returns whether all regions answered.
async fn sweep(ctx: &Context, scopes: &mut [Scope], pace: &mut Pace) -> bool {
    let mut regions = BTreeSet::from([ctx.aws.default_region().to_owned()]);
    for scope in scopes.iter() {
        for rs in scope.store.state() {
            if let Some(r) = &rs.spec.secrets_manager.region {
                regions.insert(r.clone());
            }
        }
    }
    let prefix = format!("{}/", ctx.cluster_name);
    let mut all_ok = true;
    let mut listings = HashMap::new();
    for region in &regions {
        let rc = ctx.aws.region(Some(region));
        let sent = Instant::now();
        // A region that the last sweeps listed: a page's new AWSCURRENT is
        // acted on at once, not after the last page (at 10,000 secrets the
        // listing takes seconds). Otherwise (the first sweep, or after a
        // failed one) the reconciles it would trigger cannot rely on a
        // listing yet, so its pages wait for the whole of it.
        let stream = ctx.memory.sweep_healthy(region, sent);
        let mut arns = HashSet::new();
        let mut held = Vec::new();
        let listed = ctx
            .aws
            .list_owned(&rc, Some(&prefix), |page| {
                arns.extend(page.iter().map(|e| e.arn.clone()));
                if stream {
                    act(ctx, scopes, &prefix, region, sent, page);
                } else {
                    held.extend(page);
                }
                pace.next(stream, Instant::now())
            })
            .await;
        if let Err(e) = listed {
            warn!(region, error = %e, "version sweep failed; objects fall back to DescribeSecret");
            all_ok = false;
            for scope in scopes.iter_mut() {
                fall_back(ctx, scope, region);
            }
            continue;
        }
        ctx.memory.swept(region, Instant::now());
        for scope in scopes.iter_mut() {
            converge_vanished(ctx, scope, region, &arns);
        }
        act(ctx, scopes, &prefix, region, sent, held);
        listings.insert(region.clone(), (sent, arns));
    }
    let live = |key: &ObjectRef<RotatedSecret>, uid: Option<&str>| {
        scopes.iter().any(|s| {
            s.store
                .get(key)
                .is_some_and(|rs| rs.metadata.uid.as_deref() == uid)
        })
    };
    ctx.memory.prune(live, &regions, &listings);
    ctx.metrics.retain_ready(|namespace, name| {
        let key = ObjectRef::new(name).within(namespace);
        scopes.iter().any(|s| s.store.get(&key).is_some())
    });
    all_ok
}

/// Records a part of `region`'s listing (sent at `sent`) and triggers the
/// objects it concerns. Values several objects are behind on are read in
/// batches; a single one (an ordinary rotation) is the reconcile's own
/// GetSecretValue.
fn act(
    ctx: &Context,
    scopes: &mut [Scope],
    prefix: &str,
    region: &str,
    sent: Instant,
    listed: Vec<SecretMeta>,
) {
    let mut behind = Vec::new();
    for entry in listed {
        // A false `record`: rotor described this secret after the
        // listing was sent, and the listing has nothing newer to say.
        if ctx.memory.record(&entry, sent, Instant::now()) {
            route(ctx, scopes, prefix, &entry, &mut behind);
        }
    }
    if behind.len() > 1 {
        ctx.values.prefetch(region, behind);
    }
}

/// The sweep of `region` failed: objects that relied on it (requeued at
/// their drift interval or rotation window) and were not checked within
/// their refresh interval describe themselves now, so the mirror keeps
/// following AWSCURRENT while ListSecrets fails.
fn fall_back(ctx: &Context, scope: &mut Scope, region: &str) {
    let now = Instant::now();
    let due: Vec<_> = scope
        .store
        .state()
        .into_iter()
        .filter(|rs| {
            let arn = rs.status.as_ref().and_then(|s| s.arn.as_deref());
            ctx.memory.policy.region_of(rs) == region
                && rs.metadata.deletion_timestamp.is_none()
                && arn.is_some_and(|arn| {
                    ctx.memory.check_age(arn, now) >= ctx.memory.policy.refresh_interval(rs)
                })
        })
        .collect();
    for rs in due {
        scope.send(&rs);
    }
}

/// Objects whose secret is gone from the listing (deleted outside rotor)
/// describe themselves and report it.
fn converge_vanished(ctx: &Context, scope: &mut Scope, region: &str, listed: &HashSet<String>) {
    let vanished: Vec<_> = scope
        .store
        .state()
        .into_iter()
        .filter(|rs| {
            ctx.memory.policy.region_of(rs) == region
                && rs.metadata.deletion_timestamp.is_none()
                && rs
                    .status
                    .as_ref()
                    .and_then(|s| s.arn.as_ref())
                    .is_some_and(|arn| !listed.contains(arn))
        })
        .collect();
    for rs in vanished {
        if ctx.memory.request_converge(&rs, true, Instant::now()) {
            scope.send(&rs);
        }
    }
}

/// Triggers the object that owns a listed secret when something needs it:
/// a rotation pending past its window, drift, or a new AWSCURRENT. Secrets
/// whose value an object will read (a new AWSCURRENT, or an object that has
/// not synced yet) go to `behind`, to be read in batches.
fn route(ctx: &Context, scopes: &mut [Scope], prefix: &str, entry: &SecretMeta, behind: &mut Vec<String>) {
    let Some((ns, name)) = entry
        .owner()
        .and_then(|o| o.strip_prefix(prefix)?.split_once('/'))
    else {
        return;
    };
    let key = ObjectRef::new(name).within(ns);
    let now = Instant::now();
    for scope in scopes.iter_mut() {
        let Some(rs) = scope.store.get(&key) else { continue };
        let status = rs.status.as_ref();
        let pinned = status.and_then(|s| s.arn.as_deref());
        if pinned.is_none() && rs.spec.secrets_manager.name == entry.name && entry.current_version.is_some() {
            // Not synced yet (new, or its status was lost): its first
            // reconcile reads this value; the controller queues it anyway.
            behind.push(entry.arn.clone());
            continue;
        }
        if pinned != Some(entry.arn.as_str()) {
            continue;
        }
        // A rotation still pending after its window: the convergence
        // checks the version's age and reports RotationStuck.
        if let Some(rotation) = &rs.spec.rotation
            && ctx.memory.pending_for(&entry.arn, now) > stuck_after(rotation.window.as_deref())
            && ctx.memory.request_converge(&rs, false, now)
        {
            info!(namespace = rs.namespace(), name = %rs.name_any(), "rotation pending past its window");
            scope.send(&rs);
            continue;
        }
        if status.and_then(|s| s.observed_generation) == rs.metadata.generation
            && let Some(what) = drift::drifted(&rs, entry)
            && ctx.memory.request_converge(&rs, entry.deleted, now)
        {
            info!(namespace = rs.namespace(), name = %rs.name_any(), what, "AWS drifted from the spec");
            scope.send(&rs);
            continue;
        }
        let synced = status.and_then(|s| s.synced_version_id.as_deref());
        if entry.current_version.is_some() && entry.current_version.as_deref() != synced {
            if ctx
                .memory
                .note_new_version(&rs, entry.current_version.as_deref(), now)
            {
                ctx.metrics.rotation_observed("sweep");
            }
            scope.send(&rs);
        }
    }
}

/// Objects whose next check has come (`Memory::check_by_sweep`): drift
/// checks and rotation windows, a sweep late at most. Whether or not the
/// listing worked: these checks describe for themselves.
fn trigger_due(ctx: &Context, scope: &mut Scope) {
    let now = Instant::now();
    for rs in scope.store.state() {
        if ctx.memory.is_due(&rs, now) {
            scope.send(&rs);
        }
    }
}

fn oldest_check(ctx: &Context, scopes: &[Scope]) -> Duration {
    scopes
        .iter()
        .flat_map(|s| s.store.state())
        .filter_map(|rs| rs.status.as_ref()?.arn.clone())
        .map(|arn| ctx.memory.check_age(&arn, Instant::now()))
        .max()
        .unwrap_or_default()
}

/// Reconciles the objects an SQS event names, at once, with a fresh
/// DescribeSecret (ListSecrets may not show the change yet).
pub async fn event_loop(ctx: Arc<Context>, mut scopes: Vec<Scope>, mut changes: Receiver<SecretChange>) {
    while let Some(change) = changes.recv().await {
        let mut matched = false;
        for scope in scopes.iter_mut() {
            let hits: Vec<_> = scope
                .store
                .state()
                .into_iter()
                .filter(|rs| {
                    change.matches(
                        rs.status.as_ref().and_then(|s| s.arn.as_deref()),
                        &rs.spec.secrets_manager.name,
                        ctx.memory.policy.region_of(rs),
                    )
                })
                .collect();
            for rs in hits {
                matched = true;
                ctx.memory.rotation_event(&rs, change.event, Timestamp::now());
                ctx.memory.watch(&rs, Instant::now());
                debug!(namespace = rs.namespace(), name = %rs.name_any(), event = change.event, "event trigger");
                scope.send(&rs);
            }
        }
        if !matched {
            debug!(event = change.event, "event names no RotatedSecret");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_keep_the_rhythm_of_the_interval() {
        let (t0, every) = (Instant::now(), Duration::from_secs(60));
        let secs = |d: Duration| d.as_secs_f64();
        // Four pages last time: one every 12 s (80% of the interval).
        let mut pace = Pace::new(t0, every, 4);
        assert_eq!(secs(pace.next(true, t0)), 12.0);
        // A slow answer eats into the wait, not into the rhythm.
        assert_eq!(secs(pace.next(true, t0 + Duration::from_secs(20))), 4.0);
        assert_eq!(secs(pace.next(true, t0 + Duration::from_secs(40))), 0.0);
        // Past the pages expected (secrets were added): no waiting.
        assert_eq!(pace.next(true, t0), Duration::ZERO);
        assert_eq!(pace.listed, 4);
        // Not paced (a first sweep): at once, counted all the same.
        let mut first = Pace::new(t0, every, 0);
        assert_eq!(first.next(false, t0), Duration::ZERO);
        assert_eq!(first.next(false, t0), Duration::ZERO);
        assert_eq!(first.listed, 2);
    }
}
