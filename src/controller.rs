//! The RotatedSecret controller: reconcile, error policy and wiring.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, future};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PartialObjectMeta, Patch, PatchParams};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Predicate, PredicateConfig, WatchStreamExt, predicates, reflector, watcher};
use kube::{Client, Resource, ResourceExt};
use rand::Rng;
use serde_json::json;
use tracing::{Instrument, field, info, info_span, warn};

use crate::api::conditions::{self, Condition};
use crate::api::{RotatedSecret, RotatedSecretStatus, duration, validate};
use crate::aws::Aws;
use crate::aws::secrets::Description;
use crate::config::{AdoptionPolicy, RunArgs};
use crate::k8s::{FIELD_MANAGER, mirror};
use crate::telemetry::{Metrics, Readiness};
use crate::{Error, Result};

const DEFAULT_REFRESH: Duration = Duration::from_secs(60);
const BACKOFF_BASE: Duration = Duration::from_secs(2);
const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub aws: Aws,
    pub cluster_name: String,
    pub adoption: AdoptionPolicy,
    pub recorder: Recorder,
    pub reporter: Reporter,
    pub metrics: Arc<Metrics>,
    pub min_refresh: Duration,
    /// Consecutive transient failures per object, for exponential backoff.
    failures: Mutex<HashMap<ObjectRef<RotatedSecret>, u32>>,
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

    fn refresh_interval(&self, rs: &RotatedSecret) -> Duration {
        duration::parse(&rs.spec.refresh_interval)
            .unwrap_or(DEFAULT_REFRESH)
            .max(self.min_refresh)
    }
}

/// Which status condition a failure belongs to.
#[derive(Clone, Copy)]
enum Stage {
    Spec,
    Secret,
    Sync,
}

impl Stage {
    fn condition(self) -> &'static str {
        match self {
            Stage::Spec => conditions::READY,
            Stage::Secret => conditions::SECRET_READY,
            Stage::Sync => conditions::SYNCED,
        }
    }
}

#[tracing::instrument(skip(rs, ctx), fields(namespace = rs.namespace(), name = %rs.name_any()))]
async fn reconcile(rs: Arc<RotatedSecret>, ctx: Arc<Context>) -> Result<Action> {
    let start = Instant::now();
    let res = apply(&rs, &ctx).await;
    ctx.metrics
        .reconciled(start.elapsed(), res.as_ref().err().map(Error::category));
    if res.is_ok() {
        ctx.failures
            .lock()
            .expect("backoff lock")
            .remove(&ObjectRef::from(rs.as_ref()));
    }
    res
}

/// Transient errors back off exponentially per object, with jitter so many
/// objects failing together (an AWS outage) do not retry in lockstep.
fn error_policy(rs: Arc<RotatedSecret>, err: &Error, ctx: Arc<Context>) -> Action {
    let attempts = {
        let mut failures = ctx.failures.lock().expect("backoff lock");
        let n = failures.entry(ObjectRef::from(rs.as_ref())).or_default();
        *n = n.saturating_add(1);
        *n
    };
    let delay = backoff(attempts).min(ctx.refresh_interval(&rs).max(BACKOFF_BASE) * 5);
    let jittered = delay.mul_f64(rand::rng().random_range(0.8..1.2));
    warn!(error = %err, category = err.category(), retry_in = ?jittered, "reconcile failed");
    Action::requeue(jittered)
}

fn backoff(attempts: u32) -> Duration {
    BACKOFF_BASE
        .saturating_mul(1u32 << attempts.saturating_sub(1).min(16))
        .min(BACKOFF_MAX)
}

