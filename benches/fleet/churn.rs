//! The churn phase (`--churn-minutes`): the fleet keeps its size while
//! objects come and go. Every `--churn-every`, the `--churn-batch` oldest
//! objects without a Deployment are deleted and as many new ones created
//! (`deletionPolicy: Delete`, so rotor deletes their AWS secrets), plus one
//! object with an invalid spec that the next step deletes (rotor refuses it
//! before adding a finalizer: the path by which an object leaves rotor's
//! memory without a cleanup). rotor's RSS is sampled throughout; whatever
//! rotor keeps per object must leave with the object, so RSS at the end,
//! once everything has converged, should be where it started.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt, stream};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams};
use rotor::api::RotatedSecret;
use serde_json::json;

use crate::setup::{Obj, is_ready, list_objects, refresh_spec};
use crate::{Bench, NS_PREFIX, Res, log};

pub struct Churn {
    pub minutes: f64,
    pub steps: usize,
    pub created: usize,
    pub deleted: usize,
    /// Objects with an invalid spec created (and deleted).
    pub invalid: usize,
    /// VmRSS (KiB) just before the first step and after convergence.
    pub rss_start_kib: u64,
    pub rss_end_kib: u64,
    /// Highest VmRSS sampled (once per step).
    pub rss_peak_kib: u64,
    pub hwm_end_kib: u64,
    /// VmRSS (KiB) at the start and after each minute.
    pub rss_each_minute: Vec<u64>,
    /// rotor's AWS calls during the churn window.
    pub calls: BTreeMap<String, u64>,
    /// Seconds after the last step until every deleted object was gone and
    /// every other one Ready; `None` if that did not happen in time.
    pub converged_seconds: Option<f64>,
    /// When not converged: objects still present after deletion / not Ready.
    pub not_gone: usize,
    pub not_ready: usize,
}

/// An object deleted under the default `deletionPolicy: Retain`: its AWS
/// secret stays, so the benchmark deletes it once the object is gone (the
/// AWS side keeps its size too).
struct Retained {
    ns: String,
    name: String,
    aws_name: String,
}

