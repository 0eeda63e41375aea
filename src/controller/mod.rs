//! The RotatedSecret controller: wiring. A reconcile (`reconcile.rs`) walks
//! the stages in order — spec, KMS key, AWS secret, rotation, mirror — and
//! records each stage's outcome in its condition (`status.rs`); what is
//! remembered between reconciles, and when to look again, is `memory.rs`.
//! Every step is idempotent: interrupted anywhere, the next reconcile
//! converges without duplicates.

mod cleanup;
mod drift;
mod events;
mod memory;
mod poller;
mod provision;
mod reconcile;
mod status;
mod sync;
mod tasks;
mod values;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::{Stream, StreamExt, future};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, ResourceExt};
use rand::Rng;
use tracing::{Instrument, field, info, info_span, warn};

use crate::api::RotatedSecret;
use crate::aws::Aws;
use crate::config::{AdoptionPolicy, LambdaPolicy, RunArgs};
use crate::k8s::leader::Elector;
use crate::k8s::mirror;
use crate::k8s::rollout::Workloads;
use crate::telemetry::{Metrics, Readiness};
use memory::{Memory, Policy};

/// Reconciles the controller runs beyond `--concurrency`, kept for new,
/// edited and deleted objects.
const PRIORITY_SLOTS: u16 = 2;

/// Guards AWS-side cleanup; present only while there is some to do.
pub const FINALIZER: &str = "rotor.dev/cleanup";

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub aws: Aws,
    pub cluster_name: String,
    pub adoption: AdoptionPolicy,
    pub recorder: Recorder,
    pub reporter: Reporter,
    pub metrics: Arc<Metrics>,
    pub cleanup_timeout: Duration,
    pub rotate_now_min_interval: Duration,
    pub lambda_policy: LambdaPolicy,
    pub delete_created_kms_keys: bool,
    pub allowed_kms_key_accounts: Vec<String>,
    /// Deployments, StatefulSets and DaemonSets, for rollout.
    pub workloads: Workloads,
    /// Everything remembered between reconciles: its only owner.
    pub memory: Memory,
    /// Values read in batches for objects that are behind.
    pub values: values::Values,
    /// Slots for refreshes and retries (`--concurrency`); new, edited and
    /// deleted objects do not need one.
    pub background: Arc<tokio::sync::Semaphore>,
    /// Set once the first sweep has listed every region: a start waits for
    /// it (a little) so that thousands of objects do not each describe.
    pub swept: tokio::sync::watch::Sender<bool>,
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
}

