//! The results: a markdown table on stdout (saved by hack/bench.sh as
//! results.md) and, with `--json`, the same figures as JSON.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};

use crate::churn::Churn;
use crate::idle::Idle;
use crate::newcomers::Newcomers;
use crate::rotation::{ExactlyOnce, Round};
use crate::setup::Setup;
use crate::{Args, CLUSTER, Res};

/// What is known before the run starts.
pub struct Report {
    command: String,
    load_start: String,
    revision: String,
    pub apiserver: String,
}

impl Report {
    pub fn begin(_args: &Args) -> Report {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        Report {
            command: std::env::args().collect::<Vec<_>>().join(" "),
            load_start: loadavg(),
            // The tree as built (others may edit it while this runs).
            revision: sh(
                "git",
                &[
                    "-C",
                    root.to_str().unwrap_or("."),
                    "describe",
                    "--always",
                    "--dirty",
                ],
            ),
            apiserver: String::new(),
        }
    }

    /// Prints the table, writes the JSON; whether every target was measured
    /// and exactly-once held.
    #[allow(clippy::too_many_arguments)]
    pub fn finish(
        self,
        args: &Args,
        setup: Setup,
        idle: Idle,
        newcomers: Newcomers,
        rounds: Vec<Round>,
        once: ExactlyOnce,
        (rss_end, hwm_end): (u64, u64),
        churn: Option<Churn>,
    ) -> Res<bool> {
        let load_end = loadavg();
        let refresh_s = args.refresh.as_secs_f64();
        let rotor_rate = idle.rotor_rate();
        let peer_rate = idle.peer_rate();
        let ratio = if rotor_rate > 0.0 {
            peer_rate / rotor_rate
        } else {
            f64::INFINITY
        };
        let nominal_peer = args.objects as f64 * 60.0 / refresh_s;
        let first_sync_restarts = setup.first_sync_restarts;
        let ExactlyOnce {
            want,
            extra,
            missing,
            distinct_ok,
        } = once;
        let mut complete = true;
        let mut out = String::new();
        let mut line = |s: String| {
            out.push_str(&s);
            out.push('\n');
        };
        line("## rotor fleet benchmark".into());
        line(String::new());
        line(format!("command:  {}", self.command));
        line(format!("machine:  {}", machine()));
        line(format!(
            "load avg: {} at start, {load_end} at end (1/5/15 min)",
            self.load_start
        ));
        line(format!(
            "versions: rotor {} ({}), {}, kube-apiserver {}, moto {}",
            env!("CARGO_PKG_VERSION"),
            self.revision,
            sh("rustc", &["-V"]),
            self.apiserver,
            sh("python3", &["-c", "import moto; print(moto.__version__)"]),
        ));
        line(format!(
            "fleet:    {} RotatedSecrets in {} namespaces, refreshInterval {refresh_s}s, rollout Auto, \
             {} Deployments (replicas 0); rotor flags: --cluster-name {CLUSTER} --min-refresh-interval {} {}",
            args.objects,
            args.namespaces,
            args.rotations,
            args.min_refresh_interval,
            args.rotor_args.join(" ")
        ));
        line(format!("setup:    {}", setup.times));
        line(String::new());
        line("| measurement | result | target |".into());
        line("|---|---|---|".into());
        let n = args.objects as u64;
        let start_calls = setup.startup_calls.values().sum::<u64>();
        let warm_target = n.div_ceil(100) + n.div_ceil(20) + 5;
        let (warm_secs, warm_calls) = match &setup.warm {
            Some((took, calls)) => {
                line(format!(
                    "| cold start: rotor creates {n} secrets, all Ready (`--aws-write-rate` floor {:.0} s) | **{:.1} s**, {start_calls} AWS calls ({}) | |",
                    n as f64 / write_rate(args),
                    setup.ready_in.as_secs_f64(),
                    ops(&setup.startup_calls, 1.0)
                ));
                (took.as_secs_f64(), calls)
            }
            None => (setup.ready_in.as_secs_f64(), &setup.startup_calls),
        };
        let warm_total = warm_calls.values().sum::<u64>();
        line(format!(
            "| warm start: every object {} | **{warm_secs:.1} s**, **{warm_total}** AWS calls ({}) | ≤ {warm_target} calls ({}) |",
            if setup.warm.is_some() {
                "reconciled by a restarted rotor"
            } else {
                "Ready (secrets existed)"
            },
            ops(warm_calls, 1.0),
            verdict(warm_total <= warm_target)
        ));
        let idle_target = (n.div_ceil(100) + 5) as f64 * 60.0 / refresh_s;
        line(format!(
            "| idle AWS calls/min, rotor (at the endpoint, {:.1} min) | **{rotor_rate:.1}** | ≤ {idle_target:.0} ({}) |",
            idle.minutes,
            verdict(rotor_rate <= idle_target)
        ));
        line(format!(
            "| ↳ by operation, per min | {} | |",
            ops(&idle.rotor, idle.minutes)
        ));
        line(format!(
            "| ↳ per minute | {} | |",
            idle.per_minute
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        ));
        line(format!(
            "| idle AWS calls/min, peer strategy (GetSecretValue per object per interval) | **{peer_rate:.1}** (nominal {nominal_peer:.0}, {} errors) | |",
            idle.peer_errors
        ));
        line(format!(
            "| ratio peer / rotor | **{ratio:.1}×** | ≥ 60× ({}) |",
            verdict(ratio >= 60.0)
        ));
        line(format!(
            "| idle API-server requests/min, rotor (audit log) | **{:.1}** ({}) | |",
            idle.api_rate(),
            ops(&idle.api, idle.minutes)
        ));
        let mut new_sorted = newcomers.ready.clone();
        new_sorted.sort_by(|a, b| a.total_cmp(b));
        let p = |q| percentile(&new_sorted, q);
        complete &= newcomers.missing == 0;
        line(format!(
            "| new object → Ready, {} created one a second among {n}: p50 / p95 / p99 | **{:.2} / {:.2} / {:.2} s**{} | p95 ≤ 10 s ({}) |",
            newcomers.ready.len() + newcomers.missing,
            p(50.0),
            p(95.0),
            p(99.0),
            if newcomers.missing > 0 {
                format!("; **{} not Ready in 2 min**", newcomers.missing)
            } else {
                String::new()
            },
            verdict(newcomers.missing == 0 && p(95.0) <= 10.0)
        ));
        let poll_target = refresh_s + 2.0;
        for r in &rounds {
            complete &= round_rows(r, poll_target, &mut line);
        }
        line(format!(
            "| restarts at first sync (Deployments changed before any rotation) | {first_sync_restarts} | 0 ({}) |",
            verdict(first_sync_restarts == 0)
        ));
        line(format!(
            "| pod-template changes over {want} rounds: extra / missing | **{extra} / {missing}** | 0 / 0 ({}) |",
            verdict(extra == 0 && missing == 0)
        ));
        line(format!(
            "| Deployments that saw exactly {want} distinct rotor.dev annotation values | {distinct_ok}/{} | all |",
            args.rotations
        ));
        line(format!(
            "| rotor RSS after the idle phase (VmRSS / VmHWM) | **{:.1} MiB** / {:.1} MiB | |",
            mib(idle.rss_kib),
            mib(idle.hwm_kib)
        ));
        line(format!(
            "| rotor RSS at the end (VmRSS / VmHWM, third process) | {:.1} MiB / {:.1} MiB | |",
            mib(rss_end),
            mib(hwm_end)
        ));
        line(format!(
            "| ↳ RSS after the idle phase per object (an upper bound: includes the base) | {:.0} bytes | |",
            idle.rss_kib as f64 * 1024.0 / n as f64
        ));
        line(format!(
            "| rotor CPU during the idle phase | {:.1} s ({:.1} s per minute, {:.2}% of one core) | |",
            idle.cpu_seconds,
            idle.cpu_seconds / idle.minutes,
            100.0 * idle.cpu_seconds / (idle.minutes * 60.0)
        ));
        line(format!(
            "| reconciles during the idle phase (rotor_reconciles_total) | {} | |",
            idle.reconciles
        ));
        if let Some(c) = &churn {
            if c.converged_seconds.is_none() {
                complete = false;
            }
            churn_rows(c, &mut line);
        }
        println!("{out}");

        if let Some(path) = &args.json {
            let mut doc = json!({
                "command": self.command, "machine": machine(), "load_start": self.load_start, "load_end": load_end,
                "apiserver": self.apiserver, "objects": args.objects, "refresh_seconds": refresh_s,
                "cold": args.cold, "ready_seconds": setup.ready_in.as_secs_f64(), "startup_aws_calls": setup.startup_calls,
                "warm_start": setup.warm.as_ref().map(|(t, c)| json!({"seconds": t.as_secs_f64(), "aws_calls": c})),
                "newcomers": {"ready_seconds": newcomers.ready, "missing": newcomers.missing},
                "idle": {
                    "minutes": idle.minutes, "rotor_calls": idle.rotor, "rotor_per_minute": rotor_rate,
                    "rotor_calls_each_minute": idle.per_minute,
                    "peer_calls": idle.peer, "peer_per_minute": peer_rate, "peer_errors": idle.peer_errors,
                    "ratio": ratio, "rss_kib": idle.rss_kib, "hwm_kib": idle.hwm_kib, "cpu_seconds": idle.cpu_seconds,
                    "reconciles": idle.reconciles, "api_requests": idle.api,
                },
                "rounds": rounds.iter().map(round_json).collect::<Vec<_>>(),
                "exactly_once": {"extra": extra, "missing": missing, "first_sync_restarts": first_sync_restarts},
            });
            if let Some(c) = &churn {
                doc["churn"] = churn_json(c);
            }
            std::fs::write(path, serde_json::to_string_pretty(&doc).unwrap_or_default())
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        Ok(complete && first_sync_restarts == 0 && extra == 0 && missing == 0)
    }
}

/// A round's rows; whether every rotation reached its Secret and workload.
fn round_rows(r: &Round, poll_target: f64, line: &mut impl FnMut(String)) -> bool {
    let (s50, s99, smax) = stats(&r.secret);
    let (w50, w99, wmax) = stats(&r.workload);
    let target = match r.name {
        "polling" => Some((poll_target, format!("p99 ≤ {poll_target:.0} s"))),
        "SQS events" => Some((2.0, "p99 ≤ 2 s".to_owned())),
        _ => None,
    };
    let missing = r.missing_secret + r.missing_workload;
    let t = |p99: f64| match &target {
        Some((limit, text)) => format!("{text} ({})", verdict(missing == 0 && p99 <= *limit)),
        None => "informational".into(),
    };
    let miss = if missing > 0 {
        format!(
            "; **{} Secrets, {} workloads never reached the new version**",
            r.missing_secret, r.missing_workload
        )
    } else {
        String::new()
    };
    line(format!(
        "| rotation → Secret updated, {} ({} rotations): p50 / p99 / max | **{s50:.2} / {s99:.2}** / {smax:.2} s{miss} | {} |",
        r.name,
        r.rotated,
        t(s99)
    ));
    line(format!(
        "| rotation → workload annotated, {}: p50 / p99 / max | **{w50:.2} / {w99:.2}** / {wmax:.2} s | {} |",
        r.name,
        t(w99)
    ));
    let once = r.changes.iter().filter(|&&c| c == 1).count();
    line(format!(
        "| ↳ {}: Deployments with exactly one pod-template change | {once}/{} | all |",
        r.name,
        r.changes.len()
    ));
    line(format!(
        "| ↳ {}: rotor AWS calls during the round, per rotation | {} | |",
        r.name,
        ops(&r.calls, r.rotated.max(1) as f64)
    ));
    if let Some((n, mean)) = r.sweeps {
        line(format!(
            "| ↳ {}: version sweeps during the round, mean length | {n} sweeps, {mean:.2} s | |",
            r.name
        ));
    }
    if !r.note.is_empty() {
        line(format!("| ↳ {} | {} | |", r.name, r.note));
    }
    missing == 0
}

fn round_json(r: &Round) -> Value {
    let (s50, s99, smax) = stats(&r.secret);
    let (w50, w99, wmax) = stats(&r.workload);
    json!({
        "name": r.name, "rotations": r.rotated,
        "secret_seconds": {"p50": s50, "p99": s99, "max": smax, "samples": r.secret},
        "workload_seconds": {"p50": w50, "p99": w99, "max": wmax, "samples": r.workload},
        "missing_secret": r.missing_secret, "missing_workload": r.missing_workload,
        "pod_template_changes": r.changes, "aws_calls": r.calls, "note": r.note,
        "sweeps": r.sweeps.map(|(n, mean)| json!({"count": n, "mean_seconds": mean})),
    })
}

fn churn_rows(c: &Churn, line: &mut impl FnMut(String)) {
    let settled = match c.converged_seconds {
        Some(s) => format!("converged {s:.1} s after the last step"),
        None => format!(
            "**not converged after 3 min: {} deleted objects still present, {} not Ready**",
            c.not_gone, c.not_ready
        ),
    };
    line(format!(
        "| churn ({:.1} min, {} steps): objects created / deleted (invalid spec among them) | {} / {} ({}); {settled} | |",
        c.minutes,
        c.steps,
        c.created + c.invalid,
        c.deleted,
        c.invalid
    ));
    line(format!(
        "| ↳ rotor RSS, churn start → end (VmRSS; peak; VmHWM at end) | **{:.1} → {:.1} MiB** ({:+.1} MiB); peak {:.1} MiB; {:.1} MiB | no growth |",
        mib(c.rss_start_kib),
        mib(c.rss_end_kib),
        mib(c.rss_end_kib) - mib(c.rss_start_kib),
        mib(c.rss_peak_kib),
        mib(c.hwm_end_kib)
    ));
    line(format!(
        "| ↳ rotor RSS each minute, MiB | {} | |",
        c.rss_each_minute
            .iter()
            .map(|k| format!("{:.1}", mib(*k)))
            .collect::<Vec<_>>()
            .join(" ")
    ));
    line(format!(
        "| ↳ rotor AWS calls during the churn, per min | {} | |",
        ops(&c.calls, c.minutes.max(f64::MIN_POSITIVE))
    ));
}

fn churn_json(c: &Churn) -> Value {
    json!({
        "minutes": c.minutes, "steps": c.steps, "created": c.created, "deleted": c.deleted,
        "invalid_spec": c.invalid,
        "rss_start_kib": c.rss_start_kib, "rss_end_kib": c.rss_end_kib, "rss_peak_kib": c.rss_peak_kib,
        "hwm_end_kib": c.hwm_end_kib, "rss_kib_each_minute": c.rss_each_minute,
        "aws_calls": c.calls, "converged_seconds": c.converged_seconds,
        "not_gone": c.not_gone, "not_ready": c.not_ready,
    })
}

/// rotor's `--aws-write-rate`, as passed with `--rotor-arg`, or its default.
fn write_rate(args: &Args) -> f64 {
    args.rotor_args
        .iter()
        .find_map(|a| a.strip_prefix("--aws-write-rate=")?.parse().ok())
        .unwrap_or(20.0)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

fn stats(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    (
        percentile(&s, 50.0),
        percentile(&s, 99.0),
        s.last().copied().unwrap_or(f64::NAN),
    )
}

/// `Operation n, ...` per `per`, most frequent first.
pub fn ops(map: &BTreeMap<String, u64>, per: f64) -> String {
    if map.is_empty() {
        return "none".into();
    }
    let mut v: Vec<_> = map.iter().collect();
    v.sort_by(|a, b| b.1.cmp(a.1));
    v.iter()
        .map(|(k, n)| format!("{k} {:.1}", **n as f64 / per))
        .collect::<Vec<_>>()
        .join(", ")
}

fn sh(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    format!(
        "{} CPUs ({model}), {:.1} GiB RAM, {}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        mem_kib as f64 / 1048576.0,
        sh("uname", &["-sr"])
    )
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

/// AWS operations that change something (rotor makes none while it only
/// follows rotations).
fn writes(calls: &BTreeMap<String, u64>) -> u64 {
    const READS: [&str; 5] = ["Describe", "Get", "List", "BatchGet", "ReceiveMessage"];
    calls
        .iter()
        .filter(|(op, _)| !READS.iter().any(|r| op.starts_with(r)))
        .map(|(_, n)| n)
        .sum()
}

impl Report {
    /// The soak's results (`--soak`): each scenario and the end-state check;
    /// whether nothing was lost, duplicated or rolled twice.
    pub fn soak(
        self,
        args: &Args,
        setup: &Setup,
        scenarios: Vec<crate::soak::Scenario>,
        once: ExactlyOnce,
        end: crate::soak::EndState,
    ) -> Res<bool> {
        let mut out = String::new();
        let mut line = |s: String| {
            out.push_str(&s);
            out.push('\n');
        };
        line("## rotor soak: control-plane and process failures".into());
        line(String::new());
        line(format!("command:  {}", self.command));
        line(format!("machine:  {}", machine()));
        line(format!(
            "load avg: {} at start, {} at end",
            self.load_start,
            loadavg()
        ));
        line(format!(
            "versions: rotor {} ({}), kube-apiserver {}, moto {}",
            env!("CARGO_PKG_VERSION"),
            self.revision,
            self.apiserver,
            sh("python3", &["-c", "import moto; print(moto.__version__)"]),
        ));
        line(format!(
            "fleet:    {} RotatedSecrets in {} namespaces, each with a secret and a KMS key rotor creates; {} Deployments; refreshInterval {}s",
            args.objects,
            args.namespaces,
            args.rotations,
            args.refresh.as_secs_f64()
        ));
        line(String::new());
        line("| scenario | what was injected, and what rotor did | rotation → Secret p50 / p99 / max | → workload p99 | missed | Deployments rolled exactly once | AWS writes |".into());
        line("|---|---|---|---|---|---|---|".into());
        line(format!(
            "| provisioning, rotor SIGKILLed {} times | rotor started {} times while creating {} secrets and keys; all Ready {:.1} s after the first start | | | | | {} |",
            crate::soak::KILLS,
            setup.starts,
            args.objects,
            setup.ready_in.as_secs_f64(),
            writes(&setup.startup_calls)
        ));
        let mut ok = true;
        for s in &scenarios {
            let Some(r) = &s.round else { continue };
            let (s50, s99, smax) = stats(&r.secret);
            let (_, w99, _) = stats(&r.workload);
            let missed = r.missing_secret + r.missing_workload;
            let once_n = r.changes.iter().filter(|&&c| c == 1).count();
            ok &= missed == 0 && once_n == r.changes.len();
            line(format!(
                "| {} | {} | {s50:.2} / {s99:.2} / {smax:.2} s | {w99:.2} s | {} Secrets, {} workloads | {once_n}/{} | {} |",
                s.name,
                s.note,
                r.missing_secret,
                r.missing_workload,
                r.changes.len(),
                writes(&r.calls)
            ));
        }
        let ExactlyOnce {
            want, extra, missing, ..
        } = once;
        ok &= extra == 0 && missing == 0 && end.clean();
        line(String::new());
        line(format!(
            "exactly once over the {want} rounds: {extra} extra and {missing} missing pod-template changes ({})",
            verdict(extra == 0 && missing == 0)
        ));
        line(format!(
            "end state: {} objects whose secrets rotor created; {} AWS secrets ({} objects without one); {} KMS keys, {} aliases, {} keys no alias names; {} Secrets not at AWSCURRENT ({})",
            end.objects,
            end.secrets,
            end.without_secret,
            end.keys,
            end.aliases,
            end.orphan_keys,
            end.stale_secrets,
            verdict(end.clean())
        ));
        println!("{out}");
        Ok(ok)
    }
}
