//! Batched reads of AWSCURRENT when many objects need a value at once (a
//! start with thousands of existing secrets, a bulk apply, recovery after an
//! outage): 20 per BatchGetSecretValue instead of one GetSecretValue each.
//!
//! The sweep knows which objects are behind their secret's AWSCURRENT and
//! queues their ARNs here; a worker reads them in batches and holds each
//! value until that object's reconcile takes it (once), for at most `TTL`. A
//! reconcile whose ARN is queued or in flight waits for it (and moves it to
//! the front); anything else, and any miss (a version other than the one
//! expected, a secret the batch could not read), is the ordinary single
//! GetSecretValue. Values are secret material: held as `Sensitive` (never
//! printed), bounded in bytes, and dropped when taken or expired.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::Context;
use crate::aws::secrets::{BATCH_VALUES, Payload, SecretValue};

/// Value bytes held at most by prefetching (a waiting reconcile's read
/// still goes ahead): a bulk start must not hold every value at once.
const BUDGET_BYTES: usize = 16 << 20;
/// ARNs queued at most; more are read one by one when their turn comes.
const MAX_QUEUED: usize = 50_000;
/// A value nobody took within this is dropped.
const TTL: Duration = Duration::from_secs(300);
/// How long a reconcile waits for a queued or in-flight read.
pub const WAIT: Duration = Duration::from_secs(20);

enum Slot {
    Queued { region: String, urgent: bool },
    InFlight,
    Ready { value: SecretValue, at: Instant },
    Failed { at: Instant },
}

#[derive(Default)]
struct Queue {
    urgent: VecDeque<String>,
    normal: VecDeque<String>,
}

#[derive(Default)]
struct State {
    queues: BTreeMap<String, Queue>,
    slots: HashMap<String, Slot>,
    bytes: usize,
}

#[derive(Default)]
pub struct Values {
    state: Mutex<State>,
    /// Wakes the worker: work queued, or room made in the budget.
    work: Notify,
    /// Wakes waiting reconciles: a batch finished.
    done: Notify,
}

fn size(v: &SecretValue) -> usize {
    match &v.value.0 {
        Payload::String(s) => s.len(),
        Payload::Binary(b) => b.len(),
    }
}

impl Values {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues reads of these secrets' values (ARNs of one region).
    pub fn prefetch(&self, region: &str, arns: impl IntoIterator<Item = String>) {
        let mut state = self.lock();
        evict(&mut state, Instant::now());
        let mut queued = false;
        for arn in arns {
            if state.slots.len() >= MAX_QUEUED || state.slots.contains_key(&arn) {
                continue;
            }
            let slot = Slot::Queued {
                region: region.to_owned(),
                urgent: false,
            };
            state.slots.insert(arn.clone(), slot);
            state
                .queues
                .entry(region.to_owned())
                .or_default()
                .normal
                .push_back(arn);
            queued = true;
        }
        drop(state);
        if queued {
            self.work.notify_one();
        }
    }

    /// The value of `arn` at `version`, if a batch read it or is about to:
    /// waits until `deadline` for a queued or in-flight read. `None` means:
    /// read it with GetSecretValue.
    pub async fn take(&self, arn: &str, version: &str, deadline: Instant) -> Option<SecretValue> {
        loop {
            let done = self.done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            {
                let mut state = self.lock();
                match state.slots.get_mut(arn)? {
                    Slot::Queued { region, urgent } => {
                        if !*urgent {
                            *urgent = true;
                            let region = region.clone();
                            state
                                .queues
                                .entry(region)
                                .or_default()
                                .urgent
                                .push_back(arn.to_owned());
                            self.work.notify_one();
                        }
                    }
                    Slot::InFlight => {}
                    Slot::Ready { .. } | Slot::Failed { .. } => {
                        let slot = state.slots.remove(arn)?;
                        if state.slots.is_empty() {
                            // A warm start queues every object: give back
                            // the table once it has drained.
                            state.slots.shrink_to_fit();
                            state.queues.clear();
                        }
                        self.work.notify_one();
                        return match slot {
                            Slot::Ready { value, .. } => {
                                state.bytes = state.bytes.saturating_sub(size(&value));
                                (value.version_id == version).then_some(value)
                            }
                            _ => None,
                        };
                    }
                }
            }
            if tokio::time::timeout_at(deadline.into(), done).await.is_err() {
                return None;
            }
        }
    }

