//! Fleet benchmark for issue 4: what rotor costs at the AWS endpoint with N
//! idle RotatedSecrets, how fast a rotation reaches the Secret and the
//! workloads (polling, across a crash, with SQS events), and how much memory
//! it takes, also while objects come and go (`--churn-minutes`). Run it with
//! `make bench` (hack/bench.sh starts the test bed); results and the method
//! are in BENCHMARKS.md.
//!
//! It drives the real `rotor` release binary under the Helm chart's RBAC,
//! behind `hack/aws_proxy.py`, which counts every AWS call that reaches the
//! endpoint. A second proxy counts the "peer" strategy (one GetSecretValue per
//! object per refresh interval) run over the same minutes. The benchmark's
//! own AWS calls (setup, rotations, SQS messages) go to moto directly, so
//! neither proxy sees them.
//!
//! The phases: `setup.rs` (fleet, watchers, rotor started), `idle.rs`,
//! `rotation.rs` (three rounds and the exactly-once count), `churn.rs`, and
//! `report.rs` (markdown and JSON). The test-bed plumbing (clients, proxy,
//! rotor processes, rotation simulation) is the `testbed` crate, shared with
//! the integration tests.
//!
//! Needs the test bed variables (`ROTOR_TEST_*`, from `hack/testbed.sh up`).

mod audit;
mod churn;
mod idle;
mod newcomers;
mod report;
mod rotation;
mod setup;
mod soak;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use kube::Client;
use testbed::{AwsProxy, Rotor};

use crate::setup::{Launcher, Obj, Shared};

const CLUSTER: &str = "bench";
const MANAGER: &str = "rotor-bench";
const BENCH_LABEL: &str = "rotor-bench";
const BENCH_LABEL_VALUE: &str = "fleet";
const NS_PREFIX: &str = "bench-";

