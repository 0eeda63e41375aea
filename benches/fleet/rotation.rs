//! Rotation rounds: every object with a Deployment rotated the way a
//! rotation Lambda does it, timing when its Secret and its Deployment reach
//! the new version — polling, polling with rotor SIGKILLed midway, and with
//! SQS events — then the exactly-once count over all rounds.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::Semaphore;

use crate::setup::{Key, generations};
use crate::soak::Fault;
use crate::{Bench, Res, log};

pub struct RoundPlan {
    pub name: &'static str,
    pub spread: Duration,
    pub events_queue: Option<String>,
    pub fault: Option<Fault>,
}

#[derive(Default)]
pub struct Round {
    pub name: &'static str,
    pub rotated: usize,
    pub secret: Vec<f64>,
    pub workload: Vec<f64>,
    pub missing_secret: usize,
    pub missing_workload: usize,
    pub calls: BTreeMap<String, u64>,
    pub note: String,
    /// Pod-template changes per Deployment during the round (generation delta).
    pub changes: Vec<i64>,
    /// Version sweeps that ended during the round, and their mean length in
    /// seconds (none when rotor was restarted: its counters start over).
    pub sweeps: Option<(f64, f64)>,
}

/// Pod-template changes over the whole run against the rounds.
pub struct ExactlyOnce {
    pub want: i64,
    pub extra: i64,
    pub missing: i64,
    /// Deployments that saw exactly `want` distinct rotor.dev annotation values.
    pub distinct_ok: usize,
}

pub type Moves = Arc<Mutex<Vec<Option<(String, Instant)>>>>;

impl Bench {
    /// The three rounds: polling, polling with a crash, SQS events (rotor
    /// restarted with an events queue first).
    pub async fn rounds(&mut self) -> Res<Vec<Round>> {
        let mut rounds = Vec::new();
        let poll = RoundPlan {
            name: "polling",
            spread: self.args.refresh,
            events_queue: None,
            fault: None,
        };
        rounds.push(self.rotation_round(poll).await?);
        let restart = RoundPlan {
            name: "polling, rotor killed midway",
            spread: Duration::ZERO,
            events_queue: None,
            fault: Some(Fault::KillAt(self.args.rotations.div_ceil(2))),
        };
        rounds.push(self.rotation_round(restart).await?);

        let queue = testbed::aws::create_queue(&self.sqs, "rotor-bench-events", None).await?;
        self.rotor.stop();
        self.rotor = self.launcher.start(Some(&queue))?;
        self.rotor.ready(Duration::from_secs(120)).await?;
        self.wait_reconciled_all("rotor with events to reconcile every object")
            .await?;
        let events = RoundPlan {
            name: "SQS events",
            spread: self.args.refresh,
            events_queue: Some(queue),
            fault: None,
        };
        rounds.push(self.rotation_round(events).await?);
        Ok(rounds)
    }

    /// Exactly once over the whole run: each Deployment's pod template changed
    /// once per round, to that round's version, and never otherwise.
    pub async fn exactly_once(&self, rounds: usize, baseline: &HashMap<Key, i64>) -> Res<ExactlyOnce> {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let end = generations(&self.admin).await?;
        let want = rounds as i64;
        let (mut extra, mut missing) = (0i64, 0i64);
        let mut distinct_ok = 0;
        let seen = self.seen.lock().expect("seen lock");
        for o in self.objs.iter().filter(|o| o.deployment.is_some()) {
            let k = o.deploy_key().unwrap_or_default();
            let delta = end.get(&k).copied().unwrap_or(0) - baseline.get(&k).copied().unwrap_or(0);
            extra += (delta - want).max(0);
            missing += (want - delta).max(0);
            if seen
                .deploys
                .get(&k)
                .is_some_and(|t| t.values.len() as i64 == want)
            {
                distinct_ok += 1;
            }
        }
        Ok(ExactlyOnce {
            want,
            extra,
            missing,
            distinct_ok,
        })
    }