/// Converges one object and records the outcome in its status. Failures that
/// need the user (bad spec, ownership) requeue at the refresh interval;
/// transient ones are returned so that `error_policy` backs off.
async fn apply(rs: &RotatedSecret, ctx: &Context) -> Result<Action> {
    let old_status = rs.status.clone().unwrap_or_default();
    let mut status = old_status.clone();
    let generation = rs.metadata.generation;
    let now = Timestamp::now().to_string();

    let outcome = sync(rs, ctx, &mut status).await;
    if let Err((stage, err)) = &outcome {
        conditions::upsert(
            &mut status.conditions,
            Condition::new(stage.condition(), false, err.reason(), err.to_string()),
            generation,
            &now,
        );
    }
    let ready = match &outcome {
        Ok(()) => Condition::new(
            conditions::READY,
            true,
            "Ready",
            "AWS secret found and Secret in sync",
        ),
        Err((_, err)) => Condition::new(conditions::READY, false, err.reason(), err.to_string()),
    };
    conditions::upsert(&mut status.conditions, ready, generation, &now);
    status.observed_generation = generation;

    if status != old_status {
        patch_status(ctx, rs, &status).await.map_err(Error::Kube)?;
    }

    match outcome {
        Ok(()) => Ok(Action::requeue(ctx.refresh_interval(rs))),
        Err((_, err)) => {
            publish(
                ctx,
                rs,
                EventType::Warning,
                err.reason(),
                "Reconcile",
                err.to_string(),
            )
            .await;
            if err.is_transient() {
                Err(err)
            } else {
                warn!(error = %err, category = err.category(), "reconcile needs attention");
                Ok(Action::requeue(ctx.refresh_interval(rs)))
            }
        }
    }
}

async fn sync(
    rs: &RotatedSecret,
    ctx: &Context,
    status: &mut RotatedSecretStatus,
) -> Result<(), (Stage, Error)> {
    let generation = rs.metadata.generation;
    let now = Timestamp::now().to_string();

    validate::validate(&rs.spec).map_err(|p| (Stage::Spec, Error::InvalidSpec(p)))?;

    let desc = ensure_secret(rs, ctx)
        .await
        .map_err(|e| (Stage::Secret, e))?;
    status.arn = Some(desc.arn.clone());
    status.current_version_id = desc.current_version.clone();
    status.rotation_enabled = Some(desc.rotation_enabled);
    status.last_rotated_date = desc.last_rotated.clone();
    status.next_rotation_date = desc.next_rotation.clone();
    conditions::upsert(
        &mut status.conditions,
        Condition::new(
            conditions::SECRET_READY,
            true,
            "Available",
            "AWS secret exists and is owned by this object",
        ),
        generation,
        &now,
    );

    let synced = sync_secret(rs, ctx, &desc)
        .await
        .map_err(|e| (Stage::Sync, e))?;
    if status.synced_version_id.as_deref() != Some(synced.version_id.as_str()) || synced.written {
        status.last_sync_time = Some(now.clone());
    }
    status.synced_version_id = Some(synced.version_id.clone());
    if synced.version_id != desc.current_version.clone().unwrap_or_default() {
        // AWSCURRENT moved between describe and read: the read is newer.
        status.current_version_id = Some(synced.version_id.clone());
    }
    conditions::upsert(
        &mut status.conditions,
        Condition::new(
            conditions::SYNCED,
            true,
            "Synced",
            format!(
                "Secret {} holds version {}",
                rs.target_name(),
                synced.version_id
            ),
        ),
        generation,
        &now,
    );
    Ok(())
}