    /// The next batch to read: waiting reconciles first, then prefetches
    /// while the byte budget has room.
    fn next_batch(&self) -> Option<(String, Vec<String>)> {
        let mut state = self.lock();
        evict(&mut state, Instant::now());
        let room = state.bytes < BUDGET_BYTES;
        let State { queues, slots, .. } = &mut *state;
        for (region, queue) in queues.iter_mut() {
            let mut batch = Vec::new();
            for urgent in [true, false] {
                let line = if urgent {
                    &mut queue.urgent
                } else {
                    &mut queue.normal
                };
                while batch.len() < BATCH_VALUES && (urgent || room) {
                    let Some(arn) = line.pop_front() else { break };
                    // Skip ARNs taken, expired or already moved up.
                    if let Some(slot @ Slot::Queued { .. }) = slots.get_mut(&arn) {
                        *slot = Slot::InFlight;
                        batch.push(arn);
                    }
                }
            }
            if !batch.is_empty() {
                return Some((region.clone(), batch));
            }
        }
        queues.retain(|_, q| !q.urgent.is_empty() || !q.normal.is_empty());
        None
    }

    /// Stores what a batch read; ARNs it did not return are failures.
    fn complete(&self, arns: &[String], read: Option<Vec<(String, SecretValue)>>) {
        let now = Instant::now();
        let mut read: HashMap<String, SecretValue> = read.unwrap_or_default().into_iter().collect();
        let mut state = self.lock();
        for arn in arns {
            let slot = match read.remove(arn) {
                Some(value) => {
                    state.bytes += size(&value);
                    Slot::Ready { value, at: now }
                }
                None => Slot::Failed { at: now },
            };
            state.slots.insert(arn.clone(), slot);
        }
        drop(state);
        self.done.notify_waiters();
    }

    /// Values held and ARNs known (queued, in flight, held): for tests.
    #[cfg(test)]
    fn len(&self) -> (usize, usize) {
        let state = self.lock();
        let held = state
            .slots
            .values()
            .filter(|s| matches!(s, Slot::Ready { .. }))
            .count();
        (held, state.slots.len())
    }
}

/// Drops values and failures nobody took within `TTL`.
fn evict(state: &mut State, now: Instant) {
    let mut freed = 0;
    state.slots.retain(|_, slot| match slot {
        Slot::Ready { value, at } if now.saturating_duration_since(*at) > TTL => {
            freed += size(value);
            false
        }
        Slot::Failed { at } => now.saturating_duration_since(*at) <= TTL,
        _ => true,
    });
    state.bytes = state.bytes.saturating_sub(freed);
}

