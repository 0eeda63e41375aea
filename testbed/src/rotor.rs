//! `rotor run` processes: started with the test bed's AWS settings and a
//! kubeconfig, logging to a file, with a free metrics port; probed through
//! `/readyz` and `/metrics`, measured through `/proc`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{REGION, eventually, http};

/// How to start one rotor process.
#[derive(Clone, Debug)]
pub struct RotorCommand {
    /// The binary: `env!("CARGO_BIN_EXE_rotor")` in rotor's tests and benches.
    pub bin: PathBuf,
    pub kubeconfig: PathBuf,
    /// `AWS_ENDPOINT_URL`: moto, or an [`crate::AwsProxy`] in front of it.
    pub aws_endpoint: String,
    /// stdout and stderr go here.
    pub log: PathBuf,
    /// Flags after `run` (`--metrics-addr` is added).
    pub args: Vec<String>,
    /// More environment (`RUST_LOG`, `AWS_MAX_ATTEMPTS`, ...), after the
    /// test bed's AWS settings. Nothing else is inherited but `PATH`.
    pub env: Vec<(String, String)>,
}

/// A running `rotor run`, killed when dropped.
pub struct Rotor {
    child: Child,
    pub pid: u32,
    pub metrics_port: u16,
    log: PathBuf,
}

impl Rotor {
    pub fn spawn(cmd: &RotorCommand) -> Result<Rotor, String> {
        let out = std::fs::File::create(&cmd.log).map_err(|e| format!("{}: {e}", cmd.log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let child = Command::new(&cmd.bin)
            .arg("run")
            .args(&cmd.args)
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("KUBECONFIG", &cmd.kubeconfig)
            .env("AWS_REGION", REGION)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_ENDPOINT_URL", &cmd.aws_endpoint)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .envs(cmd.env.iter().map(|(k, v)| (k, v)))
            .stdout(out)
            .stderr(err)
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("start {}: {e}", cmd.bin.display()))?;
        Ok(Rotor {
            pid: child.id(),
            child,
            metrics_port,
            log: cmd.log.clone(),
        })
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self, n: usize) -> String {
        let text = self.logs();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Whether the process is still running (no crash, no exit).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// An error with the last log lines if the process has exited.
    pub fn check_alive(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!(
                "rotor (pid {}) exited with {status}; last log lines:\n{}",
                self.pid,
                self.log_tail(30)
            )),
            Err(e) => Err(e.to_string()),
        }
    }

    /// SIGKILL: a crash, no chance to finish anything.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then SIGKILL after 10 s.
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.kill();
    }

    fn authority(&self) -> String {
        format!("127.0.0.1:{}", self.metrics_port)
    }

    /// Waits for /readyz to answer 200 (caches synced), failing early if
    /// the process exits; returns how long that took.
    pub async fn ready(&mut self, timeout: Duration) -> Result<Duration, String> {
        let start = Instant::now();
        loop {
            self.check_alive()?;
            if http::get_ok(self.authority(), "/readyz".into()).await.is_ok() {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                return Err(format!(
                    "rotor not ready after {timeout:?}; last log lines:\n{}",
                    self.log_tail(30)
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits up to 20 s for /readyz to answer 200; panics otherwise.
    pub async fn wait_ready(&self) {
        eventually("/readyz to be 200", Duration::from_secs(20), || async {
            http::get_ok(self.authority(), "/readyz".into())
                .await
                .ok()
                .map(drop)
        })
        .await
    }

    /// The Prometheus text from /metrics.
    pub async fn try_metrics(&self) -> Result<String, String> {
        http::get_ok(self.authority(), "/metrics".into()).await
    }

    /// /metrics, retried for up to 10 s; panics otherwise.
    pub async fn metrics(&self) -> String {
        eventually("metrics endpoint", Duration::from_secs(10), || async {
            self.try_metrics().await.ok()
        })
        .await
    }

    /// Sum of `rotor_reconciles_total` over outcomes.
    pub async fn reconciles(&self) -> Result<u64, String> {
        Ok(self.metric_sum("rotor_reconciles_total").await? as u64)
    }

    /// Sum of the samples of a counter or histogram series (`name` exactly,
    /// e.g. `rotor_version_sweep_duration_seconds_sum`), over its labels.
    pub async fn metric_sum(&self, name: &str) -> Result<f64, String> {
        Ok(self
            .try_metrics()
            .await?
            .lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }

    /// (VmRSS, VmHWM) in KiB.
    pub fn memory(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// User + system CPU seconds so far.
    pub fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap_or_default();
        // Fields after the `(comm)`: state is field 3, utime 14, stime 15.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        (ticks(11) + ticks(12)) / clock_ticks()
    }
}

impl Drop for Rotor {
    fn drop(&mut self) {
        self.kill();
    }
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}
