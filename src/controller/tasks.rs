//! Background tasks that live as long as the process: the version sweep and
//! the SQS consumer, each restarted whenever it ends or panics.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::{Context, poller, values};
use crate::config::RunArgs;
use crate::telemetry::Metrics;

/// The version sweep, and the SQS consumer when a queue is configured.
pub fn start(ctx: &Arc<Context>, args: &RunArgs, pollers: Vec<poller::Scope>) {
    supervise("sweep", &ctx.metrics, {
        let (ctx, pollers) = (ctx.clone(), pollers.clone());
        move || poller::sweep_loop(ctx.clone(), pollers.clone())
    });
    supervise("values", &ctx.metrics, {
        let ctx = ctx.clone();
        move || values::work(ctx.clone())
    });
    let Some(queue_url) = args.events_queue_url.clone() else {
        return;
    };
    info!(%queue_url, "consuming Secrets Manager events");
    supervise("events", &ctx.metrics, {
        let ctx = ctx.clone();
        move || {
            let (tx, rx) = tokio::sync::mpsc::channel(1024);
            let consume = crate::aws::events::consume(
                ctx.aws.sqs(&queue_url),
                queue_url.clone(),
                tx,
                ctx.metrics.clone(),
            );
            let route = poller::event_loop(ctx.clone(), pollers.clone(), rx);
            async move {
                // Either half ending ends both; the supervisor restarts them.
                futures::future::select(Box::pin(consume), Box::pin(route)).await;
            }
        }
    });
}

/// Runs a background task for the life of the process, restarting it with
/// backoff whenever it ends or panics (counted in
/// `rotor_task_restarts_total{task}`), so it never dies silently.
fn supervise<F, Fut>(task: &'static str, metrics: &Arc<Metrics>, mut make: F)
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let metrics = metrics.clone();
    tokio::spawn(async move {
        let mut delay = Duration::from_secs(1);
        loop {
            let started = Instant::now();
            let outcome = tokio::spawn(make()).await;
            metrics.task_restarted(task);
            warn!(task, panicked = outcome.is_err(), retry_in = ?delay, "background task stopped; restarting");
            if started.elapsed() > Duration::from_secs(300) {
                delay = Duration::from_secs(1);
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(60));
        }
    });
}
