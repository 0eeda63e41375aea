//! Logging, Prometheus metrics and the /metrics, /healthz, /readyz endpoints.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tracing_subscriber::{EnvFilter, prelude::*};

use crate::config::LogFormat;

pub fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Json => registry.with(tracing_subscriber::fmt::layer().json()).init(),
        LogFormat::Text => registry.with(tracing_subscriber::fmt::layer()).init(),
    }
}

/// Replaces the default panic output (the payload on stderr) with an error
/// log line naming only where it happened: a panic message can quote
/// whatever value was at hand, and logs must never hold secret material.
pub fn log_panics_without_messages() {
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        tracing::error!(%location, "panic (message withheld: it may quote secret material)");
    }));
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    category: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AwsCallLabels {
    operation: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabels {
    task: &'static str,
}

/// One label set per RotatedSecret, as kube-state-metrics does for its
/// objects: names, never values or error text.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ObjectLabels {
    namespace: String,
    name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
    git_sha: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: &'static str,
}

/// rotor's metrics, all under the `rotor_` prefix. Labels are bounded sets
/// (outcomes, categories, operation names), never names or error text.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<OutcomeLabels, Counter>,
    reconcile_errors: Family<ErrorLabels, Counter>,
    reconcile_duration: Histogram,
    aws_calls: Family<AwsCallLabels, Counter>,
    aws_call_duration: Family<OperationLabels, Histogram>,
    secret_writes: Counter,
    rotations_observed: Family<SourceLabels, Counter>,
    rotation_to_secret: Histogram,
    rotation_to_rollout: Histogram,
    restarts: Family<KindLabels, Counter>,
    check_age: Gauge<f64, AtomicU64>,
    sweeps: Family<OutcomeLabels, Counter>,
    sweep_duration: Histogram,
    reconcile_panics: Counter,
    task_restarts: Family<TaskLabels, Counter>,
    ready: Family<ObjectLabels, Gauge>,
    /// The objects `ready` has a series for, so deleted ones can be dropped.
    ready_objects: std::sync::Mutex<std::collections::HashSet<(String, String)>>,
    build_info: Family<BuildLabels, Gauge>,
}

// One registration list, in the order of docs/metrics.md: long, but splitting it
// would scatter the metric names a reader looks for.
impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("rotor");
        let reconciles = Family::<OutcomeLabels, Counter>::default();
        registry.register("reconciles", "Reconciles by outcome", reconciles.clone());
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Failed reconciles by error category",
            reconcile_errors.clone(),
        );
        let reconcile_duration = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconcile",
            reconcile_duration.clone(),
        );
        let aws_calls = Family::<AwsCallLabels, Counter>::default();
        registry.register(
            "aws_calls",
            "AWS API calls by operation and outcome",
            aws_calls.clone(),
        );
        let aws_call_duration = Family::<OperationLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 2.0, 14))
        });
        registry.register(
            "aws_call_duration_seconds",
            "Latency of AWS API calls by operation",
            aws_call_duration.clone(),
        );
        let secret_writes = Counter::default();
        registry.register(
            "secret_writes",
            "Kubernetes Secrets written with a new value",
            secret_writes.clone(),
        );
        let rotations_observed = Family::<SourceLabels, Counter>::default();
        registry.register(
            "rotations_observed",
            "New AWSCURRENT versions noticed, by what noticed them (sweep, describe, event)",
            rotations_observed.clone(),
        );
        let latency_buckets =
            || Histogram::new([0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 90.0, 120.0, 300.0]);
        let rotation_to_secret = latency_buckets();
        registry.register(
            "rotation_to_secret_seconds",
            "From a new AWSCURRENT being noticed to the Secret holding it",
            rotation_to_secret.clone(),
        );
        let rotation_to_rollout = latency_buckets();
        registry.register(
            "rotation_to_rollout_seconds",
            "From a new AWSCURRENT being noticed to its consumers being patched",
            rotation_to_rollout.clone(),
        );
        let restarts = Family::<KindLabels, Counter>::default();
        registry.register(
            "restarts",
            "Workloads restarted for a new version, by kind",
            restarts.clone(),
        );
        let check_age = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "version_check_age_seconds",
            "Age of the oldest successful AWSCURRENT check among managed secrets",
            check_age.clone(),
        );
        let sweeps = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "version_sweeps",
            "ListSecrets sweeps of the version poller",
            sweeps.clone(),
        );
        let sweep_duration = Histogram::new([0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0]);
        registry.register(
            "version_sweep_duration_seconds",
            "Time one sweep of the version poller takes, every region's pages",
            sweep_duration.clone(),
        );
        let reconcile_panics = Counter::default();
        registry.register(
            "reconcile_panics",
            "Reconciles that panicked (a bug); the object is marked and retried, the controller goes on",
            reconcile_panics.clone(),
        );
        let task_restarts = Family::<TaskLabels, Counter>::default();
        registry.register(
            "task_restarts",
            "Background tasks (sweep, events) restarted after they stopped or panicked",
            task_restarts.clone(),
        );
        let ready = Family::<ObjectLabels, Gauge>::default();
        registry.register(
            "rotatedsecret_ready",
            "1 when the RotatedSecret's Ready condition is True, else 0",
            ready.clone(),
        );
        let build_info = Family::<BuildLabels, Gauge>::default();
        registry.register(
            "build_info",
            "Always 1, labelled with the running binary's version and git revision",
            build_info.clone(),
        );
        Self {
            build_info,
            reconcile_panics,
            task_restarts,
            ready,
            ready_objects: Default::default(),
            registry,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            aws_calls,
            aws_call_duration,
            secret_writes,
            rotations_observed,
            rotation_to_secret,
            rotation_to_rollout,
            restarts,
            check_age,
            sweeps,
            sweep_duration,
        }
    }
}