/// Finds the AWS secret and enforces the ownership rule: only a secret whose
/// owner tag names this object (or an untagged one being adopted) is used.
async fn ensure_secret(rs: &RotatedSecret, ctx: &Context) -> Result<Description> {
    let sm = &rs.spec.secrets_manager;
    let rc = ctx.aws.region(sm.region.as_deref());
    let Some(desc) = ctx.aws.describe_secret(&rc, &sm.name).await? else {
        return Err(Error::Refused {
            reason: "SecretNotFound",
            message: format!(
                "AWS secret {:?} does not exist in region {}; create it, or check secretsManager.name and region",
                sm.name, rc.region
            ),
        });
    };
    if desc.deleted {
        return Err(Error::Refused {
            reason: "SecretScheduledForDeletion",
            message: format!(
                "AWS secret {:?} is scheduled for deletion; restore it (aws secretsmanager restore-secret) to use it",
                sm.name
            ),
        });
    }
    if let Some(pinned) = rs.status.as_ref().and_then(|s| s.arn.as_deref())
        && pinned != desc.arn
    {
        return Err(Error::Refused {
            reason: "SecretIdentityChanged",
            message: format!(
                "this object manages {pinned} but {:?} now resolves to {}: secretsManager.name and region are \
                 immutable; restore them, or delete and re-create the RotatedSecret",
                sm.name, desc.arn
            ),
        });
    }

    let me = ctx.owner_tag_value(rs);
    match desc.owner() {
        Some(owner) if owner == me => Ok(desc),
        Some(owner) => Err(Error::Refused {
            reason: "OwnedByAnother",
            message: format!(
                "AWS secret {:?} is owned by {owner:?} (tag {}); rotor will not read or change it for {me:?}",
                sm.name,
                crate::api::OWNER_TAG
            ),
        }),
        None if !sm.adopt => Err(Error::Refused {
            reason: "AdoptionRequired",
            message: format!(
                "AWS secret {:?} exists but has no {} tag; set spec.secretsManager.adopt: true to take it over",
                sm.name,
                crate::api::OWNER_TAG
            ),
        }),
        None if !ctx.adoption.allows(&rs.namespace().unwrap_or_default()) => Err(Error::Refused {
            reason: "AdoptionNotAllowed",
            message: format!(
                "AWS secret {:?} has no owner tag and adoption is not allowed in namespace {:?}; \
                 the operator must list it in --adoption-namespaces",
                sm.name,
                rs.namespace().unwrap_or_default()
            ),
        }),
        None => {
            ctx.aws
                .tag_secret(&rc, &desc.arn, crate::api::OWNER_TAG, &me)
                .await?;
            info!(arn = %desc.arn, "adopted AWS secret");
            publish(
                ctx,
                rs,
                EventType::Normal,
                "Adopted",
                "Adopt",
                format!(
                    "Adopted AWS secret {} (tagged {}={me})",
                    desc.arn,
                    crate::api::OWNER_TAG
                ),
            )
            .await;
            let mut desc = desc;
            desc.tags.insert(crate::api::OWNER_TAG.to_owned(), me);
            Ok(desc)
        }
    }
}

struct Synced {
    version_id: String,
    written: bool,
}

/// Mirrors AWSCURRENT into the target Secret, reading the value only when the
/// Secret does not already hold this version rendered from this generation.
async fn sync_secret(rs: &RotatedSecret, ctx: &Context, desc: &Description) -> Result<Synced> {
    let ns = rs.namespace().unwrap_or_default();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let name = rs.target_name();
    let existing = mirror::get(&api, name).await?;
    if let Some(existing) = &existing {
        if !mirror::is_controlled_by(existing, rs) {
            return Err(Error::Refused {
                reason: "SecretConflict",
                message: format!(
                    "Secret {ns}/{name} exists and is not owned by this RotatedSecret; rotor will not overwrite it. \
                     Delete it or set spec.target.name to another name"
                ),
            });
        }
        let generation = rs.metadata.generation.unwrap_or_default().to_string();
        if let Some(current) = desc.current_version.as_deref()
            && mirror::written_for(existing) == (Some(current), Some(generation.as_str()))
        {
            return Ok(Synced {
                version_id: current.to_owned(),
                written: false,
            });
        }
    }
    if desc.current_version.is_none() {
        return Err(Error::Refused {
            reason: "NoCurrentVersion",
            message: format!(
                "AWS secret {:?} has no AWSCURRENT version yet",
                rs.spec.secrets_manager.name
            ),
        });
    }

    let rc = ctx.aws.region(rs.spec.secrets_manager.region.as_deref());
    let value = ctx.aws.current_value(&rc, &desc.arn).await?;
    let data = mirror::render(&rs.spec.target, &value)?;
    mirror::apply(&api, rs, &value.version_id, &data).await?;
    ctx.metrics.secret_written();
    info!(secret = name, version_id = %value.version_id, "Secret written");
    publish(
        ctx,
        rs,
        EventType::Normal,
        "Synced",
        "Sync",
        format!("Secret {name} now holds AWS version {}", value.version_id),
    )
    .await;
    Ok(Synced {
        version_id: value.version_id,
        written: true,
    })
}

