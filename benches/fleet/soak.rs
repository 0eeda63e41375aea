//! `make soak` (`--soak`, RELIABILITY.md): the fleet through control-plane
//! and process failures while rotations happen — kube-apiserver and etcd
//! restarted, rotor SIGKILLed at random moments while it provisions and while
//! it follows rotations, the leader of two replicas killed, AWS failing 20%
//! of calls — then the end state checked against what a clean run leaves:
//! one secret and one key per object, no orphan key, every Secret at
//! AWSCURRENT, every Deployment rolled exactly once per rotation.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use rand::Rng;
use rotor::api::{OWNER_TAG, VERSION_ID_ANNOTATION};
use serde_json::json;

use crate::rotation::{Moves, Round, RoundPlan};
use crate::setup::{Launcher, Obj, refresh_spec};
use crate::{Bench, CLUSTER, NS_PREFIX, Res, log};
use testbed::Rotor;

/// What happens to the system while a round's rotations are made.
pub enum Fault {
    /// SIGKILL rotor once this many Secrets have the new version.
    KillAt(usize),
    /// SIGKILL rotor this many times, at random moments of the round.
    KillTimes(usize),
    /// Stop a test-bed component (`kube-apiserver`, `etcd`) for this long
    /// once half of the round's rotations were made.
    Restart(&'static str, Duration),
    /// SIGKILL the leader of two replicas once half of the Secrets have the
    /// new version.
    KillLeader,
    /// AWS fails this share of rotor's calls (the proxy) for the whole
    /// round, while this many new objects are provisioned.
    Aws(f64, usize),
}

impl Fault {
    pub fn restarts_rotor(&self) -> bool {
        matches!(self, Fault::KillAt(_) | Fault::KillTimes(_) | Fault::KillLeader)
    }
}

/// How many times rotor is SIGKILLed while it provisions, and again while it
/// follows a round of rotations.
pub const KILLS: usize = 20;

/// SIGKILLs `rotor` `times` times, each 0.5–`gap` s after it was started,
/// and starts it again each time.
pub async fn kill_randomly(
    launcher: &mut Launcher,
    rotor: &mut Rotor,
    times: usize,
    gap: f64,
    queue: Option<&str>,
) -> Res<()> {
    for k in 1..=times {
        let wait = rand::rng().random_range(0.5..gap.max(0.6));
        tokio::time::sleep(Duration::from_secs_f64(wait)).await;
        rotor.kill();
        log(format!("SIGKILL {k}/{times}, {wait:.1} s after rotor started"));
        *rotor = launcher.start(queue)?;
    }
    Ok(())
}

/// The soak's end-state check.
pub struct EndState {
    pub objects: usize,
    /// AWS secrets named for the benchmark, and how many objects had none.
    pub secrets: usize,
    pub without_secret: usize,
    /// Customer-managed keys; aliases of the benchmark; keys no alias names
    /// (a key created twice would be one).
    pub keys: usize,
    pub aliases: usize,
    pub orphan_keys: usize,
    /// Objects whose Secret is not at AWSCURRENT.
    pub stale_secrets: usize,
}

impl EndState {
    pub fn clean(&self) -> bool {
        self.secrets == self.objects
            && self.without_secret == 0
            && self.aliases == self.objects
            && self.keys == self.objects
            && self.orphan_keys == 0
            && self.stale_secrets == 0
    }
}

/// Per scenario: what was injected, when, and how the round went.
pub struct Scenario {
    pub name: String,
    pub note: String,
    pub round: Option<Round>,
}

impl Bench {
    /// Injects `fault` into a running round; returns the round's note.
    pub async fn inject(
        &mut self,
        plan: &RoundPlan,
        fault: &Fault,
        targets: &[usize],
        moves: &Moves,
    ) -> Res<String> {
        let n = targets.len();
        match fault {
            Fault::KillAt(at) => self.crash_midway(plan, *at, targets, moves).await,
            Fault::KillTimes(times) => {
                let gap = (plan.spread.as_secs_f64() / *times as f64).max(2.0);
                kill_randomly(
                    &mut self.launcher,
                    &mut self.rotor,
                    *times,
                    gap,
                    plan.events_queue.as_deref(),
                )
                .await?;
                self.rotor.ready(Duration::from_secs(120)).await?;
                Ok(format!(
                    "rotor SIGKILLed {times} times, at random moments 0.5–{gap:.0} s apart"
                ))
            }
            Fault::Restart(component, down) => {
                self.wait_moved(moves, n.div_ceil(2), plan.spread).await?;
                let pid = self.rotor.pid;
                let (s, w) = self.progress(targets, moves);
                let started = Instant::now();
                testbed::control_plane::restart(&self.dir, component, *down)?;
                let back = started.elapsed().as_secs_f64();
                self.rotor.check_alive()?;
                Ok(format!(
                    "{component} stopped with {s}/{n} Secrets and {w}/{n} workloads updated, down {:.0} s, answering again after {back:.1} s; rotor pid {pid} kept running",
                    down.as_secs_f64()
                ))
            }
            Fault::Aws(rate, objects) => {
                // After the round's reset of the proxy, which clears faults.
                self.proxy
                    .fault_spec(json!({"operation": "*", "kind": "error", "count": -1, "probability": rate}));
                let refresh = refresh_spec(&self.args);
                for i in 0..*objects {
                    let o = Obj::planned(
                        format!("{NS_PREFIX}{}", i % self.args.namespaces),
                        format!("f-{i:05}"),
                    );
                    o.apply(&self.admin, &refresh, cold_spec(&o, true)).await?;
                    self.objs.push(o);
                }
                Ok(format!("{objects} objects applied as the faults began"))
            }
            Fault::KillLeader => {
                let (s, w) = loop {
                    let p = self.progress(targets, moves);
                    if p.0 >= n.div_ceil(2) {
                        break p;
                    }
                    self.rotor.check_alive()?;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                };
                let mut standby = self.standby.take().ok_or("no standby replica")?;
                self.rotor.kill();
                let killed = Instant::now();
                log(format!(
                    "killed the leader with {s}/{n} Secrets and {w}/{n} workloads updated"
                ));
                let lease = Duration::from_secs(LEASE_SECONDS);
                let took_over = testbed::try_eventually(
                    "the standby to become leader",
                    lease + Duration::from_secs(30),
                    || {
                        let logs = standby.logs();
                        async move { logs.contains("became leader").then(Instant::now) }
                    },
                )
                .await?;
                let failover = took_over.duration_since(killed).as_secs_f64();
                std::mem::swap(&mut self.rotor, &mut standby);
                // Like a Deployment's controller, start a new replica in its place.
                self.standby = Some(self.launcher.start(plan.events_queue.as_deref())?);
                Ok(format!(
                    "leader SIGKILLed with {s}/{n} Secrets and {w}/{n} workloads updated; the standby became leader {failover:.1} s later (lease {:.0} s)",
                    lease.as_secs_f64()
                ))
            }
        }
    }

