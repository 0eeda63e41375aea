//! Reflector caches of the Deployments, StatefulSets and DaemonSets in the
//! watched scopes, and the two questions rollout asks them.

use std::future::Future;

use futures::future::{self, BoxFuture};
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tracing::warn;

use super::workload::{PodTemplated, Workload};
use crate::api::WorkloadKind;

/// The caches of one scope (a namespace, or all).
#[derive(Clone)]
struct Scope {
    deployments: Store<Deployment>,
    stateful_sets: Store<StatefulSet>,
    daemon_sets: Store<DaemonSet>,
}

/// Reflector caches of the Deployments, StatefulSets and DaemonSets in the
/// watched scopes. Cheap to clone; every clone reads the same caches. Cached
/// objects are slimmed (see `PodTemplated::slim`) to bound memory.
#[derive(Clone)]
pub struct Workloads {
    scopes: Vec<Scope>,
}

impl Workloads {
    /// Caches for each scope (`Some(namespace)`, or `None` for all
    /// namespaces), and the future that fills and updates them: spawn it (it
    /// runs until dropped; watch errors are logged and retried with backoff).
    /// Until it has listed everything, [`Workloads::is_ready`] is false.
    pub fn new(
        client: Client,
        scopes: &[Option<String>],
    ) -> (Workloads, impl Future<Output = ()> + Send + 'static) {
        let mut drivers = Vec::new();
        let scopes = scopes
            .iter()
            .map(|scope| {
                let (deployments, d) = cache::<Deployment>(&client, scope.as_deref());
                let (stateful_sets, s) = cache::<StatefulSet>(&client, scope.as_deref());
                let (daemon_sets, ds) = cache::<DaemonSet>(&client, scope.as_deref());
                drivers.extend([d, s, ds]);
                Scope {
                    deployments,
                    stateful_sets,
                    daemon_sets,
                }
            })
            .collect();
        (Workloads { scopes }, future::join_all(drivers).map(|_| ()))
    }

    /// Whether every cache has listed its objects: nothing may be restarted
    /// before that. False too once the driver future is dropped.
    ///
    /// Never awaits the stores: kube-runtime 5's store readiness wakes only
    /// the last task that polled it, and this polls it from reconciles.
    pub fn is_ready(&self) -> bool {
        self.scopes
            .iter()
            .all(|s| listed(&s.deployments) && listed(&s.stateful_sets) && listed(&s.daemon_sets))
    }

    /// `rollout.mode: Auto`: every Deployment, StatefulSet and DaemonSet in
    /// `ns` whose pod template references the Secret `secret`, sorted by kind
    /// and name.
    pub fn consumers(&self, ns: &str, secret: &str) -> Vec<Workload> {
        let mut found = Vec::new();
        for scope in &self.scopes {
            found.extend(consumers_in(&scope.deployments, ns, secret));
            found.extend(consumers_in(&scope.stateful_sets, ns, secret));
            found.extend(consumers_in(&scope.daemon_sets, ns, secret));
        }
        found.sort_by(|a, b| (a.kind, &a.name).cmp(&(b.kind, &b.name)));
        found.dedup_by(|a, b| a.kind == b.kind && a.name == b.name);
        found
    }

    /// `rollout.mode: Explicit`: the named workload, if it is in the cache.
    pub fn get(&self, ns: &str, kind: WorkloadKind, name: &str) -> Option<Workload> {
        self.scopes.iter().find_map(|scope| match kind {
            WorkloadKind::Deployment => get_in(&scope.deployments, ns, name),
            WorkloadKind::StatefulSet => get_in(&scope.stateful_sets, ns, name),
            WorkloadKind::DaemonSet => get_in(&scope.daemon_sets, ns, name),
        })
    }
}

/// Whether `store` has listed its objects, without waiting.
fn listed<K: PodTemplated>(store: &Store<K>) -> bool {
    matches!(store.wait_until_ready().now_or_never(), Some(Ok(())))
}

fn consumers_in<K: PodTemplated>(store: &Store<K>, ns: &str, secret: &str) -> Vec<Workload> {
    store
        .state_filter(|o| o.namespace().as_deref() == Some(ns) && o.references(secret))
        .iter()
        .map(|o| o.to_workload())
        .collect()
}

fn get_in<K: PodTemplated>(store: &Store<K>, ns: &str, name: &str) -> Option<Workload> {
    store
        .get(&ObjectRef::new(name).within(ns))
        .map(|o| o.to_workload())
}

fn cache<K: PodTemplated>(client: &Client, ns: Option<&str>) -> (Store<K>, BoxFuture<'static, ()>) {
    let api: Api<K> = match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let (reader, writer) = reflector::store();
    let scope = ns.map(str::to_owned);
    // The watch cache may serve a slightly stale list; that is harmless here
    // because a roll is an idempotent apply of the same value.
    let driver = watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(K::slim)
        .reflect(writer)
        .for_each(move |event| {
            if let Err(e) = event {
                warn!(kind = ?K::KIND, namespace = ?scope, error = %e, "workload watch failed; retrying");
            }
            future::ready(())
        })
        .boxed();
    (reader, driver)
}
