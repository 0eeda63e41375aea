//! Leader election on a `coordination.k8s.io/v1` Lease, so that several
//! replicas give high availability while only one reconciles and writes.
//!
//! The protocol is client-go's: the holder renews `renewTime` well within
//! `leaseDurationSeconds`; anyone may take a lease whose renewal is overdue.
//! Every write carries the resourceVersion it read, so two candidates can
//! never both win. A leader that cannot renew in time stops (the process
//! exits and restarts as a candidate) rather than risk two writers; the
//! restart annotations make a change of leader restart nothing twice.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use tracing::{info, warn};

pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

/// What a candidate should do after looking at the lease.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Free, expired or already ours: write ourselves in.
    Take { transition: bool },
    /// Someone else holds it and renews it.
    Wait,
}

fn judge(spec: Option<&LeaseSpec>, identity: &str, now: Timestamp) -> Verdict {
    let Some(spec) = spec else {
        return Verdict::Take { transition: true };
    };
    let holder = spec.holder_identity.as_deref().filter(|h| !h.is_empty());
    if holder == Some(identity) {
        return Verdict::Take { transition: false };
    }
    let expired = match (&spec.renew_time, spec.lease_duration_seconds) {
        (Some(MicroTime(renewed)), Some(secs)) => *renewed + SignedDuration::from_secs(secs.into()) < now,
        _ => true,
    };
    if holder.is_none() || expired {
        Verdict::Take { transition: true }
    } else {
        Verdict::Wait
    }
}

impl Elector {
    pub fn new(client: Client, namespace: &str, name: &str, identity: String, duration: Duration) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            identity,
            duration,
        }
    }

    fn retry_period(&self) -> Duration {
        self.duration / 5
    }

    /// One attempt: `Ok(true)` when we hold the lease afterwards.
    async fn try_hold(&self) -> kube::Result<bool> {
        let now = Timestamp::now();
        let existing = self.api.get_opt(&self.name).await?;
        let verdict = judge(
            existing.as_ref().and_then(|l| l.spec.as_ref()),
            &self.identity,
            now,
        );
        let Verdict::Take { transition } = verdict else {
            return Ok(false);
        };
        let old = existing.as_ref().and_then(|l| l.spec.clone()).unwrap_or_default();
        let spec = LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.duration.as_secs().max(1) as i32),
            acquire_time: if transition {
                Some(MicroTime(now))
            } else {
                old.acquire_time
            },
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(
                old.lease_transitions.unwrap_or(0) + i32::from(transition && existing.is_some()),
            ),
            ..LeaseSpec::default()
        };
        let result = match existing {
            Some(mut lease) => {
                // resourceVersion is kept: a concurrent writer makes this fail.
                lease.spec = Some(spec);
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
                    .map(drop)
            }
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(spec),
                };
                self.api.create(&PostParams::default(), &lease).await.map(drop)
            }
        };
        match result {
            Ok(()) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Waits until this candidate holds the lease.
    pub async fn acquire(&self) {
        info!(lease = %self.name, identity = %self.identity, "waiting to become leader");
        loop {
            match self.try_hold().await {
                Ok(true) => {
                    info!(lease = %self.name, identity = %self.identity, "became leader");
                    return;
                }
                Ok(false) => {}
                Err(e) => warn!(error = %e, "leader election: lease not readable"),
            }
            tokio::time::sleep(self.retry_period()).await;
        }
    }

    /// Gives the lease up on shutdown, so a standby takes over at once
    /// instead of after the lease duration.
    pub async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else { return };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(_) => info!(lease = %self.name, "released the leader lease"),
            Err(e) => warn!(error = %e, "could not release the leader lease"),
        }
    }

    /// Renews the lease until it is lost; returns then. Renewal must succeed
    /// within two thirds of the lease duration, leaving a margin before a
    /// candidate may take over.
    pub async fn hold(&self) {
        let deadline = self.duration * 2 / 3;
        let mut last_renewed = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.retry_period()).await;
            match self.try_hold().await {
                Ok(true) => last_renewed = tokio::time::Instant::now(),
                Ok(false) => {
                    warn!(lease = %self.name, "leadership lost to another replica");
                    return;
                }
                Err(e) => warn!(error = %e, "leader election: renewal failed"),
            }
            if last_renewed.elapsed() > deadline {
                warn!(lease = %self.name, "could not renew the lease in time; stepping down");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: &str, renewed: Timestamp, secs: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            renew_time: Some(MicroTime(renewed)),
            lease_duration_seconds: Some(secs),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn verdicts() {
        let now: Timestamp = "2026-01-01T00:01:00Z".parse().unwrap();
        let recent: Timestamp = "2026-01-01T00:00:55Z".parse().unwrap();
        let old: Timestamp = "2026-01-01T00:00:30Z".parse().unwrap();
        assert_eq!(judge(None, "me", now), Verdict::Take { transition: true });
        assert_eq!(
            judge(Some(&spec("me", old, 15)), "me", now),
            Verdict::Take { transition: false }
        );
        assert_eq!(judge(Some(&spec("other", recent, 15)), "me", now), Verdict::Wait);
        assert_eq!(
            judge(Some(&spec("other", old, 15)), "me", now),
            Verdict::Take { transition: true }
        );
        assert_eq!(
            judge(Some(&spec("", recent, 15)), "me", now),
            Verdict::Take { transition: true }
        );
    }
}
