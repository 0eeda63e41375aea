//! The fleet: namespaces, AWS secrets, Deployments and RotatedSecrets; the
//! watchers that stamp when each Secret and Deployment changed; and rotor
//! started behind the counting proxy until every object is Ready.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_secretsmanager::types::Tag;
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, ListParams, PartialObjectMeta, Patch, PatchParams};
use kube::runtime::watcher::Event;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use rotor::api::{OWNER_TAG, RotatedSecret, VERSION_ID_ANNOTATION};
use serde_json::{Value, json};
use testbed::{AwsProxy, Rotor, RotorCommand, TestBed, uuid_like};

use crate::{Args, BENCH_LABEL, BENCH_LABEL_VALUE, Bench, CLUSTER, MANAGER, NS_PREFIX, Res, log};

/// How to start rotor: the release binary, the chart-RBAC kubeconfig, the
/// counting proxy as its AWS endpoint.
pub struct Launcher {
    bin: PathBuf,
    kubeconfig: PathBuf,
    endpoint: String,
    dir: PathBuf,
    min_refresh: String,
    extra: Vec<String>,
    env: Vec<(String, String)>,
    starts: usize,
    /// Start replicas that elect a leader (the soak's failover scenario).
    pub leader_election: bool,
}

impl Launcher {
    pub fn start(&mut self, events_queue: Option<&str>) -> Res<Rotor> {
        self.starts += 1;
        let mut args: Vec<String> = [
            "--cluster-name",
            CLUSTER,
            "--min-refresh-interval",
            &self.min_refresh,
        ]
        .map(String::from)
        .into();
        if let Some(q) = events_queue {
            args.extend(["--events-queue-url".into(), q.to_owned()]);
        }
        if self.leader_election {
            let lease = format!("{}s", crate::soak::LEASE_SECONDS);
            args.extend(
                [
                    "--leader-election",
                    "--leader-election-lease",
                    "rotor-bench",
                    "--leader-election-lease-duration",
                    &lease,
                ]
                .map(String::from),
            );
        }
        args.extend(self.extra.iter().cloned());
        let rotor = Rotor::spawn(&RotorCommand {
            bin: self.bin.clone(),
            kubeconfig: self.kubeconfig.clone(),
            aws_endpoint: self.endpoint.clone(),
            log: self.dir.join(format!("bench-rotor-{}.log", self.starts)),
            args,
            env: [(
                "RUST_LOG".into(),
                std::env::var("ROTOR_BENCH_LOG").unwrap_or_else(|_| "info".into()),
            )]
            .into_iter()
            .chain(self.env.iter().cloned())
            .collect(),
        })?;
        // hack/bench.sh kills these on exit, whatever happens to this process.
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("bench.pids"))
        {
            let _ = writeln!(f, "{}", rotor.pid);
        }
        log(format!(
            "rotor started (pid {}, log {})",
            rotor.pid,
            rotor.log_path().display()
        ));
        Ok(rotor)
    }
}

// ------------------------------------------------------------- observation

pub type Key = (String, String);

#[derive(Default)]
pub struct DeployTrack {
    pub generation: i64,
    /// First time each `rotor.dev/*` pod-template annotation value was seen.
    pub values: HashMap<String, Instant>,
}

/// What the watchers saw, stamped when the event arrived.
#[derive(Default)]
pub struct Seen {
    /// First time each `rotor.dev/version-id` value was seen on a Secret.
    pub secrets: HashMap<Key, HashMap<String, Instant>>,
    pub deploys: HashMap<Key, DeployTrack>,
    /// First time each RotatedSecret was seen Ready.
    pub ready: HashMap<Key, Instant>,
}

pub type Shared = Arc<Mutex<Seen>>;