impl Metrics {
    /// Sets `rotor_build_info{version,git_sha} 1` (one series: a second call
    /// replaces the first).
    pub fn set_build_info(&self, version: &str, git_sha: &str) {
        self.build_info.clear();
        self.build_info
            .get_or_create(&BuildLabels {
                version: version.to_owned(),
                git_sha: git_sha.to_owned(),
            })
            .set(1);
    }

    pub fn reconciled(&self, elapsed: Duration, error_category: Option<&'static str>) {
        self.reconcile_duration.observe(elapsed.as_secs_f64());
        let outcome = if error_category.is_some() {
            "error"
        } else {
            "success"
        };
        self.reconciles.get_or_create(&OutcomeLabels { outcome }).inc();
        if let Some(category) = error_category {
            self.reconcile_errors
                .get_or_create(&ErrorLabels { category })
                .inc();
        }
    }

    pub fn aws_call(&self, operation: &'static str, outcome: &'static str, elapsed: Duration) {
        self.aws_calls
            .get_or_create(&AwsCallLabels { operation, outcome })
            .inc();
        self.aws_call_duration
            .get_or_create(&OperationLabels { operation })
            .observe(elapsed.as_secs_f64());
    }

    pub fn secret_written(&self) {
        self.secret_writes.inc();
    }

    pub fn rotation_observed(&self, source: &'static str) {
        self.rotations_observed
            .get_or_create(&SourceLabels { source })
            .inc();
    }

    pub fn rotation_reached_secret(&self, since_detected: Duration) {
        self.rotation_to_secret.observe(since_detected.as_secs_f64());
    }

    pub fn rotation_reached_rollout(&self, since_detected: Duration) {
        self.rotation_to_rollout.observe(since_detected.as_secs_f64());
    }

    pub fn restarted(&self, kind: &'static str) {
        self.restarts.get_or_create(&KindLabels { kind }).inc();
    }

    pub fn sweep(&self, ok: bool, took: Duration, oldest_check: Duration) {
        let outcome = if ok { "success" } else { "error" };
        self.sweeps.get_or_create(&OutcomeLabels { outcome }).inc();
        self.sweep_duration.observe(took.as_secs_f64());
        self.check_age.set(oldest_check.as_secs_f64());
    }

    pub fn reconcile_panicked(&self) {
        self.reconcile_panics.inc();
    }

    pub fn task_restarted(&self, task: &'static str) {
        self.task_restarts.get_or_create(&TaskLabels { task }).inc();
    }

    pub fn set_ready(&self, namespace: &str, name: &str, ready: bool) {
        let labels = ObjectLabels {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        self.ready.get_or_create(&labels).set(i64::from(ready));
        self.ready_objects
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert((labels.namespace, labels.name));
    }

    /// Drops the series of objects that no longer exist.
    pub fn retain_ready(&self, exists: impl Fn(&str, &str) -> bool) {
        let mut objects = self
            .ready_objects
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        objects.retain(|(namespace, name)| {
            let keep = exists(namespace, name);
            if !keep {
                self.ready.remove(&ObjectLabels {
                    namespace: namespace.clone(),
                    name: name.clone(),
                });
            }
            keep
        });
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}

/// Flipped once the controller's caches are synced; and health, which a
/// background task that cannot be restarted in place takes away, so that
/// the kubelet restarts rotor instead of it running blind.
#[derive(Default)]
pub struct Readiness(AtomicBool, AtomicBool);

impl Readiness {
    pub fn set_unhealthy(&self) {
        self.1.store(true, Ordering::Relaxed);
    }
    fn is_healthy(&self) -> bool {
        !self.1.load(Ordering::Relaxed)
    }
    pub fn set_ready(&self) {
        self.set(true);
    }
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }
    fn is_ready(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Clone)]
struct HttpState {
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
}

/// Serves /metrics, /healthz and /readyz until the process exits.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(HttpState { metrics, readiness });
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "serving metrics and health probes");
    axum::serve(listener, app).await
}

async fn metrics_handler(State(s): State<HttpState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
}

async fn healthz(State(s): State<HttpState>) -> impl IntoResponse {
    if s.readiness.is_healthy() {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "a background task stopped")
    }
}

async fn readyz(State(s): State<HttpState>) -> impl IntoResponse {
    if s.readiness.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "caches not synced")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_with_prefix_and_bounded_labels() {
        let m = Metrics::default();
        m.aws_call("DescribeSecret", "success", Duration::from_millis(3));
        m.reconciled(Duration::from_millis(10), Some("aws_unavailable"));
        let text = m.encode();
        assert!(
            text.contains(r#"rotor_aws_calls_total{operation="DescribeSecret",outcome="success"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"rotor_reconcile_errors_total{category="aws_unavailable"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn build_info_is_one_series_set_to_one() {
        let m = Metrics::default();
        assert!(
            !m.encode().contains("rotor_build_info{"),
            "no series before it is set"
        );
        m.set_build_info("0.0.1", "0123456789ab");
        m.set_build_info("0.1.0", "a1b843cea58e-dirty");
        let text = m.encode();
        assert!(text.contains("# TYPE rotor_build_info gauge\n"), "{text}");
        let series: Vec<_> = text
            .lines()
            .filter(|l| l.starts_with("rotor_build_info{"))
            .collect();
        assert_eq!(
            series,
            [r#"rotor_build_info{version="0.1.0",git_sha="a1b843cea58e-dirty"} 1"#],
            "{text}"
        );
    }
}