    /// Rotates every target per `plan` in the background; returns the
    /// driver and where it records each new version and when it moved.
    fn drive_rotations(
        &self,
        plan: &RoundPlan,
        targets: &[usize],
        start: Instant,
    ) -> (tokio::task::JoinHandle<Res<()>>, Moves) {
        let n = targets.len();
        let moves: Moves = Arc::new(Mutex::new(vec![None; n]));
        let jobs: Vec<(String, String, String, String)> = targets
            .iter()
            .map(|&i| {
                let o = &self.objs[i];
                (
                    o.arn.clone(),
                    o.aws_name.clone(),
                    o.version.clone(),
                    o.name.clone(),
                )
            })
            .collect();
        let (sm, sqs, m) = (self.sm.clone(), self.sqs.clone(), moves.clone());
        let (spread, queue, par) = (plan.spread, plan.events_queue.clone(), self.args.parallelism);
        let driver = tokio::spawn(async move {
            let sem = Arc::new(Semaphore::new(par));
            let mut set = tokio::task::JoinSet::new();
            for (k, (arn, name, old, username)) in jobs.into_iter().enumerate() {
                tokio::time::sleep_until((start + spread.mul_f64(k as f64 / n as f64)).into()).await;
                let permit = sem.clone().acquire_owned().await.map_err(|e| e.to_string())?;
                let (sm, sqs, moves, queue) = (sm.clone(), sqs.clone(), m.clone(), queue.clone());
                set.spawn(async move {
                    // Every key of the first version (setup.rs): rotor keeps
                    // the last good Secret when a version drops a key.
                    let value = json!({"username": username, "password": testbed::uuid_like()}).to_string();
                    let (token, moved) = testbed::aws::rotate(&sm, &arn, &old, &value).await?;
                    moves.lock().expect("moves lock")[k] = Some((token.clone(), moved));
                    if let Some(q) = queue {
                        let body = testbed::aws::stage_moved_event(&arn, &name, &token, &old).to_string();
                        sqs.send_message()
                            .queue_url(q)
                            .message_body(body)
                            .send()
                            .await
                            .map_err(|e| format!("SendMessage: {e:?}"))?;
                    }
                    drop(permit);
                    Ok::<_, String>(())
                });
            }
            while let Some(r) = set.join_next().await {
                r.map_err(|e| e.to_string())??;
            }
            Ok::<_, String>(())
        });
        (driver, moves)
    }

    /// (secrets updated, workloads annotated) among the targets.
    pub fn progress(&self, targets: &[usize], moves: &Moves) -> (usize, usize) {
        let moves = moves.lock().expect("moves lock");
        let seen = self.seen.lock().expect("seen lock");
        let mut done = (0, 0);
        for (k, &i) in targets.iter().enumerate() {
            let Some((v, _)) = &moves[k] else { continue };
            let o = &self.objs[i];
            if seen.secrets.get(&o.key()).is_some_and(|m| m.contains_key(v)) {
                done.0 += 1;
            }
            if o.deploy_key()
                .and_then(|d| seen.deploys.get(&d))
                .is_some_and(|t| t.values.contains_key(v))
            {
                done.1 += 1;
            }
        }
        done
    }