/// Reads queued values in batches, for the life of the process.
pub async fn work(ctx: Arc<Context>) {
    loop {
        let Some((region, arns)) = ctx.values.next_batch() else {
            ctx.values.work.notified().await;
            continue;
        };
        let rc = ctx.aws.region(Some(&region));
        let read = match ctx.aws.batch_values(&rc, &arns).await {
            Ok(read) => Some(read),
            Err(e) => {
                tracing::warn!(region, error = %e, "batch read failed; reading those values one by one");
                None
            }
        };
        ctx.values.complete(&arns, read);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redact::Sensitive;

    fn value(version: &str) -> SecretValue {
        SecretValue {
            version_id: version.into(),
            value: Sensitive(Payload::String("x".repeat(10))),
        }
    }

    fn arns(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("arn:{i}")).collect()
    }

    #[tokio::test]
    async fn prefetched_values_are_read_in_batches_of_twenty_and_taken_once() {
        let values = Values::default();
        values.prefetch("r", arns(45));
        values.prefetch("r", arns(45)); // queued once
        let mut batches = Vec::new();
        while let Some((region, batch)) = values.next_batch() {
            assert_eq!(region, "r");
            let read = batch.iter().map(|a| (a.clone(), value("v1"))).collect();
            batches.push(batch.len());
            values.complete(&batch, Some(read));
        }
        assert_eq!(batches, [20, 20, 5]);
        assert_eq!(values.len(), (45, 45));
        let soon = Instant::now() + Duration::from_millis(50);
        assert_eq!(
            values.take("arn:3", "v1", soon).await.map(|v| v.version_id),
            Some("v1".into())
        );
        assert!(values.take("arn:3", "v1", soon).await.is_none(), "taken once");
        // Another version than expected: not used (read it singly).
        assert!(values.take("arn:4", "v2", soon).await.is_none());
        assert!(values.take("unknown", "v1", soon).await.is_none());
        assert_eq!(values.len(), (43, 43));
    }

    #[tokio::test]
    async fn a_waiting_reconcile_moves_its_arn_to_the_front() {
        let values = Arc::new(Values::default());
        values.prefetch("r", arns(100));
        let waiter = {
            let values = values.clone();
            tokio::spawn(async move {
                values
                    .take("arn:99", "v1", Instant::now() + Duration::from_secs(5))
                    .await
            })
        };
        // Let the waiter queue itself.
        while !matches!(
            values.lock().slots.get("arn:99"),
            Some(Slot::Queued { urgent: true, .. })
        ) {
            tokio::task::yield_now().await;
        }
        let (_, batch) = values.next_batch().unwrap();
        assert_eq!(batch[0], "arn:99");
        values.complete(
            &batch,
            Some(batch.iter().map(|a| (a.clone(), value("v1"))).collect()),
        );
        assert_eq!(waiter.await.unwrap().map(|v| v.version_id), Some("v1".into()));
    }

    #[tokio::test]
    async fn a_failed_batch_sends_its_reconciles_to_single_reads() {
        let values = Values::default();
        values.prefetch("r", arns(3));
        let (_, batch) = values.next_batch().unwrap();
        values.complete(&batch, None);
        let soon = Instant::now() + Duration::from_millis(50);
        assert!(values.take("arn:0", "v1", soon).await.is_none());
        // A partial answer: what came back is used, the rest read singly.
        values.prefetch("r", arns(3));
        let (_, batch) = values.next_batch().unwrap();
        values.complete(&batch, Some(vec![("arn:0".into(), value("v1"))]));
        assert!(values.take("arn:0", "v1", soon).await.is_some());
        assert!(values.take("arn:1", "v1", soon).await.is_none());
    }

    #[tokio::test]
    async fn a_read_that_never_comes_gives_up_at_the_deadline() {
        let values = Values::default();
        values.prefetch("r", arns(1));
        let started = Instant::now();
        assert!(
            values
                .take("arn:0", "v1", started + Duration::from_millis(100))
                .await
                .is_none()
        );
        assert!(started.elapsed() >= Duration::from_millis(100));
    }

    #[test]
    fn prefetching_stops_at_the_byte_budget_and_unused_values_expire() {
        let values = Values::default();
        let big = SecretValue {
            version_id: "v".into(),
            value: Sensitive(Payload::Binary(vec![0; BUDGET_BYTES])),
        };
        values.prefetch("r", arns(2));
        let (_, batch) = values.next_batch().unwrap();
        assert_eq!(batch.len(), 2);
        values.complete(&batch[..1], Some(vec![(batch[0].clone(), big)]));
        values.prefetch("r", ["arn:late".to_owned()]);
        assert!(values.next_batch().is_none(), "over budget: no more prefetching");
        let mut state = values.lock();
        evict(&mut state, Instant::now() + TTL + Duration::from_secs(1));
        assert_eq!(state.bytes, 0);
        assert!(!state.slots.contains_key("arn:0"));
    }
}
