//! Restarting the workloads that consume a Secret: discovery, the decision
//! rule, and the pod-template patch.
//!
//! What this module provides:
//!
//! - [`annotation_key`]`(secret_name) -> String`: the pod-template annotation
//!   `rotor.dev/<secret-name>` (hashed for names over 63 characters).
//! - [`pod_spec_references`]`(&PodSpec, secret) -> bool`: whether a pod spec
//!   uses the Secret (env `secretKeyRef`, `envFrom.secretRef`, `secret` and
//!   `projected` volumes; containers, init and ephemeral containers).
//! - [`Workloads`]: reflector caches of Deployments, StatefulSets and
//!   DaemonSets. [`Workloads::new`]`(client, &scopes)` returns the cache and
//!   the future that keeps it updated (spawn it); then
//!   [`Workloads::is_ready`], [`Workloads::consumers`]`(ns, secret)` for
//!   `rollout.mode: Auto` and [`Workloads::get`]`(ns, kind, name)` for
//!   `Explicit` targets, both giving [`Workload`]s.
//! - [`needs_roll`]: the pure decision "restart this workload for this
//!   version?", exactly once per version and never spuriously.
//! - [`roll`]`(client, ns, kind, name, key, version)`: server-side applies
//!   only `spec.template.metadata.annotations[key] = version`.
//!
//! A typical reconcile, once the Secret holds `version`:
//!
//! ```ignore
//! let key = annotation_key(secret);
//! for w in workloads.consumers(ns, secret) {
//!     if needs_roll(w.annotation(&key), w.created, version, initial, written_at) {
//!         roll(&client, ns, w.kind, &w.name, &key, version).await?;
//!     }
//! }
//! ```
//!
//! Inside: `podspec` (pure: does a pod spec use a Secret, and its slimmed
//! copy), `workload` (the three kinds seen uniformly, and the cached
//! [`Workload`]), `cache` ([`Workloads`]), `roll` (the annotation, the
//! decision and the apply).

mod cache;
#[cfg(test)]
mod fixtures;
mod podspec;
mod roll;
mod workload;

pub use cache::Workloads;
pub use podspec::pod_spec_references;
pub use roll::{
    ANNOTATION_PREFIX, annotation_key, field_manager, needs_roll, roll, template_annotation_patch,
};
pub use workload::Workload;