    /// SIGKILLs rotor once `kill_at` Secrets have the new version and starts
    /// it again; returns the round's note.
    pub async fn crash_midway(
        &mut self,
        plan: &RoundPlan,
        kill_at: usize,
        targets: &[usize],
        moves: &Moves,
    ) -> Res<String> {
        let n = targets.len();
        // Polled tightly: a burst of reconciles takes a second or two.
        let deadline = Instant::now() + plan.spread + self.args.refresh * 3 + Duration::from_secs(120);
        let (s, w) = loop {
            let (s, w) = self.progress(targets, moves);
            if s >= kill_at {
                break (s, w);
            }
            if Instant::now() > deadline {
                return Err(format!("only {s}/{n} Secrets updated before the planned restart"));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        self.rotor.kill();
        log(format!(
            "killed rotor (SIGKILL) with {s}/{n} Secrets and {w}/{n} workloads updated"
        ));
        self.rotor = self.launcher.start(plan.events_queue.as_deref())?;
        let ready = self.rotor.ready(Duration::from_secs(120)).await?;
        Ok(format!(
            "rotor SIGKILLed at {s}/{n} Secrets and {w}/{n} workloads updated, restarted (caches ready in {:.1} s)",
            ready.as_secs_f64()
        ))
    }

    pub async fn rotation_round(&mut self, plan: RoundPlan) -> Res<Round> {
        let targets: Vec<usize> = (0..self.objs.len())
            .filter(|&i| self.objs[i].deployment.is_some())
            .collect();
        let n = targets.len();
        log(format!(
            "round {:?}: rotating {n} secrets over {:?}",
            plan.name, plan.spread
        ));
        self.proxy.try_reset()?;
        let before = generations(&self.admin).await?;
        let sweeps_before = self.sweeps().await?;

        let start = Instant::now();
        let (driver, moves) = self.drive_rotations(&plan, &targets, start);
        let note = match &plan.fault {
            Some(fault) => self.inject(&plan, fault, &targets, &moves).await?,
            None => String::new(),
        };

        tokio::time::timeout(plan.spread + Duration::from_secs(300), driver)
            .await
            .map_err(|_| "rotations did not finish".to_owned())?
            .map_err(|e| e.to_string())??;

        let timeout = plan.spread + self.args.refresh * 3 + Duration::from_secs(120);
        let deadline = start + timeout;
        loop {
            self.rotor.check_alive()?;
            let (s, w) = self.progress(&targets, &moves);
            if s == n && w == n {
                break;
            }
            if Instant::now() > deadline {
                log(format!(
                    "round {:?}: TIMEOUT after {timeout:?}: {s}/{n} Secrets and {w}/{n} workloads reached the new version",
                    plan.name
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        let mut round = Round {
            name: plan.name,
            rotated: n,
            note,
            ..Round::default()
        };
        self.record(&mut round, &targets, &moves);

        // Let anything late (a second patch would be a bug) show up before
        // counting: after a restart, until the new process has reconciled every
        // object once; then a few more seconds.
        if plan.fault.as_ref().is_some_and(Fault::restarts_rotor) {
            self.wait_reconciled_all("the restarted rotor to reconcile every object")
                .await?;
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
        let after = generations(&self.admin).await?;
        round.changes = targets
            .iter()
            .filter_map(|&i| self.objs[i].deploy_key())
            .map(|k| after.get(&k).copied().unwrap_or(0) - before.get(&k).copied().unwrap_or(0))
            .collect();
        round.calls = self.proxy.try_calls()?;
        let (count, seconds) = self.sweeps().await?;
        let n = count - sweeps_before.0;
        if n > 0.0 {
            round.sweeps = Some((n, (seconds - sweeps_before.1) / n));
        }
        Ok(round)
    }

    /// (sweeps ended, seconds they took) so far, from rotor's histogram.
    async fn sweeps(&self) -> Res<(f64, f64)> {
        let m = "rotor_version_sweep_duration_seconds";
        Ok((
            self.rotor.metric_sum(&format!("{m}_count")).await?,
            self.rotor.metric_sum(&format!("{m}_sum")).await?,
        ))
    }

    /// Latencies (or misses) of each target's new version, and the new
    /// versions as the objects' AWSCURRENT.
    fn record(&mut self, round: &mut Round, targets: &[usize], moves: &Moves) {
        let moves = moves.lock().expect("moves lock");
        let seen = self.seen.lock().expect("seen lock");
        for (k, &i) in targets.iter().enumerate() {
            let Some((v, moved)) = &moves[k] else { continue };
            let o = &self.objs[i];
            match seen.secrets.get(&o.key()).and_then(|m| m.get(v)) {
                Some(t) => round
                    .secret
                    .push(t.saturating_duration_since(*moved).as_secs_f64()),
                None => round.missing_secret += 1,
            }
            match o
                .deploy_key()
                .and_then(|d| seen.deploys.get(&d))
                .and_then(|t| t.values.get(v))
            {
                Some(t) => round
                    .workload
                    .push(t.saturating_duration_since(*moved).as_secs_f64()),
                None => round.missing_workload += 1,
            }
        }
        for (k, &i) in targets.iter().enumerate() {
            if let Some((v, _)) = &moves[k] {
                self.objs[i].version = v.clone();
            }
        }
    }
}