/// Runs the controller until SIGTERM/SIGINT.
pub async fn run(args: RunArgs, metrics: Arc<Metrics>, readiness: Arc<Readiness>) -> Result<(), String> {
    let client = Client::try_default()
        .await
        .map_err(|e| format!("no Kubernetes client configuration: {e}"))?;
    let aws = Aws::from_env(args.aws_write_rate, metrics.clone()).await?;
    info!(region = aws.default_region(), cluster = %args.cluster_name, "starting rotor");
    let elector = elect(&args, &client, &readiness).await;

    // One controller per watched namespace (or one for all): the API has no
    // multi-namespace watch, and separate stores keep their resyncs apart.
    let scopes: Vec<Option<String>> = if args.namespaces.is_empty() {
        vec![None]
    } else {
        args.namespaces.iter().cloned().map(Some).collect()
    };
    let workloads = watch_workloads(&client, &scopes, &readiness);
    let ctx = Arc::new(context(&args, client, aws, metrics, workloads.clone()));

    let (mut pollers, mut runs, mut synced) = (Vec::new(), Vec::new(), Vec::new());
    for scope in scopes {
        let (poller, run, listed) = scope_controller(&ctx, &args, scope);
        pollers.push(poller);
        runs.push(run);
        synced.push(listed);
    }
    tasks::start(&ctx, &args, pollers);
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

/// With leader election on, waits for the lease; a standby is healthy and
/// ready to take over meanwhile.
async fn elect(args: &RunArgs, client: &Client, readiness: &Readiness) -> Option<Elector> {
    if !args.leader_election {
        return None;
    }
    let identity =
        std::env::var("POD_NAME").unwrap_or_else(|_| format!("rotor-{:08x}", rand::rng().random::<u32>()));
    let elector = Elector::new(
        client.clone(),
        &args.leader_election_namespace,
        &args.leader_election_lease,
        identity,
        args.leader_election_lease_duration,
    );
    readiness.set(true);
    elector.acquire().await;
    readiness.set(false);
    Some(elector)
}

/// Starts the workload watches. They cannot be rebuilt in place: if they
/// stop, rollout would act on a frozen cache, so /healthz fails instead and
/// the kubelet restarts rotor.
fn watch_workloads(client: &Client, scopes: &[Option<String>], readiness: &Arc<Readiness>) -> Workloads {
    let (workloads, workload_watch) = Workloads::new(client.clone(), scopes);
    let health = readiness.clone();
    tokio::spawn(async move {
        let outcome = tokio::spawn(workload_watch).await;
        warn!(
            panicked = outcome.is_err(),
            "workload watches stopped; reporting unhealthy"
        );
        health.set_unhealthy();
    });
    workloads
}

fn context(args: &RunArgs, client: Client, aws: Aws, metrics: Arc<Metrics>, workloads: Workloads) -> Context {
    let reporter = Reporter {
        controller: "rotor".into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let memory = Memory::new(Policy {
        min_refresh: args.min_refresh_interval,
        drift_interval: args.drift_interval,
        default_region: aws.default_region().to_owned(),
    });
    Context {
        recorder: Recorder::new(client.clone(), reporter.clone()),
        reporter,
        client,
        aws,
        cluster_name: args.cluster_name.clone(),
        adoption: AdoptionPolicy::new(&args.adoption_namespaces),
        metrics,
        cleanup_timeout: args.cleanup_timeout,
        rotate_now_min_interval: args.rotate_now_min_interval,
        lambda_policy: LambdaPolicy::new(&args.allowed_lambda_arns),
        delete_created_kms_keys: args.delete_created_kms_keys,
        allowed_kms_key_accounts: args.allowed_kms_key_accounts.clone(),
        workloads,
        memory,
        values: values::Values::default(),
        background: Arc::new(tokio::sync::Semaphore::new(match args.concurrency {
            0 => tokio::sync::Semaphore::MAX_PERMITS,
            n => n.into(),
        })),
        swept: tokio::sync::watch::Sender::new(false),
    }
}

/// The controller of one scope (a namespace, or all): its RotatedSecret
/// watch, its Secret watch, and the channel the sweep and events trigger it
/// through. Returns the poller's handle, the run, and the listed flag.
fn scope_controller(
    ctx: &Arc<Context>,
    args: &RunArgs,
    scope: Option<String>,
) -> (poller::Scope, impl Future<Output = ()> + use<>, Arc<AtomicBool>) {
    let client = ctx.client.clone();
    let (rs_api, secret_api): (Api<RotatedSecret>, Api<PartialObjectMeta<Secret>>) = match &scope {
        Some(ns) => (Api::namespaced(client.clone(), ns), Api::namespaced(client, ns)),
        None => (Api::all(client.clone()), Api::all(client)),
    };
    // Metadata only, and only rotor's Secrets: no other Secret's data is
    // ever held in memory.
    let owned = watcher(
        secret_api,
        watcher::Config::default().labels(&mirror::managed_selector()),
    )
    .default_backoff()
    .touched_objects();
    let owned = retried_in_place(owned, "Secrets");
    // Readiness is read off the stream (InitDone) rather than awaited on
    // the store: kube's Store::wait_until_ready wakes only one waiter.
    let listed = Arc::new(AtomicBool::new(false));
    let listed_flag = listed.clone();
    let watched = ctx.clone();
    let filter = ctx.clone();
    let (reader, writer) = reflector::store();
    // Status-only updates (rotor's own writes) do not trigger a reconcile;
    // spec, annotation (rotate-now) and finalizer changes do
    // (`Memory::wants_reconcile`).
    let objects = watcher(rs_api, watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(slim)
        .reflect(writer)
        .inspect(move |e| match e {
            Ok(watcher::Event::InitDone) => listed_flag.store(true, Ordering::Relaxed),
            Ok(watcher::Event::Apply(rs) | watcher::Event::InitApply(rs)) => {
                watched.memory.watched(rs);
            }
            _ => {}
        })
        .applied_objects()
        .filter(move |r| future::ready(r.as_ref().map_or(true, |rs| filter.memory.wants_reconcile(rs))));
    let objects = retried_in_place(objects, "RotatedSecrets");
    let (trigger, triggered) = futures::channel::mpsc::channel(4096);
    let controller = Controller::for_stream(objects, reader)
        .owns_stream(owned)
        .reconcile_on(triggered)
        .with_config(ControllerConfig::default().concurrency(match args.concurrency {
            0 => 0,
            n => n.saturating_add(PRIORITY_SLOTS),
        }))
        .shutdown_on_signal();
    let poller = poller::Scope {
        store: controller.store(),
        trigger,
        listed: listed.clone(),
    };
    let span = info_span!("controller", namespace = field::debug(&scope));
    let run = controller
        .run(reconcile::reconcile, reconcile::error_policy, ctx.clone())
        .for_each(|res| {
            if let Err(e) = res {
                tracing::debug!(error = %e, "controller event");
            }
            future::ready(())
        })
        .instrument(span);
    (poller, run, listed)
}

/// What the cache keeps of a RotatedSecret, held for every object for the
/// life of the process: rotor never reads managed fields, labels or other
/// tools' annotations (often most of an object's bytes), and a map left
/// empty still holds a node of ~0.5 KiB. At 10,000 objects every byte kept
/// here is 10 MB.
fn slim(rs: &mut RotatedSecret) {
    let meta = &mut rs.metadata;
    meta.managed_fields = None;
    meta.labels = None;
    // Only rotor's own annotations (rotate-now) are read: anything else a
    // tenant puts there (up to 256 KiB an object) is not held, and editing
    // it triggers no reconcile.
    if let Some(a) = meta.annotations.as_mut() {
        a.retain(|k, _| k.starts_with("rotor.dev/"));
    }
    if meta.annotations.as_ref().is_some_and(|a| a.is_empty()) {
        meta.annotations = None;
    }
    // Lists grow by doubling while they are read: up to half of each is spare.
    if let Some(s) = rs.status.as_mut() {
        s.conditions.shrink_to_fit();
        s.managed_tags.shrink_to_fit();
        s.managed_replicas.shrink_to_fit();
        s.rolled_out.shrink_to_fit();
    }
}

/// A watch's errors stop here: it retries on its own backoff
/// (`default_backoff`). An error reaching the Controller would pause every
/// trigger stream behind kube-runtime's one shared backoff timer, so a failing
/// Secret watch (an API-server restart, a lost permission) would hold back
/// the sweep's rotation triggers for up to 30 s. kube's watcher logs each
/// error itself.
fn retried_in_place<K: Send>(
    stream: impl Stream<Item = Result<K, watcher::Error>> + Send,
    watch: &'static str,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send {
    stream.filter_map(move |r| {
        future::ready(match r {
            Ok(k) => Some(Ok(k)),
            Err(e) => {
                tracing::debug!(watch, error = %e, "watch failed; it retries after its backoff");
                None
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_keeps_what_reconciles_read() {
        let mut rs: RotatedSecret = serde_json::from_value(serde_json::json!({
            "apiVersion": "rotor.dev/v1alpha1", "kind": "RotatedSecret",
            "metadata": {
                "name": "a", "namespace": "ns", "uid": "u1", "generation": 2,
                "labels": {"team": "a"},
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
                "finalizers": ["rotor.dev/cleanup"],
                "managedFields": [{"manager": "kubectl", "operation": "Apply"}],
            },
            "spec": {"secretsManager": {"name": "a"}},
        }))
        .unwrap();
        let kept = rs.clone();
        slim(&mut rs);
        assert_eq!(rs.metadata.labels, None);
        assert_eq!(rs.metadata.annotations, None);
        assert_eq!(rs.metadata.managed_fields, None);
        assert_eq!(rs.metadata.finalizers, kept.metadata.finalizers);
        assert_eq!(rs.metadata.generation, Some(2));
        assert_eq!(rs.spec, kept.spec);

        let mut rotate = kept.clone();
        rotate.metadata.annotations = Some(
            [
                (crate::api::ROTATE_NOW_ANNOTATION.to_owned(), "t1".to_owned()),
                ("team.example/notes".to_owned(), "x".repeat(100_000)),
            ]
            .into(),
        );
        slim(&mut rotate);
        assert_eq!(
            rotate
                .annotations()
                .get(crate::api::ROTATE_NOW_ANNOTATION)
                .map(String::as_str),
            Some("t1")
        );
        assert_eq!(rotate.annotations().len(), 1);
    }
}