fn spawn_watchers(client: &Client, seen: &Shared) {
    // A watch, not lists: listing 10,000 objects every few seconds would load
    // the API server the benchmark measures.
    let objects = watcher(
        Api::<RotatedSecret>::all(client.clone()),
        watcher::Config::default().labels(&format!("{BENCH_LABEL}={BENCH_LABEL_VALUE}")),
    )
    .default_backoff();
    let s = seen.clone();
    tokio::spawn(async move {
        futures::pin_mut!(objects);
        while let Some(ev) = objects.next().await {
            let (Ok(Event::Apply(rs)) | Ok(Event::InitApply(rs))) = ev else {
                continue;
            };
            if is_ready(&rs) {
                let key = (rs.namespace().unwrap_or_default(), rs.name_any());
                s.lock()
                    .expect("seen lock")
                    .ready
                    .entry(key)
                    .or_insert_with(Instant::now);
            }
        }
    });

    // Metadata only: the benchmark never reads secret values.
    let secrets = watcher(
        Api::<PartialObjectMeta<Secret>>::all(client.clone()),
        watcher::Config::default().labels("app.kubernetes.io/managed-by=rotor"),
    )
    .default_backoff();
    let s = seen.clone();
    tokio::spawn(async move {
        futures::pin_mut!(secrets);
        while let Some(ev) = secrets.next().await {
            let (Ok(Event::Apply(m)) | Ok(Event::InitApply(m))) = ev else {
                continue;
            };
            let now = Instant::now();
            let Some(v) = m.annotations().get(VERSION_ID_ANNOTATION) else {
                continue;
            };
            let key = (m.namespace().unwrap_or_default(), m.name_any());
            let mut seen = s.lock().expect("seen lock");
            seen.secrets
                .entry(key)
                .or_default()
                .entry(v.clone())
                .or_insert(now);
        }
    });

    let deploys = watcher(
        Api::<Deployment>::all(client.clone()),
        watcher::Config::default().labels(&format!("{BENCH_LABEL}={BENCH_LABEL_VALUE}")),
    )
    .default_backoff();
    let s = seen.clone();
    tokio::spawn(async move {
        futures::pin_mut!(deploys);
        while let Some(ev) = deploys.next().await {
            let (Ok(Event::Apply(d)) | Ok(Event::InitApply(d))) = ev else {
                continue;
            };
            let now = Instant::now();
            let key = (d.namespace().unwrap_or_default(), d.name_any());
            let annotations = d
                .spec
                .as_ref()
                .and_then(|s| s.template.metadata.as_ref())
                .and_then(|m| m.annotations.clone())
                .unwrap_or_default();
            let mut seen = s.lock().expect("seen lock");
            let track = seen.deploys.entry(key).or_default();
            track.generation = track.generation.max(d.metadata.generation.unwrap_or(0));
            for (k, v) in annotations {
                if k.starts_with("rotor.dev/") {
                    track.values.entry(v).or_insert(now);
                }
            }
        }
    });
}

// ------------------------------------------------------------------ fleet

pub struct Obj {
    pub ns: String,
    pub name: String,
    pub aws_name: String,
    pub arn: String,
    /// AWSCURRENT as the benchmark last set it.
    pub version: String,
    /// The Deployment consuming its Secret, for the first `rotations` objects.
    pub deployment: Option<String>,
    /// rotor created its AWS secret (`--cold`).
    pub created_by_rotor: bool,
}

impl Obj {
    pub fn key(&self) -> Key {
        (self.ns.clone(), self.name.clone())
    }
    pub fn deploy_key(&self) -> Option<Key> {
        self.deployment.clone().map(|d| (self.ns.clone(), d))
    }

    /// Creates its AWS secret, owned by the object to be (`ns/name`).
    pub async fn create(sm: &aws_sdk_secretsmanager::Client, ns: String, name: String) -> Res<Obj> {
        let aws_name = format!("{CLUSTER}/{ns}/{name}");
        let out = sm
            .create_secret()
            .name(&aws_name)
            .secret_string(json!({"username": name, "password": uuid_like()}).to_string())
            .tags(
                Tag::builder()
                    .key(OWNER_TAG)
                    .value(format!("{CLUSTER}/{ns}/{name}"))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| format!("CreateSecret {aws_name}: {e:?}"))?;
        Ok(Obj {
            arn: out.arn().unwrap_or_default().to_owned(),
            version: out.version_id().unwrap_or_default().to_owned(),
            deployment: None,
            created_by_rotor: false,
            ns,
            name,
            aws_name,
        })
    }

    /// An object whose AWS secret rotor is to create (`--cold`); its ARN and
    /// version are filled in from its status once it is Ready.
    pub fn planned(ns: String, name: String) -> Obj {
        Obj {
            aws_name: format!("{CLUSTER}/{ns}/{name}"),
            arn: String::new(),
            version: String::new(),
            deployment: None,
            created_by_rotor: true,
            ns,
            name,
        }
    }