impl Bench {
    pub async fn churn(&mut self) -> Res<Churn> {
        let (keep, pool): (Vec<Obj>, Vec<Obj>) = std::mem::take(&mut self.objs)
            .into_iter()
            .partition(|o| o.deployment.is_some());
        self.objs = keep;
        let mut pool = VecDeque::from(pool);
        let batch = self.args.churn_batch;
        if batch == 0 || batch > pool.len() {
            return Err(format!(
                "--churn-batch must be between 1 and the objects without a Deployment ({})",
                pool.len()
            ));
        }
        let window = Duration::from_secs_f64(self.args.churn_minutes * 60.0);
        log(format!(
            "churn phase: {:.1} minutes, {batch} objects deleted and created every {:?}",
            self.args.churn_minutes, self.args.churn_every
        ));
        self.proxy.try_reset()?;
        let rss_start_kib = self.rotor.memory().0;
        let mut out = Churn {
            minutes: 0.0,
            steps: 0,
            created: 0,
            deleted: 0,
            invalid: 0,
            rss_start_kib,
            rss_end_kib: 0,
            rss_peak_kib: rss_start_kib,
            hwm_end_kib: 0,
            rss_each_minute: vec![rss_start_kib],
            calls: BTreeMap::new(),
            converged_seconds: None,
            not_gone: 0,
            not_ready: 0,
        };
        let mut retained: Vec<Retained> = Vec::new();
        let mut invalid: Vec<(String, String)> = Vec::new();
        let mut seq = 0usize;
        let start = Instant::now();
        let mut ticker = tokio::time::interval(self.args.churn_every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_minute = start + Duration::from_secs(60);
        while start.elapsed() < window {
            ticker.tick().await;
            self.rotor.check_alive()?;
            // Delete the oldest, and the previous step's invalid object.
            let gone: Vec<Obj> = pool.drain(..batch).collect();
            let mut names: Vec<(String, String)> =
                gone.iter().map(|o| (o.ns.clone(), o.name.clone())).collect();
            names.append(&mut invalid);
            self.delete_objects(&names).await?;
            out.deleted += names.len();
            retained.extend(
                gone.into_iter()
                    .filter(|o| o.name.starts_with("s-"))
                    .map(|o| Retained {
                        ns: o.ns,
                        name: o.name,
                        aws_name: o.aws_name,
                    }),
            );
            retained = self.delete_released_secrets(retained).await?;
            // Create as many, and one the controller must refuse.
            let fresh = self.create_objects(seq, batch).await?;
            let ns = format!("{NS_PREFIX}{}", seq % self.args.namespaces);
            let bad = format!("x-{seq:06}");
            self.apply_invalid(&ns, &bad).await?;
            invalid.push((ns, bad));
            seq += batch;
            out.created += fresh.len();
            out.invalid += 1;
            pool.extend(fresh);
            out.steps += 1;

            let rss = self.rotor.memory().0;
            out.rss_peak_kib = out.rss_peak_kib.max(rss);
            if Instant::now() >= next_minute {
                out.rss_each_minute.push(rss);
                log(format!(
                    "churn minute {}: {} objects created, {} deleted so far; rotor RSS {:.1} MiB",
                    out.rss_each_minute.len() - 1,
                    out.created,
                    out.deleted,
                    rss as f64 / 1024.0
                ));
                next_minute += Duration::from_secs(60);
            }
        }
        out.minutes = start.elapsed().as_secs_f64() / 60.0;
        out.calls = self.proxy.try_calls()?;
        self.delete_objects(&invalid).await?;
        out.deleted += invalid.len();

        let settle = Instant::now();
        self.objs.extend(pool);
        match self.wait_converged().await? {
            (0, 0) => out.converged_seconds = Some(settle.elapsed().as_secs_f64()),
            (not_gone, not_ready) => {
                (out.not_gone, out.not_ready) = (not_gone, not_ready);
                log(format!(
                    "churn: TIMEOUT: {not_gone} deleted objects still present, {not_ready} objects not Ready"
                ));
            }
        }
        let _ = self.delete_released_secrets(retained).await;
        (out.rss_end_kib, out.hwm_end_kib) = self.rotor.memory();
        out.rss_peak_kib = out.rss_peak_kib.max(out.rss_end_kib);
        Ok(out)
    }

    /// New objects `c-{seq}`.., each with its AWS secret, deleted with it.
    async fn create_objects(&self, seq: usize, n: usize) -> Res<Vec<Obj>> {
        let refresh = refresh_spec(&self.args);
        let spec = json!({"secretsManager": {"deletionPolicy": "Delete", "recoveryWindowInDays": 0}});
        stream::iter(seq..seq + n)
            .map(|i| {
                let (refresh, spec) = (&refresh, &spec);
                async move {
                    let ns = format!("{NS_PREFIX}{}", i % self.args.namespaces);
                    let o = Obj::create(&self.sm, ns, format!("c-{i:06}")).await?;
                    o.apply(&self.admin, refresh, spec.clone()).await?;
                    Ok::<_, String>(o)
                }
            })
            .buffer_unordered(self.args.parallelism)
            .try_collect()
            .await
    }

    /// An object rotor refuses (refreshInterval over 24h): Ready=False
    /// InvalidSpec, no AWS call, no finalizer.
    async fn apply_invalid(&self, ns: &str, name: &str) -> Res<()> {
        let o = Obj::planned(ns.to_owned(), name.to_owned());
        o.apply(&self.admin, "25h", json!({})).await
    }

    async fn delete_objects(&self, names: &[(String, String)]) -> Res<()> {
        stream::iter(names)
            .map(|(ns, name)| async move {
                match Api::<RotatedSecret>::namespaced(self.admin.clone(), ns)
                    .delete(name, &DeleteParams::default())
                    .await
                {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
                    Err(e) => Err(format!("delete RotatedSecret {ns}/{name}: {e}")),
                }
            })
            .buffer_unordered(self.args.parallelism)
            .try_collect()
            .await
    }

    /// Deletes the AWS secrets of retained objects that are gone; returns
    /// those still present.
    async fn delete_released_secrets(&self, retained: Vec<Retained>) -> Res<Vec<Retained>> {
        let mut left = Vec::new();
        for r in retained {
            let api = Api::<RotatedSecret>::namespaced(self.admin.clone(), &r.ns);
            let present = api
                .get_opt(&r.name)
                .await
                .map_err(|e| format!("get RotatedSecret {}/{}: {e}", r.ns, r.name))?
                .is_some();
            if present {
                left.push(r);
                continue;
            }
            self.sm
                .delete_secret()
                .secret_id(&r.aws_name)
                .force_delete_without_recovery(true)
                .send()
                .await
                .map_err(|e| format!("DeleteSecret {}: {e:?}", r.aws_name))?;
        }
        Ok(left)
    }

    /// Waits (up to 3 minutes) until the benchmark's objects are exactly
    /// `self.objs`, all Ready; returns (deleted still present, not Ready).
    async fn wait_converged(&mut self) -> Res<(usize, usize)> {
        let want: BTreeSet<(String, String)> =
            self.objs.iter().map(|o| (o.ns.clone(), o.name.clone())).collect();
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            self.rotor.check_alive()?;
            let list = list_objects(&self.admin).await?;
            let not_gone = list
                .iter()
                .filter(|r| !want.contains(&(r.namespace().unwrap_or_default(), r.name_any())))
                .count();
            let not_ready = list
                .iter()
                .filter(|r| want.contains(&(r.namespace().unwrap_or_default(), r.name_any())) && !is_ready(r))
                .count()
                + want.len().saturating_sub(list.len() - not_gone);
            if (not_gone, not_ready) == (0, 0) || Instant::now() > deadline {
                return Ok((not_gone, not_ready));
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
}