/// The fleet benchmark (`make bench ARGS="..."` passes these through).
#[derive(Parser, Debug, Clone)]
#[command(name = "fleet")]
struct Args {
    /// RotatedSecrets (each with its own AWS secret).
    #[arg(long, default_value_t = 1000)]
    objects: usize,
    /// Length of the idle measurement, in minutes (fractions allowed).
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// `spec.refreshInterval` of every object.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    refresh: Duration,
    /// rotor's `--min-refresh-interval`.
    #[arg(long, default_value = "10s")]
    min_refresh_interval: String,
    /// Namespaces the objects are spread over.
    #[arg(long, default_value_t = 4)]
    namespaces: usize,
    /// rotor creates the AWS secrets (from `initialValue`), at its
    /// `--aws-write-rate`; then a second rotor is started over the Ready fleet
    /// (the warm start). Without it the secrets exist before rotor starts.
    #[arg(long)]
    cold: bool,
    /// The failure scenarios (`make soak`, RELIABILITY.md) instead of the idle
    /// phase and the standard rounds; implies `--cold`, each object with a KMS
    /// key of its own, rotor SIGKILLed 20 times while it creates them.
    #[arg(long)]
    soak: bool,
    /// Objects provisioned while AWS fails 20% of calls (with `--soak`).
    #[arg(long, default_value_t = 200)]
    soak_fault_objects: usize,
    /// Objects created one a second after the idle phase, timed to Ready.
    #[arg(long, default_value_t = 20)]
    newcomers: usize,
    /// Deployments (one per secret, the first ones) and rotations per round.
    #[arg(long, default_value_t = 100)]
    rotations: usize,
    /// Most concurrent setup calls, rotations and peer calls.
    #[arg(long, default_value_t = 32)]
    parallelism: usize,
    /// Wait after all objects are Ready before counting idle calls. Every
    /// object is re-checked for drift (rotor's `--drift-interval`, 10m) about
    /// 10-11 minutes after its first sync; 3m puts that round inside a
    /// 10-minute window instead of at its edge.
    #[arg(long, default_value = "3m", value_parser = parse_duration)]
    settle: Duration,
    /// After the rotation rounds, churn the fleet for this many minutes
    /// (fractions allowed; 0: no churn phase): every `--churn-every`, delete
    /// the `--churn-batch` oldest objects without a Deployment and create as
    /// many new ones (plus one with an invalid spec, deleted at the next
    /// step), while sampling rotor's RSS.
    #[arg(long, default_value_t = 0.0)]
    churn_minutes: f64,
    /// Interval between churn steps.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    churn_every: Duration,
    /// Objects deleted and created at each churn step.
    #[arg(long, default_value_t = 5)]
    churn_batch: usize,
    /// Extra flag passed to `rotor run` (repeatable), e.g. `--rotor-arg=--drift-interval=1h`.
    #[arg(long = "rotor-arg", allow_hyphen_values = true)]
    rotor_args: Vec<String>,
    /// Extra environment for rotor (repeatable, `KEY=VALUE`), e.g. an
    /// allocator setting for an A/B run: `--rotor-env MALLOC_ARENA_MAX=2`.
    #[arg(long = "rotor-env", value_parser = parse_env)]
    rotor_env: Vec<(String, String)>,
    /// Run this binary instead of the release build (a profiling wrapper, a
    /// build with symbols); it is started as `BIN run ...`.
    #[arg(long)]
    rotor_bin: Option<PathBuf>,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    rotor::api::duration::parse(s).ok_or_else(|| format!("{s:?} is not a duration such as 10s or 1m"))
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

type Res<T> = Result<T, String>;

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("tokio runtime");
    // Everything below has its own timeout; this bounds the whole run.
    let budget =
        Duration::from_secs_f64((args.minutes + args.churn_minutes) * 60.0) + Duration::from_secs(3600);
    let outcome = runtime.block_on(async {
        match tokio::time::timeout(budget, run(args)).await {
            Ok(r) => r,
            Err(_) => Err(format!("the benchmark did not finish within {budget:?}")),
        }
    });
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("fleet: finished, but some measurement is incomplete (see above)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("fleet: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

fn log(msg: impl AsRef<str>) {
    eprintln!("[fleet {}] {}", clock(), msg.as_ref());
}

fn clock() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let s = d.as_secs() % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// One benchmark run: the fleet, the watchers' observations, the counting
/// proxy in front of moto, and the rotor process under measurement.
struct Bench {
    args: Args,
    admin: Client,
    /// Secrets Manager and SQS on moto directly (not counted).
    sm: aws_sdk_secretsmanager::Client,
    sqs: aws_sdk_sqs::Client,
    moto: String,
    /// The test bed's folder (logs, the API server's audit log).
    dir: PathBuf,
    seen: Shared,
    objs: Vec<Obj>,
    proxy: AwsProxy,
    launcher: Launcher,
    rotor: Rotor,
    /// The second replica, while the soak runs two.
    standby: Option<Rotor>,
}

async fn run(args: Args) -> Res<bool> {
    if args.objects == 0 || args.namespaces == 0 || args.parallelism == 0 {
        return Err("--objects, --namespaces and --parallelism must be positive".into());
    }
    let args = Args {
        rotations: args.rotations.min(args.objects),
        cold: args.cold || args.soak,
        ..args
    };
    let mut report = report::Report::begin(&args);
    let (mut bench, setup) = Bench::setup(args).await?;
    report.apiserver = setup.apiserver.clone();
    if bench.args.soak {
        let scenarios = bench.soak().await?;
        let once = bench.exactly_once(scenarios.len(), &setup.baseline).await?;
        let end = bench.end_state().await?;
        bench.rotor.stop();
        if let Some(mut s) = bench.standby.take() {
            s.stop();
        }
        return report.soak(&bench.args, &setup, scenarios, once, end);
    }

    log(format!("settling for {:?}", bench.args.settle));
    tokio::time::sleep(bench.args.settle).await;
    log(format!(
        "idle phase: {} minutes, rotor and the peer strategy side by side",
        bench.args.minutes
    ));
    let idle = bench.idle().await?;
    let newcomers = bench.newcomers(bench.args.newcomers).await?;
    let rounds = bench.rounds().await?;
    let once = bench.exactly_once(rounds.len(), &setup.baseline).await?;
    let end_memory = bench.rotor.memory();
    let churn = if bench.args.churn_minutes > 0.0 {
        Some(bench.churn().await?)
    } else {
        None
    };
    bench.rotor.stop();
    report.finish(
        &bench.args,
        setup,
        idle,
        newcomers,
        rounds,
        once,
        end_memory,
        churn,
    )
}