    /// Server-side applies its RotatedSecret, `spec` merged into the
    /// benchmark's (its AWS secret, the refresh interval, rollout Auto).
    pub async fn apply(&self, admin: &Client, refresh: &str, spec: Value) -> Res<()> {
        let mut full = json!({
            "secretsManager": {"name": self.aws_name},
            "refreshInterval": refresh,
            "rollout": {"mode": "Auto"},
        });
        testbed::merge_json(&mut full, spec);
        let body = json!({
            "apiVersion": "rotor.dev/v1alpha1", "kind": "RotatedSecret",
            "metadata": {"name": self.name, "labels": {BENCH_LABEL: BENCH_LABEL_VALUE}},
            "spec": full,
        });
        Api::<RotatedSecret>::namespaced(admin.clone(), &self.ns)
            .patch(
                &self.name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await
            .map(drop)
            .map_err(|e| format!("RotatedSecret {}: {e}", self.name))
    }
}

/// `spec.refreshInterval` as the objects carry it.
pub fn refresh_spec(args: &Args) -> String {
    format!("{}s", args.refresh.as_secs_f64())
}

async fn create_fleet(
    args: &Args,
    admin: &Client,
    sm: &aws_sdk_secretsmanager::Client,
) -> Res<(Vec<Obj>, String)> {
    let pp = PatchParams::apply(MANAGER).force();
    for i in 0..args.namespaces {
        let ns = format!("{NS_PREFIX}{i}");
        let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
        Api::<Namespace>::all(admin.clone())
            .patch(&ns, &pp, &Patch::Apply(&body))
            .await
            .map_err(|e| format!("namespace {ns}: {e}"))?;
    }

    let start = Instant::now();
    let objs: Vec<Obj> = stream::iter(0..args.objects)
        .map(|i| async move {
            let ns = format!("{NS_PREFIX}{}", i % args.namespaces);
            let name = format!("s-{i:05}");
            let mut o = if args.cold {
                Obj::planned(ns, name)
            } else {
                Obj::create(sm, ns, name).await?
            };
            o.deployment = (i < args.rotations).then(|| format!("app-{i:05}"));
            Ok::<_, String>((i, o))
        })
        .buffer_unordered(args.parallelism)
        .try_collect::<BTreeMap<_, _>>()
        .await?
        .into_values()
        .collect();
    let aws_secs = start.elapsed();

    let start = Instant::now();
    // Deployments first, so that rotor's workload cache has them from the start.
    stream::iter(objs.iter().filter(|o| o.deployment.is_some()))
        .map(|o| {
            let api: Api<Deployment> = Api::namespaced(admin.clone(), &o.ns);
            let pp = pp.clone();
            let name = o.deployment.clone().unwrap_or_default();
            let body = json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": name, "labels": {BENCH_LABEL: BENCH_LABEL_VALUE}},
                "spec": {
                    // No kubelet on the test bed: pods would stay Pending, so none are asked for.
                    "replicas": 0,
                    "selector": {"matchLabels": {"app": name}},
                    "template": {
                        "metadata": {"labels": {"app": name}},
                        "spec": {"containers": [{
                            "name": "app", "image": "busybox",
                            "envFrom": [{"secretRef": {"name": o.name}}],
                        }]},
                    },
                },
            });
            async move {
                api.patch(&name, &pp, &Patch::Apply(&body))
                    .await
                    .map(drop)
                    .map_err(|e| format!("Deployment {name}: {e}"))
            }
        })
        .buffer_unordered(args.parallelism)
        .try_collect::<Vec<()>>()
        .await?;
    let refresh = refresh_spec(args);
    stream::iter(objs.iter())
        .map(|o| {
            // Cold: rotor creates the secret, with the username the rotation
            // rounds keep and a generated password.
            let spec = if args.cold {
                crate::soak::cold_spec(o, args.soak)
            } else {
                json!({})
            };
            o.apply(admin, &refresh, spec)
        })
        .buffer_unordered(args.parallelism)
        .try_collect::<Vec<()>>()
        .await?;
    Ok((
        objs,
        format!(
            "AWS secrets {:.1} s, Deployments + RotatedSecrets {:.1} s",
            aws_secs.as_secs_f64(),
            start.elapsed().as_secs_f64()
        ),
    ))
}