    /// Waits until `at` rotations of the round were made in AWS.
    async fn wait_moved(&self, moves: &Moves, at: usize, spread: Duration) -> Res<()> {
        let deadline = Instant::now() + spread + Duration::from_secs(120);
        while moves.lock().expect("moves lock").iter().flatten().count() < at {
            if Instant::now() > deadline {
                return Err(format!("fewer than {at} rotations made in time"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// The failure scenarios, in order, on the fleet `setup` provisioned
    /// (with rotor SIGKILLed during provisioning).
    pub async fn soak(&mut self) -> Res<Vec<Scenario>> {
        let mut out = Vec::new();
        let spread = self.args.refresh;
        let round = |name: &'static str, fault| RoundPlan {
            name,
            spread,
            events_queue: None,
            fault: Some(fault),
        };
        let down = Duration::from_secs(10);
        for (name, fault) in [
            (
                "kube-apiserver restarted mid-round",
                Fault::Restart("kube-apiserver", down),
            ),
            ("etcd restarted mid-round", Fault::Restart("etcd", down)),
            ("rotor SIGKILLed 20 times during a round", Fault::KillTimes(KILLS)),
        ] {
            let r = self.rotation_round(round(name, fault)).await?;
            out.push(Scenario {
                name: name.into(),
                note: r.note.clone(),
                round: Some(r),
            });
        }

        // Two replicas with leader election.
        self.rotor.stop();
        self.launcher.leader_election = true;
        self.rotor = self.launcher.start(None)?;
        self.rotor.ready(Duration::from_secs(120)).await?;
        self.wait_reconciled_all("the leader to reconcile every object")
            .await?;
        self.standby = Some(self.launcher.start(None)?);
        let name = "two replicas, the leader SIGKILLed mid-round";
        let r = self.rotation_round(round(name, Fault::KillLeader)).await?;
        out.push(Scenario {
            name: name.into(),
            note: r.note.clone(),
            round: Some(r),
        });

        out.push(self.aws_faults().await?);
        Ok(out)
    }

    /// 20% of AWS calls fail while `--soak-fault-objects` new objects are
    /// provisioned (secret and key created by rotor) and a round of rotations
    /// is followed.
    async fn aws_faults(&mut self) -> Res<Scenario> {
        let n = self.args.soak_fault_objects;
        let name = format!("AWS failing 20% of calls: {n} objects provisioned and a round of rotations");
        log(&name);
        let first = self.objs.len();
        let started = Instant::now();
        let mut r = self
            .rotation_round(RoundPlan {
                name: "AWS failing 20% of calls",
                spread: self.args.refresh,
                events_queue: None,
                fault: Some(Fault::Aws(0.2, n)),
            })
            .await?;
        let fresh: Vec<_> = self.objs[first..].iter().map(Obj::key).collect();
        let ready = self.wait_keys_ready(&fresh, Duration::from_secs(600)).await?;
        let recovered = started.elapsed().as_secs_f64();
        let calls = self.proxy.try_calls()?;
        let failed = calls.values().sum::<u64>() - self.proxy.forwarded().values().sum::<u64>();
        self.proxy.clear_faults();
        self.learn_arns().await?;
        r.note = format!(
            "{ready}/{n} new objects Ready {recovered:.0} s after the faults began; {failed} of rotor's {} AWS calls failed by the proxy",
            calls.values().sum::<u64>()
        );
        Ok(Scenario {
            name,
            note: r.note.clone(),
            round: Some(r),
        })
    }

    async fn wait_keys_ready(&mut self, keys: &[(String, String)], timeout: Duration) -> Res<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            let ready = {
                let seen = self.seen.lock().expect("seen lock");
                keys.iter().filter(|k| seen.ready.contains_key(*k)).count()
            };
            if ready == keys.len() || Instant::now() > deadline {
                return Ok(ready);
            }
            self.rotor.check_alive()?;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// AWS and Kubernetes as a clean run leaves them.
    pub async fn end_state(&self) -> Res<EndState> {
        let prefix = format!("{CLUSTER}/");
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut pages = self
            .sm
            .list_secrets()
            .filters(
                aws_sdk_secretsmanager::types::Filter::builder()
                    .key(aws_sdk_secretsmanager::types::FilterNameStringType::Name)
                    .values(&prefix)
                    .build(),
            )
            .max_results(100)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| format!("ListSecrets: {e:?}"))?;
            for s in page.secret_list() {
                let owned = s.tags().iter().any(|t| t.key() == Some(OWNER_TAG));
                if owned {
                    *names.entry(s.name().unwrap_or_default().to_owned()).or_default() += 1;
                }
            }
        }
        let kms = testbed::aws::kms(&self.moto);
        let mut aliases: HashMap<String, String> = HashMap::new();
        let mut pages = kms.list_aliases().limit(100).into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| format!("ListAliases: {e:?}"))?;
            for a in page.aliases() {
                if let (Some(name), Some(key)) = (a.alias_name(), a.target_key_id())
                    && name.starts_with(&format!("alias/{CLUSTER}/"))
                {
                    aliases.insert(name.to_owned(), key.to_owned());
                }
            }
        }
        let mut keys = HashSet::new();
        let mut pages = kms.list_keys().limit(100).into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| format!("ListKeys: {e:?}"))?;
            keys.extend(page.keys().iter().filter_map(|k| k.key_id().map(str::to_owned)));
        }
        let named: HashSet<&String> = aliases.values().collect();
        let secrets = self.secret_versions().await?;
        Ok(EndState {
            objects: self.soak_objects().count(),
            secrets: names.values().sum(),
            without_secret: self
                .soak_objects()
                .filter(|o| !names.contains_key(&o.aws_name))
                .count(),
            keys: keys.len(),
            aliases: aliases.len(),
            orphan_keys: keys.iter().filter(|k| !named.contains(k)).count(),
            stale_secrets: self
                .soak_objects()
                .filter(|o| secrets.get(&o.key()) != Some(&o.version))
                .count(),
        })
    }

    /// The objects whose secrets and keys rotor created.
    fn soak_objects(&self) -> impl Iterator<Item = &Obj> {
        self.objs.iter().filter(|o| o.created_by_rotor)
    }

    /// `rotor.dev/version-id` of every managed Secret.
    async fn secret_versions(&self) -> Res<BTreeMap<(String, String), String>> {
        secret_versions(&self.admin).await
    }
}

async fn secret_versions(admin: &Client) -> Res<BTreeMap<(String, String), String>> {
    let list = Api::<Secret>::all(admin.clone())
        .list_metadata(&ListParams::default().labels("app.kubernetes.io/managed-by=rotor"))
        .await
        .map_err(|e| format!("list Secrets: {e}"))?;
    Ok(list
        .items
        .into_iter()
        .filter_map(|m| {
            let v = m.annotations().get(VERSION_ID_ANNOTATION)?.clone();
            Some(((m.namespace().unwrap_or_default(), m.name_any()), v))
        })
        .collect())
}

/// Lease duration of the replicas (`--leader-election-lease-duration`).
pub const LEASE_SECONDS: u64 = 15;

/// The spec of an object whose secret rotor creates: a generated password
/// (the rotation rounds keep the username) and, in the soak, a key of its own.
pub fn cold_spec(o: &Obj, with_key: bool) -> serde_json::Value {
    let mut spec = json!({"secretsManager": {"initialValue": {
        "template": {"username": o.name},
        "generate": [{"key": "password", "length": 24}],
    }}});
    if with_key {
        spec["secretsManager"]["kmsKey"] = json!({"alias": format!("alias/{}", o.aws_name), "create": true});
    }
    spec
}