async fn patch_status(
    ctx: &Context,
    rs: &RotatedSecret,
    status: &RotatedSecretStatus,
) -> kube::Result<()> {
    let api: Api<RotatedSecret> =
        Api::namespaced(ctx.client.clone(), &rs.namespace().unwrap_or_default());
    let patch = json!({
        "apiVersion": RotatedSecret::api_version(&()),
        "kind": RotatedSecret::kind(&()),
        "status": status,
    });
    api.patch_status(
        &rs.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map(drop)
}

/// Publishes an Event; failing to publish is logged, never fails a reconcile.
async fn publish(
    ctx: &Context,
    rs: &RotatedSecret,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note),
        action: action.to_owned(),
        secondary: None,
    };
    // kube's Recorder folds events with the same reason into one series and
    // keeps the first note. Repeated failures should fold; a Normal event
    // (a new version synced, a workload restarted) names a distinct change,
    // so it goes through a fresh recorder and keeps its own note.
    let fresh;
    let recorder = match type_ {
        EventType::Warning => &ctx.recorder,
        EventType::Normal => {
            fresh = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
            &fresh
        }
    };
    if let Err(e) = recorder.publish(&event, &rs.object_ref(&())).await {
        warn!(error = %e, "publishing event failed");
    }
}

/// Runs the controller until SIGTERM/SIGINT.
pub async fn run(
    args: RunArgs,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
) -> Result<(), String> {
    let client = Client::try_default()
        .await
        .map_err(|e| format!("no Kubernetes client configuration: {e}"))?;
    let aws = Aws::from_env(metrics.clone()).await?;
    info!(region = aws.default_region(), cluster = %args.cluster_name, "starting rotor");
    let reporter = Reporter {
        controller: "rotor".into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let recorder = Recorder::new(client.clone(), reporter.clone());
    let ctx = Arc::new(Context {
        client: client.clone(),
        aws,
        cluster_name: args.cluster_name.clone(),
        adoption: AdoptionPolicy::new(&args.adoption_namespaces),
        recorder,
        reporter,
        metrics,
        min_refresh: args.min_refresh_interval,
        failures: Mutex::default(),
    });

    // One controller per watched namespace (or one for all): the API has no
    // multi-namespace watch, and separate stores keep their resyncs apart.
    let scopes: Vec<Option<String>> = if args.namespaces.is_empty() {
        vec![None]
    } else {
        args.namespaces.iter().cloned().map(Some).collect()
    };
    let mut stores = Vec::new();
    let mut runs = Vec::new();
    for scope in scopes {
        let (rs_api, secret_api): (Api<RotatedSecret>, Api<PartialObjectMeta<Secret>>) =
            match &scope {
                Some(ns) => (
                    Api::namespaced(client.clone(), ns),
                    Api::namespaced(client.clone(), ns),
                ),
                None => (Api::all(client.clone()), Api::all(client.clone())),
            };
        // Metadata only, and only rotor's Secrets: no other Secret's data is
        // ever held in memory.
        let owned = watcher(
            secret_api,
            watcher::Config::default().labels(&mirror::managed_selector()),
        )
        .default_backoff()
        .touched_objects();
        // Status-only updates (rotor's own writes) do not trigger a reconcile;
        // spec, annotation (rotate-now) and finalizer changes do.
        let (reader, writer) = reflector::store();
        let objects = watcher(rs_api, watcher::Config::default().any_semantic())
            .default_backoff()
            .reflect(writer)
            .applied_objects()
            .predicate_filter(
                predicates::generation
                    .combine(predicates::annotations)
                    .combine(predicates::finalizers),
                PredicateConfig::default(),
            );
        let controller = Controller::for_stream(objects, reader)
            .owns_stream(owned)
            .with_config(ControllerConfig::default().concurrency(args.concurrency))
            .shutdown_on_signal();
        stores.push(controller.store());
        let span = info_span!("controller", namespace = field::debug(&scope));
        runs.push(
            controller
                .run(reconcile, error_policy, ctx.clone())
                .for_each(|res| {
                    if let Err(e) = res {
                        tracing::debug!(error = %e, "controller event");
                    }
                    future::ready(())
                })
                .instrument(span),
        );
    }
    tokio::spawn(async move {
        for store in stores {
            if store.wait_until_ready().await.is_err() {
                return;
            }
        }
        info!("caches synced");
        readiness.set_ready();
    });
    future::join_all(runs).await;
    info!("controller stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(1), Duration::from_secs(2));
        assert_eq!(backoff(2), Duration::from_secs(4));
        assert_eq!(backoff(5), Duration::from_secs(32));
        assert_eq!(backoff(40), BACKOFF_MAX);
    }
}
