//! The idle phase: rotor's AWS calls per minute at the endpoint, beside the
//! "peer" strategy (one GetSecretValue per object per refresh interval)
//! counted by a second proxy over the same minutes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use testbed::AwsProxy;
use tokio::sync::Semaphore;

use crate::audit::Audit;
use crate::report::ops;
use crate::{Bench, Res, log};

pub struct Idle {
    pub minutes: f64,
    pub rotor: BTreeMap<String, u64>,
    pub peer: BTreeMap<String, u64>,
    pub peer_errors: u64,
    pub per_minute: Vec<u64>,
    /// rotor's API-server requests (the audit log), by verb and resource.
    pub api: BTreeMap<String, u64>,
    pub cpu_seconds: f64,
    pub reconciles: u64,
    pub rss_kib: u64,
    pub hwm_kib: u64,
}

impl Idle {
    fn rate(map: &BTreeMap<String, u64>, minutes: f64) -> f64 {
        map.values().sum::<u64>() as f64 / minutes
    }
    pub fn rotor_rate(&self) -> f64 {
        Self::rate(&self.rotor, self.minutes)
    }
    pub fn peer_rate(&self) -> f64 {
        Self::rate(&self.peer, self.minutes)
    }
    pub fn api_rate(&self) -> f64 {
        Self::rate(&self.api, self.minutes)
    }
}

/// One GetSecretValue per object per refresh interval, evenly spread, until
/// `until`: what External Secrets Operator and similar controllers do.
async fn peer_loop(
    sm: aws_sdk_secretsmanager::Client,
    ids: Vec<String>,
    every: Duration,
    until: Instant,
    par: usize,
) -> u64 {
    let step = every.div_f64(ids.len().max(1) as f64);
    let mut ticker = tokio::time::interval(step);
    let sem = Arc::new(Semaphore::new(par));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0.. {
        ticker.tick().await;
        if Instant::now() >= until {
            break;
        }
        let Ok(permit) = sem.clone().acquire_owned().await else {
            break;
        };
        let (sm, id, errors) = (sm.clone(), ids[i % ids.len()].clone(), errors.clone());
        tasks.spawn(async move {
            let r = sm
                .get_secret_value()
                .secret_id(id)
                .version_stage("AWSCURRENT")
                .send()
                .await;
            if r.is_err() {
                errors.fetch_add(1, Ordering::Relaxed);
            }
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    errors.load(Ordering::Relaxed)
}

impl Bench {
    pub async fn idle(&mut self) -> Res<Idle> {
        let peer_proxy = AwsProxy::try_start(&self.moto)?;
        let window = Duration::from_secs_f64(self.args.minutes * 60.0);
        self.proxy.try_reset()?;
        let audit = Audit::new(&self.dir);
        let audit0 = audit.mark()?;
        let cpu0 = self.rotor.cpu_seconds();
        let reconciles0 = self.rotor.reconciles().await?;
        let start = Instant::now();
        let until = start + window;
        let peer = tokio::spawn(peer_loop(
            testbed::aws::secrets_manager(&peer_proxy.url),
            self.objs.iter().map(|o| o.arn.clone()).collect(),
            self.args.refresh,
            until,
            self.args.parallelism,
        ));
        let mut per_minute = Vec::new();
        let mut last_total = 0;
        let mut next = start + Duration::from_secs(60);
        while next <= until {
            tokio::time::sleep_until(next.into()).await;
            self.rotor.check_alive()?;
            let calls = self.proxy.try_calls()?;
            let total: u64 = calls.values().sum();
            per_minute.push(total - last_total);
            log(format!(
                "idle minute {}: {} rotor AWS calls (total so far: {}), {} reconciles since the phase began",
                per_minute.len(),
                total - last_total,
                ops(&calls, 1.0),
                self.rotor.reconciles().await?.saturating_sub(reconciles0),
            ));
            last_total = total;
            next += Duration::from_secs(60);
        }
        tokio::time::sleep_until(until.into()).await;
        let rotor_calls = self.proxy.try_calls()?;
        let api = audit.since(audit0)?;
        let minutes = start.elapsed().as_secs_f64() / 60.0;
        let peer_errors = tokio::time::timeout(Duration::from_secs(60), peer)
            .await
            .map_err(|_| "the peer loop did not stop".to_owned())?
            .map_err(|e| e.to_string())?;
        let peer_calls = peer_proxy.try_calls()?;
        let (rss_kib, hwm_kib) = self.rotor.memory();
        Ok(Idle {
            minutes,
            rotor: rotor_calls,
            peer: peer_calls,
            peer_errors,
            per_minute,
            api,
            cpu_seconds: self.rotor.cpu_seconds() - cpu0,
            reconciles: self.rotor.reconciles().await?.saturating_sub(reconciles0),
            rss_kib,
            hwm_kib,
        })
    }
}