pub fn is_ready(rs: &RotatedSecret) -> bool {
    rs.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

/// The benchmark's RotatedSecrets.
pub async fn list_objects(admin: &Client) -> Res<Vec<RotatedSecret>> {
    let lp = ListParams::default().labels(&format!("{BENCH_LABEL}={BENCH_LABEL_VALUE}"));
    Api::<RotatedSecret>::all(admin.clone())
        .list(&lp)
        .await
        .map(|l| l.items)
        .map_err(|e| format!("list RotatedSecrets: {e}"))
}

async fn wait_all_ready(
    admin: &Client,
    seen: &Shared,
    n: usize,
    timeout: Duration,
    rotor: &mut Rotor,
) -> Res<Duration> {
    let start = Instant::now();
    let mut last_report = Instant::now();
    loop {
        rotor.check_alive()?;
        let ready = seen.lock().expect("seen lock").ready.len();
        if ready >= n {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            let list = list_objects(admin).await?;
            let stuck: Vec<String> = list
                .iter()
                .filter(|r| !is_ready(r))
                .take(5)
                .map(|r| {
                    format!(
                        "{}/{}: {}",
                        r.namespace().unwrap_or_default(),
                        r.name_any(),
                        serde_json::to_string(&r.status.as_ref().map(|s| &s.conditions)).unwrap_or_default()
                    )
                })
                .collect();
            return Err(format!(
                "only {ready}/{n} RotatedSecrets Ready after {timeout:?}; e.g.\n{}\nrotor log tail:\n{}",
                stuck.join("\n"),
                rotor.log_tail(20)
            ));
        }
        if last_report.elapsed() > Duration::from_secs(15) {
            log(format!(
                "{ready}/{n} Ready after {:.0} s",
                start.elapsed().as_secs_f64()
            ));
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Current `metadata.generation` of the benchmark's Deployments.
pub async fn generations(admin: &Client) -> Res<HashMap<Key, i64>> {
    let list = Api::<Deployment>::all(admin.clone())
        .list(&ListParams::default().labels(&format!("{BENCH_LABEL}={BENCH_LABEL_VALUE}")))
        .await
        .map_err(|e| format!("list Deployments: {e}"))?;
    Ok(list
        .items
        .iter()
        .map(|d| {
            (
                (d.namespace().unwrap_or_default(), d.name_any()),
                d.metadata.generation.unwrap_or(0),
            )
        })
        .collect())
}

/// What setup measured.
pub struct Setup {
    pub apiserver: String,
    /// How long creating the fleet took.
    pub times: String,
    /// From rotor's start to every object Ready: rotor created the secrets
    /// (`--cold`) or they existed.
    pub ready_in: Duration,
    /// How many times rotor was started before every object was Ready.
    pub starts: usize,
    pub startup_calls: BTreeMap<String, u64>,
    /// `--cold`: a second rotor started over the Ready fleet, until it has
    /// reconciled every object, and its AWS calls.
    pub warm: Option<(Duration, BTreeMap<String, u64>)>,
    /// Deployment generations once every object was Ready.
    pub baseline: HashMap<Key, i64>,
    /// Deployments changed at first sync (before any rotation).
    pub first_sync_restarts: usize,
}

impl Bench {
    /// Installs the CRD and RBAC, creates the fleet, starts the proxy and
    /// rotor, and waits until every object is Ready.
    pub async fn setup(args: Args) -> Res<(Bench, Setup)> {
        let bed = TestBed::from_env()?;
        // Run a private copy: a `cargo build` elsewhere must not swap the binary
        // between rotor's restarts.
        let bin = bed.dir.join("rotor-bench-bin");
        let source = args
            .rotor_bin
            .clone()
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_rotor").into());
        std::fs::copy(&source, &bin).map_err(|e| format!("copy the rotor binary: {e}"))?;

        let admin = testbed::k8s::client_from(&bed.admin_kubeconfig).await?;
        let apiserver = admin
            .apiserver_version()
            .await
            .map(|v| v.git_version)
            .map_err(|e| format!("API server: {e}"))?;
        testbed::k8s::install_cluster_wide(&admin, &rotor::api::crd::crd(), MANAGER, "rotor-bench").await?;
        let sm = testbed::aws::secrets_manager(&bed.aws_endpoint);
        let sqs = testbed::aws::sqs(&bed.aws_endpoint);

        let seen: Shared = Arc::default();
        spawn_watchers(&admin, &seen);

        log(format!(
            "creating {} AWS secrets and RotatedSecrets in {} namespaces, {} Deployments",
            args.objects, args.namespaces, args.rotations
        ));
        let (objs, times) = tokio::time::timeout(Duration::from_secs(600), create_fleet(&args, &admin, &sm))
            .await
            .map_err(|_| "setup did not finish in 10 minutes".to_owned())??;
        log(format!("setup: {times}"));

        let proxy = AwsProxy::try_start(&bed.aws_endpoint)?;
        let mut launcher = Launcher {
            bin,
            kubeconfig: bed.rotor_kubeconfig.clone(),
            endpoint: proxy.url.clone(),
            dir: bed.dir.clone(),
            min_refresh: args.min_refresh_interval.clone(),
            extra: args.rotor_args.clone(),
            env: args.rotor_env.clone(),
            starts: 0,
            leader_election: false,
        };
        let started = Instant::now();
        let mut rotor = launcher.start(None)?;
        if args.soak {
            // SIGKILLs while rotor creates secrets and keys: about three
            // writes an object at the default 20 a second, so the kills
            // spread over the time provisioning takes.
            let kills = crate::soak::KILLS;
            let gap = (args.objects as f64 * 3.0 / 20.0 / (kills / 2) as f64).clamp(2.0, 15.0);
            crate::soak::kill_randomly(&mut launcher, &mut rotor, kills, gap, None).await?;
        }
        rotor.ready(Duration::from_secs(120)).await?;
        let ready_timeout = Duration::from_secs(120) + Duration::from_millis(500) * args.objects as u32;
        wait_all_ready(&admin, &seen, args.objects, ready_timeout, &mut rotor).await?;
        let ready_in = started.elapsed();
        let starts = launcher.starts;
        let startup_calls = proxy.try_calls()?;
        log(format!(
            "{} start: all {} Ready {:.1} s after rotor started ({} AWS calls: {})",
            if args.cold { "cold" } else { "warm" },
            args.objects,
            ready_in.as_secs_f64(),
            startup_calls.values().sum::<u64>(),
            crate::report::ops(&startup_calls, 1.0)
        ));
        let mut bench = Bench {
            args,
            admin,
            sm,
            sqs,
            moto: bed.aws_endpoint,
            dir: bed.dir.clone(),
            seen,
            objs,
            proxy,
            launcher,
            rotor,
            standby: None,
        };
        let warm = if bench.args.cold {
            bench.learn_arns().await?;
            Some(bench.warm_restart().await?)
        } else {
            None
        };
        let baseline = generations(&bench.admin).await?;
        let first_sync_restarts = baseline.values().filter(|&&g| g != 1).count();
        let setup = Setup {
            apiserver,
            times,
            ready_in,
            starts,
            startup_calls,
            warm,
            baseline,
            first_sync_restarts,
        };
        Ok((bench, setup))
    }

    /// ARN and AWSCURRENT of the secrets rotor created, from the status.
    pub async fn learn_arns(&mut self) -> Res<()> {
        let status: HashMap<Key, (String, String)> = list_objects(&self.admin)
            .await?
            .into_iter()
            .filter_map(|rs| {
                let st = rs.status.as_ref()?;
                let key = (rs.namespace().unwrap_or_default(), rs.name_any());
                Some((key, (st.arn.clone()?, st.current_version_id.clone()?)))
            })
            .collect();
        for o in self.objs.iter_mut().filter(|o| o.created_by_rotor) {
            let (arn, version) = status.get(&o.key()).ok_or_else(|| {
                format!(
                    "{}/{} is Ready without an ARN and version in its status",
                    o.ns, o.name
                )
            })?;
            (o.arn, o.version) = (arn.clone(), version.clone());
        }
        Ok(())
    }

    /// Stops rotor and starts another over the Ready fleet: the restart of a
    /// real deployment. Done when it has reconciled every object.
    async fn warm_restart(&mut self) -> Res<(Duration, BTreeMap<String, u64>)> {
        self.rotor.stop();
        self.proxy.try_reset()?;
        let started = Instant::now();
        self.rotor = self.launcher.start(None)?;
        self.rotor.ready(Duration::from_secs(120)).await?;
        self.wait_reconciled_all("warm start: every object reconciled")
            .await?;
        let took = started.elapsed();
        let calls = self.proxy.try_calls()?;
        log(format!(
            "warm start: all {} reconciled {:.1} s after rotor started ({} AWS calls: {})",
            self.objs.len(),
            took.as_secs_f64(),
            calls.values().sum::<u64>(),
            crate::report::ops(&calls, 1.0)
        ));
        Ok((took, calls))
    }

    /// Waits until rotor has reconciled every object at least once since it
    /// started (after a restart).
    pub async fn wait_reconciled_all(&self, what: &str) -> Res<()> {
        let total = self.objs.len() as u64;
        let r = &self.rotor;
        testbed::try_eventually(
            what,
            Duration::from_secs(120) + Duration::from_millis(500) * self.objs.len() as u32,
            || async { r.reconciles().await.ok().filter(|&c| c >= total) },
        )
        .await
        .map(drop)
    }
}
