//! Fleet benchmark for issue 4: what rotor costs at the AWS endpoint with N
//! idle RotatedSecrets, how fast a rotation reaches the Secret and the
//! workloads (polling, across a crash, with SQS events), and how much memory
//! it takes. Run it with `make bench` (hack/bench.sh starts the test bed);
//! results and the method are in BENCHMARKS.md.
//!
//! It drives the real `rotor` release binary under the Helm chart's RBAC,
//! behind `hack/aws_proxy.py`, which counts every AWS call that reaches the
//! endpoint. A second proxy counts the "peer" strategy (one GetSecretValue per
//! object per refresh interval) run over the same minutes. The benchmark's
//! own AWS calls (setup, rotations, SQS messages) go to moto directly, so
//! neither proxy sees them.
//!
//! Needs the test bed variables (`ROTOR_TEST_*`, from `hack/testbed.sh up`).

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_secretsmanager::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_secretsmanager::types::Tag;
use clap::Parser;
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, PartialObjectMeta, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher::Event;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Config, ResourceExt};
use rotor::api::{OWNER_TAG, RotatedSecret, VERSION_ID_ANNOTATION};
use serde_json::{Value, json};
use tokio::sync::Semaphore;

const CLUSTER: &str = "bench";
const REGION: &str = "us-east-1";
/// moto's default account.
const ACCOUNT: &str = "123456789012";
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
    /// Extra flag passed to `rotor run` (repeatable), e.g. `--rotor-arg=--drift-interval=1h`.
    #[arg(long = "rotor-arg", allow_hyphen_values = true)]
    rotor_args: Vec<String>,
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

type Res<T> = Result<T, String>;

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("tokio runtime");
    // Everything below has its own timeout; this bounds the whole run.
    let budget = Duration::from_secs_f64(args.minutes * 60.0) + Duration::from_secs(3600);
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

fn env_var(name: &str) -> Res<String> {
    std::env::var(name).map_err(|_| {
        format!("{name} is not set: run `make bench`, or `hack/testbed.sh up && . .testbed/env` first")
    })
}

// ---------------------------------------------------------------- plumbing

/// A minimal HTTP/1.0 request to a loopback port: (status, body).
fn http(method: &str, port: u16, path: &str) -> Res<(u16, String)> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| format!("{addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("{method} {path}: {e}"))?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)
        .map_err(|e| format!("{method} {path}: {e}"))?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{method} {path}: malformed response"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("{method} {path}: no status"))?;
    Ok((status, body.to_owned()))
}

async fn http_async(method: &'static str, port: u16, path: String) -> Res<(u16, String)> {
    tokio::task::spawn_blocking(move || http(method, port, &path))
        .await
        .map_err(|e| e.to_string())?
}

/// hack/aws_proxy.py: forwards to moto and counts calls per operation.
struct Proxy {
    url: String,
    port: u16,
    child: Child,
    // The proxy exits when its stdin closes, even if this process is killed.
    _stdin: ChildStdin,
    _stdout: BufReader<ChildStdout>,
}

impl Proxy {
    fn start(root: &Path, upstream: &str) -> Res<Proxy> {
        let mut child = Command::new("python3")
            .arg(root.join("hack/aws_proxy.py"))
            .args([
                "--listen-port",
                "0",
                "--upstream",
                upstream,
                "--exit-on-stdin-eof",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("start python3 hack/aws_proxy.py: {e}"))?;
        let stdin = child.stdin.take().expect("piped stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        stdout
            .read_line(&mut line)
            .map_err(|e| format!("read proxy port: {e}"))?;
        let Ok(port) = line.trim().parse::<u16>() else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("aws_proxy.py printed {line:?} instead of its port"));
        };
        let proxy = Proxy {
            url: format!("http://127.0.0.1:{port}"),
            port,
            child,
            _stdin: stdin,
            _stdout: stdout,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while http("GET", port, "/_proxy/calls").is_err() {
            if Instant::now() > deadline {
                return Err("aws_proxy.py does not answer".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(proxy)
    }

    async fn calls(&self) -> Res<BTreeMap<String, u64>> {
        let (status, body) = http_async("GET", self.port, "/_proxy/calls".into()).await?;
        if status != 200 {
            return Err(format!("proxy calls: HTTP {status}"));
        }
        serde_json::from_str(&body).map_err(|e| format!("proxy calls: {e}"))
    }

    async fn reset(&self) -> Res<()> {
        let (status, _) = http_async("POST", self.port, "/_proxy/reset".into()).await?;
        (status == 200)
            .then_some(())
            .ok_or_else(|| format!("proxy reset: HTTP {status}"))
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How to start rotor: the release binary, the chart-RBAC kubeconfig, the
/// counting proxy as its AWS endpoint.
struct Launcher {
    bin: PathBuf,
    kubeconfig: PathBuf,
    endpoint: String,
    dir: PathBuf,
    min_refresh: String,
    extra: Vec<String>,
    starts: usize,
}

struct Rotor {
    child: Child,
    pid: u32,
    metrics_port: u16,
    log: PathBuf,
}

impl Launcher {
    fn start(&mut self, events_queue: Option<&str>) -> Res<Rotor> {
        self.starts += 1;
        let log_path = self.dir.join(format!("bench-rotor-{}.log", self.starts));
        let out = std::fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
        let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let mut cmd = Command::new(&self.bin);
        cmd.args([
            "run",
            "--cluster-name",
            CLUSTER,
            "--min-refresh-interval",
            &self.min_refresh,
        ])
        .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")]);
        if let Some(q) = events_queue {
            cmd.args(["--events-queue-url", q]);
        }
        cmd.args(&self.extra)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("KUBECONFIG", &self.kubeconfig)
            .env("AWS_REGION", REGION)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_ENDPOINT_URL", &self.endpoint)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env(
                "RUST_LOG",
                std::env::var("ROTOR_BENCH_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(out.try_clone().map_err(|e| e.to_string())?)
            .stderr(out)
            .stdin(Stdio::null());
        let child = cmd
            .spawn()
            .map_err(|e| format!("start {}: {e}", self.bin.display()))?;
        let pid = child.id();
        // hack/bench.sh kills these on exit, whatever happens to this process.
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("bench.pids"))
        {
            let _ = writeln!(f, "{pid}");
        }
        log(format!("rotor started (pid {pid}, log {})", log_path.display()));
        Ok(Rotor {
            child,
            pid,
            metrics_port,
            log: log_path,
        })
    }
}

impl Rotor {
    fn check_alive(&mut self) -> Res<()> {
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

    fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// SIGKILL: a crash, no chance to finish anything.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then SIGKILL after 10 s.
    fn stop(&mut self) {
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

    async fn wait_ready(&mut self, timeout: Duration) -> Res<Duration> {
        let start = Instant::now();
        loop {
            self.check_alive()?;
            if let Ok((200, _)) = http_async("GET", self.metrics_port, "/readyz".into()).await {
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

    /// Sum of `rotor_reconciles_total` over outcomes.
    async fn reconciles(&self) -> Res<u64> {
        let (status, body) = http_async("GET", self.metrics_port, "/metrics".into()).await?;
        if status != 200 {
            return Err(format!("rotor /metrics: HTTP {status}"));
        }
        Ok(body
            .lines()
            .filter(|l| l.starts_with("rotor_reconciles_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64)
    }

    /// (VmRSS, VmHWM) in KiB.
    fn memory(&self) -> (u64, u64) {
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
    fn cpu_seconds(&self) -> f64 {
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

fn uuid() -> String {
    use rand::Rng;
    let b: [u8; 16] = rand::rng().random();
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

fn secrets_manager(endpoint: &str) -> aws_sdk_secretsmanager::Client {
    let conf = aws_sdk_secretsmanager::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new("testing", "testing", None, None, "bench"))
        .build();
    aws_sdk_secretsmanager::Client::from_conf(conf)
}

fn sqs(endpoint: &str) -> aws_sdk_sqs::Client {
    let conf = aws_sdk_sqs::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new("testing", "testing", None, None, "bench"))
        .build();
    aws_sdk_sqs::Client::from_conf(conf)
}

async fn kube_client(path: &Path) -> Res<Client> {
    let kc = Kubeconfig::read_from(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    Client::try_from(config).map_err(|e| e.to_string())
}

/// Polls `f` every 200 ms until it returns `Some`, or fails after `timeout`.
async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> Res<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            return Err(format!("timed out after {timeout:?} waiting for {what}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ------------------------------------------------------------- observation

type Key = (String, String);

#[derive(Default)]
struct DeployTrack {
    generation: i64,
    /// First time each `rotor.dev/*` pod-template annotation value was seen.
    values: HashMap<String, Instant>,
}

/// What the watchers saw, stamped when the event arrived.
#[derive(Default)]
struct Seen {
    /// First time each `rotor.dev/version-id` value was seen on a Secret.
    secrets: HashMap<Key, HashMap<String, Instant>>,
    deploys: HashMap<Key, DeployTrack>,
}

type Shared = Arc<Mutex<Seen>>;

fn spawn_watchers(client: &Client, seen: &Shared) {
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

struct Obj {
    ns: String,
    name: String,
    aws_name: String,
    arn: String,
    /// AWSCURRENT as the benchmark last set it.
    version: String,
    /// The Deployment consuming its Secret, for the first `rotations` objects.
    deployment: Option<String>,
}

impl Obj {
    fn key(&self) -> Key {
        (self.ns.clone(), self.name.clone())
    }
    fn deploy_key(&self) -> Option<Key> {
        self.deployment.clone().map(|d| (self.ns.clone(), d))
    }
}

/// The CRD and the chart's ClusterRole bound to the `rotor` user (as the
/// integration tests install them).
async fn install_cluster_wide(admin: &Client, root: &Path) -> Res<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
    let crd = rotor::api::crd::crd();
    let pp = PatchParams::apply(MANAGER).force();
    crds.patch(&crd.name_any(), &pp, &Patch::Apply(&crd))
        .await
        .map_err(|e| format!("install CRD: {e}"))?;
    eventually("CRD established", Duration::from_secs(30), || async {
        let c = crds.get(&crd.name_any()).await.ok()?;
        c.status?
            .conditions?
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
            .then_some(())
    })
    .await?;
    let rules_path = root.join("charts/rotor/files/clusterrole-rules.yaml");
    let rules: Vec<PolicyRule> = serde_yaml::from_str(
        &std::fs::read_to_string(&rules_path).map_err(|e| format!("{}: {e}", rules_path.display()))?,
    )
    .map_err(|e| format!("chart rules: {e}"))?;
    let role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "rotor-bench"}, "rules": rules,
    });
    Api::<ClusterRole>::all(admin.clone())
        .patch("rotor-bench", &pp, &Patch::Apply(&role))
        .await
        .map_err(|e| format!("cluster role: {e}"))?;
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "rotor-bench"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "rotor-bench"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "rotor"}],
    });
    Api::<ClusterRoleBinding>::all(admin.clone())
        .patch("rotor-bench", &pp, &Patch::Apply(&binding))
        .await
        .map_err(|e| format!("cluster role binding: {e}"))?;
    Ok(())
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
    let specs: Vec<(usize, String, String)> = (0..args.objects)
        .map(|i| {
            (
                i,
                format!("{NS_PREFIX}{}", i % args.namespaces),
                format!("s-{i:05}"),
            )
        })
        .collect();
    let objs: Vec<Obj> = stream::iter(specs)
        .map(|(i, ns, name)| {
            let sm = sm.clone();
            async move {
                let aws_name = format!("{CLUSTER}/{ns}/{name}");
                let out = sm
                    .create_secret()
                    .name(&aws_name)
                    .secret_string(json!({"username": name, "password": uuid()}).to_string())
                    .tags(
                        Tag::builder()
                            .key(OWNER_TAG)
                            .value(format!("{CLUSTER}/{ns}/{name}"))
                            .build(),
                    )
                    .send()
                    .await
                    .map_err(|e| format!("CreateSecret {aws_name}: {e:?}"))?;
                Ok::<_, String>((
                    i,
                    Obj {
                        arn: out.arn().unwrap_or_default().to_owned(),
                        version: out.version_id().unwrap_or_default().to_owned(),
                        deployment: (i < args.rotations).then(|| format!("app-{i:05}")),
                        ns,
                        name,
                        aws_name,
                    },
                ))
            }
        })
        .buffer_unordered(args.parallelism)
        .try_collect::<Vec<_>>()
        .await?
        .into_iter()
        .collect::<BTreeMap<_, _>>()
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
    let refresh = format!("{}s", args.refresh.as_secs_f64());
    stream::iter(objs.iter())
        .map(|o| {
            let api: Api<RotatedSecret> = Api::namespaced(admin.clone(), &o.ns);
            let pp = pp.clone();
            let body = json!({
                "apiVersion": "rotor.dev/v1alpha1", "kind": "RotatedSecret",
                "metadata": {"name": o.name, "labels": {BENCH_LABEL: BENCH_LABEL_VALUE}},
                "spec": {
                    "secretsManager": {"name": o.aws_name},
                    "refreshInterval": refresh,
                    "rollout": {"mode": "Auto"},
                },
            });
            let name = o.name.clone();
            async move {
                api.patch(&name, &pp, &Patch::Apply(&body))
                    .await
                    .map(drop)
                    .map_err(|e| format!("RotatedSecret {name}: {e}"))
            }
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

fn is_ready(rs: &RotatedSecret) -> bool {
    rs.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

async fn wait_all_ready(admin: &Client, n: usize, timeout: Duration, rotor: &mut Rotor) -> Res<Duration> {
    let api: Api<RotatedSecret> = Api::all(admin.clone());
    let lp = ListParams::default().labels(&format!("{BENCH_LABEL}={BENCH_LABEL_VALUE}"));
    let start = Instant::now();
    let mut last_report = Instant::now();
    loop {
        rotor.check_alive()?;
        let list = api
            .list(&lp)
            .await
            .map_err(|e| format!("list RotatedSecrets: {e}"))?;
        let ready = list.items.iter().filter(|r| is_ready(r)).count();
        if ready >= n {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            let stuck: Vec<String> = list
                .items
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
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Current `metadata.generation` of the benchmark's Deployments.
async fn generations(admin: &Client) -> Res<HashMap<Key, i64>> {
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

// ------------------------------------------------------------------- idle

struct Idle {
    minutes: f64,
    rotor: BTreeMap<String, u64>,
    peer: BTreeMap<String, u64>,
    peer_errors: u64,
    per_minute: Vec<u64>,
    cpu_seconds: f64,
    reconciles: u64,
    rss_kib: u64,
    hwm_kib: u64,
}

impl Idle {
    fn rate(map: &BTreeMap<String, u64>, minutes: f64) -> f64 {
        map.values().sum::<u64>() as f64 / minutes
    }
    fn rotor_rate(&self) -> f64 {
        Self::rate(&self.rotor, self.minutes)
    }
    fn peer_rate(&self) -> f64 {
        Self::rate(&self.peer, self.minutes)
    }
}

/// One GetSecretValue per object per refresh interval, evenly spread, until
/// `until`: what External Secrets Operator and similar controllers do.
async fn peer_loop(
    sm: aws_sdk_secretsmanager::Client,
    ids: Vec<String>,
    every: Duration,
    until: Instant,
    par: usize,
) -> u64 {
    let step = every.div_f64(ids.len().max(1) as f64);
    let mut ticker = tokio::time::interval(step);
    let sem = Arc::new(Semaphore::new(par));
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0.. {
        ticker.tick().await;
        if Instant::now() >= until {
            break;
        }
        let Ok(permit) = sem.clone().acquire_owned().await else {
            break;
        };
        let (sm, id, errors) = (sm.clone(), ids[i % ids.len()].clone(), errors.clone());
        tasks.spawn(async move {
            let r = sm
                .get_secret_value()
                .secret_id(id)
                .version_stage("AWSCURRENT")
                .send()
                .await;
            if r.is_err() {
                errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    errors.load(std::sync::atomic::Ordering::Relaxed)
}

async fn idle_phase(
    args: &Args,
    objs: &[Obj],
    rotor: &mut Rotor,
    proxy: &Proxy,
    peer_proxy: &Proxy,
) -> Res<Idle> {
    let window = Duration::from_secs_f64(args.minutes * 60.0);
    proxy.reset().await?;
    peer_proxy.reset().await?;
    let cpu0 = rotor.cpu_seconds();
    let reconciles0 = rotor.reconciles().await?;
    let start = Instant::now();
    let until = start + window;
    let peer = tokio::spawn(peer_loop(
        secrets_manager(&peer_proxy.url),
        objs.iter().map(|o| o.arn.clone()).collect(),
        args.refresh,
        until,
        args.parallelism,
    ));
    let mut per_minute = Vec::new();
    let mut last_total = 0;
    let mut next = start + Duration::from_secs(60);
    while next <= until {
        tokio::time::sleep_until(next.into()).await;
        rotor.check_alive()?;
        let calls = proxy.calls().await?;
        let total: u64 = calls.values().sum();
        per_minute.push(total - last_total);
        log(format!(
            "idle minute {}: {} rotor AWS calls (total so far: {}), {} reconciles since the phase began",
            per_minute.len(),
            total - last_total,
            ops(&calls, 1.0),
            rotor.reconciles().await?.saturating_sub(reconciles0),
        ));
        last_total = total;
        next += Duration::from_secs(60);
    }
    tokio::time::sleep_until(until.into()).await;
    let rotor_calls = proxy.calls().await?;
    let minutes = start.elapsed().as_secs_f64() / 60.0;
    let peer_errors = tokio::time::timeout(Duration::from_secs(60), peer)
        .await
        .map_err(|_| "the peer loop did not stop".to_owned())?
        .map_err(|e| e.to_string())?;
    let peer_calls = peer_proxy.calls().await?;
    let (rss_kib, hwm_kib) = rotor.memory();
    Ok(Idle {
        minutes,
        rotor: rotor_calls,
        peer: peer_calls,
        peer_errors,
        per_minute,
        cpu_seconds: rotor.cpu_seconds() - cpu0,
        reconciles: rotor.reconciles().await?.saturating_sub(reconciles0),
        rss_kib,
        hwm_kib,
    })
}

// -------------------------------------------------------------- rotations

struct RoundPlan {
    name: &'static str,
    spread: Duration,
    events_queue: Option<String>,
    kill_at: Option<usize>,
}

#[derive(Default)]
struct Round {
    name: &'static str,
    rotated: usize,
    secret: Vec<f64>,
    workload: Vec<f64>,
    missing_secret: usize,
    missing_workload: usize,
    calls: BTreeMap<String, u64>,
    note: String,
    /// Pod-template changes per Deployment during the round (generation delta).
    changes: Vec<i64>,
}

/// What a rotation Lambda does: stage a new version as AWSPENDING, then move
/// AWSCURRENT to it. Returns the new version and when the move was sent.
async fn rotate(sm: &aws_sdk_secretsmanager::Client, arn: &str, old: &str) -> Res<(String, Instant)> {
    let token = uuid();
    sm.put_secret_value()
        .secret_id(arn)
        .client_request_token(&token)
        .secret_string(json!({"password": uuid()}).to_string())
        .version_stages("AWSPENDING")
        .send()
        .await
        .map_err(|e| format!("PutSecretValue: {e:?}"))?;
    let moved = Instant::now();
    sm.update_secret_version_stage()
        .secret_id(arn)
        .version_stage("AWSCURRENT")
        .move_to_version_id(&token)
        .remove_from_version_id(old)
        .send()
        .await
        .map_err(|e| format!("UpdateSecretVersionStage: {e:?}"))?;
    Ok((token, moved))
}

/// The EventBridge event (CloudTrail shape) that the move above produces on AWS.
fn cloudtrail_event(arn: &str, name: &str, token: &str, old: &str) -> Value {
    json!({
        "version": "0", "id": uuid(),
        "detail-type": "AWS API Call via CloudTrail", "source": "aws.secretsmanager",
        "account": ACCOUNT, "region": REGION, "resources": [],
        "detail": {
            "eventVersion": "1.08",
            "eventSource": "secretsmanager.amazonaws.com", "eventName": "UpdateSecretVersionStage",
            "awsRegion": REGION, "eventType": "AwsApiCall", "readOnly": false,
            "requestParameters": {
                "secretId": arn, "versionStage": "AWSCURRENT",
                "moveToVersionId": token, "removeFromVersionId": old,
            },
            "responseElements": {"arn": arn, "name": name},
        }
    })
}

type Moves = Arc<Mutex<Vec<Option<(String, Instant)>>>>;

#[allow(clippy::too_many_arguments)]
async fn rotation_round(
    plan: RoundPlan,
    args: &Args,
    admin: &Client,
    objs: &mut [Obj],
    seen: &Shared,
    sm: &aws_sdk_secretsmanager::Client,
    sqs: &aws_sdk_sqs::Client,
    proxy: &Proxy,
    launcher: &mut Launcher,
    rotor: &mut Rotor,
) -> Res<Round> {
    let targets: Vec<usize> = (0..objs.len())
        .filter(|&i| objs[i].deployment.is_some())
        .collect();
    let n = targets.len();
    log(format!(
        "round {:?}: rotating {n} secrets over {:?}",
        plan.name, plan.spread
    ));
    proxy.reset().await?;
    let before = generations(admin).await?;

    let moves: Moves = Arc::new(Mutex::new(vec![None; n]));
    let start = Instant::now();
    let driver = {
        let jobs: Vec<(usize, String, String, String)> = targets
            .iter()
            .map(|&i| {
                (
                    i,
                    objs[i].arn.clone(),
                    objs[i].aws_name.clone(),
                    objs[i].version.clone(),
                )
            })
            .collect();
        let (sm, sqs, moves) = (sm.clone(), sqs.clone(), moves.clone());
        let (spread, queue, par) = (plan.spread, plan.events_queue.clone(), args.parallelism);
        tokio::spawn(async move {
            let sem = Arc::new(Semaphore::new(par));
            let mut set = tokio::task::JoinSet::new();
            for (k, (_, arn, name, old)) in jobs.into_iter().enumerate() {
                tokio::time::sleep_until((start + spread.mul_f64(k as f64 / n as f64)).into()).await;
                let permit = sem.clone().acquire_owned().await.map_err(|e| e.to_string())?;
                let (sm, sqs, moves, queue) = (sm.clone(), sqs.clone(), moves.clone(), queue.clone());
                set.spawn(async move {
                    let (token, moved) = rotate(&sm, &arn, &old).await?;
                    moves.lock().expect("moves lock")[k] = Some((token.clone(), moved));
                    if let Some(q) = queue {
                        let body = cloudtrail_event(&arn, &name, &token, &old).to_string();
                        sqs.send_message()
                            .queue_url(q)
                            .message_body(body)
                            .send()
                            .await
                            .map_err(|e| format!("SendMessage: {e:?}"))?;
                    }
                    drop(permit);
                    Ok::<_, String>(())
                });
            }
            while let Some(r) = set.join_next().await {
                r.map_err(|e| e.to_string())??;
            }
            Ok::<_, String>(())
        })
    };

    // (secrets updated, workloads annotated) among the targets.
    let progress = |moves: &Moves| {
        let moves = moves.lock().expect("moves lock");
        let seen = seen.lock().expect("seen lock");
        let mut done = (0, 0);
        for (k, &i) in targets.iter().enumerate() {
            let Some((v, _)) = &moves[k] else { continue };
            let o = &objs[i];
            if seen.secrets.get(&o.key()).is_some_and(|m| m.contains_key(v)) {
                done.0 += 1;
            }
            if o.deploy_key()
                .and_then(|d| seen.deploys.get(&d))
                .is_some_and(|t| t.values.contains_key(v))
            {
                done.1 += 1;
            }
        }
        done
    };

    let mut note = String::new();
    let mut restarted = false;
    if let Some(kill_at) = plan.kill_at {
        // Polled tightly: a burst of reconciles takes a second or two.
        let deadline = Instant::now() + plan.spread + args.refresh * 3 + Duration::from_secs(120);
        let (s, w) = loop {
            let (s, w) = progress(&moves);
            if s >= kill_at {
                break (s, w);
            }
            if Instant::now() > deadline {
                return Err(format!("only {s}/{n} Secrets updated before the planned restart"));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        rotor.kill();
        log(format!(
            "killed rotor (SIGKILL) with {s}/{n} Secrets and {w}/{n} workloads updated"
        ));
        *rotor = launcher.start(plan.events_queue.as_deref())?;
        let ready = rotor.wait_ready(Duration::from_secs(120)).await?;
        note = format!(
            "rotor SIGKILLed at {s}/{n} Secrets and {w}/{n} workloads updated, restarted (caches ready in {:.1} s)",
            ready.as_secs_f64()
        );
        restarted = true;
    }

    tokio::time::timeout(plan.spread + Duration::from_secs(300), driver)
        .await
        .map_err(|_| "rotations did not finish".to_owned())?
        .map_err(|e| e.to_string())??;

    let timeout = plan.spread + args.refresh * 3 + Duration::from_secs(120);
    let deadline = start + timeout;
    loop {
        rotor.check_alive()?;
        let (s, w) = progress(&moves);
        if s == n && w == n {
            break;
        }
        if Instant::now() > deadline {
            log(format!(
                "round {:?}: TIMEOUT after {timeout:?}: {s}/{n} Secrets and {w}/{n} workloads reached the new version",
                plan.name
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let mut round = Round {
        name: plan.name,
        rotated: n,
        note,
        ..Round::default()
    };
    {
        let moves = moves.lock().expect("moves lock");
        let seen = seen.lock().expect("seen lock");
        for (k, &i) in targets.iter().enumerate() {
            let Some((v, moved)) = &moves[k] else { continue };
            let o = &objs[i];
            match seen.secrets.get(&o.key()).and_then(|m| m.get(v)) {
                Some(t) => round
                    .secret
                    .push(t.saturating_duration_since(*moved).as_secs_f64()),
                None => round.missing_secret += 1,
            }
            match o
                .deploy_key()
                .and_then(|d| seen.deploys.get(&d))
                .and_then(|t| t.values.get(v))
            {
                Some(t) => round
                    .workload
                    .push(t.saturating_duration_since(*moved).as_secs_f64()),
                None => round.missing_workload += 1,
            }
        }
        for (k, &i) in targets.iter().enumerate() {
            if let Some((v, _)) = &moves[k] {
                objs[i].version = v.clone();
            }
        }
    }

    // Let anything late (a second patch would be a bug) show up before
    // counting: after a restart, until the new process has reconciled every
    // object once; then a few more seconds.
    if restarted {
        let total = objs.len() as u64;
        let r = &*rotor;
        eventually(
            "the restarted rotor to reconcile every object",
            Duration::from_secs(120) + Duration::from_millis(500) * objs.len() as u32,
            || async { r.reconciles().await.ok().filter(|&c| c >= total) },
        )
        .await?;
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after = generations(admin).await?;
    round.changes = targets
        .iter()
        .filter_map(|&i| objs[i].deploy_key())
        .map(|k| after.get(&k).copied().unwrap_or(0) - before.get(&k).copied().unwrap_or(0))
        .collect();
    round.calls = proxy.calls().await?;
    Ok(round)
}

// ---------------------------------------------------------------- report

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

fn ops(map: &BTreeMap<String, u64>, per: f64) -> String {
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

// ------------------------------------------------------------------- run

async fn run(args: Args) -> Res<bool> {
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let admin_kc = PathBuf::from(env_var("ROTOR_TEST_ADMIN_KUBECONFIG")?);
    let rotor_kc = PathBuf::from(env_var("ROTOR_TEST_ROTOR_KUBECONFIG")?);
    let moto = env_var("ROTOR_TEST_AWS_ENDPOINT")?;
    let dir = PathBuf::from(env_var("ROTOR_TEST_DIR")?);
    if args.objects == 0 || args.namespaces == 0 || args.parallelism == 0 {
        return Err("--objects, --namespaces and --parallelism must be positive".into());
    }
    let args = Args {
        rotations: args.rotations.min(args.objects),
        ..args
    };
    let load_start = loadavg();
    // The tree as built (others may edit it while this runs).
    let revision = sh(
        "git",
        &[
            "-C",
            root.to_str().unwrap_or("."),
            "describe",
            "--always",
            "--dirty",
        ],
    );
    // Run a private copy: a `cargo build` elsewhere must not swap the binary
    // between rotor's restarts.
    let bin = dir.join("rotor-bench-bin");
    std::fs::copy(env!("CARGO_BIN_EXE_rotor"), &bin).map_err(|e| format!("copy the rotor binary: {e}"))?;

    let admin = kube_client(&admin_kc).await?;
    let apiserver = admin
        .apiserver_version()
        .await
        .map(|v| v.git_version)
        .map_err(|e| format!("API server: {e}"))?;
    install_cluster_wide(&admin, &root).await?;
    let sm = secrets_manager(&moto);
    let sqs_client = sqs(&moto);

    let seen: Shared = Arc::default();
    spawn_watchers(&admin, &seen);

    log(format!(
        "creating {} AWS secrets and RotatedSecrets in {} namespaces, {} Deployments",
        args.objects, args.namespaces, args.rotations
    ));
    let (mut objs, setup_times) =
        tokio::time::timeout(Duration::from_secs(600), create_fleet(&args, &admin, &sm))
            .await
            .map_err(|_| "setup did not finish in 10 minutes".to_owned())??;
    log(format!("setup: {setup_times}"));

    let proxy = Proxy::start(&root, &moto)?;
    let peer_proxy = Proxy::start(&root, &moto)?;
    let mut launcher = Launcher {
        bin,
        kubeconfig: rotor_kc,
        endpoint: proxy.url.clone(),
        dir: dir.clone(),
        min_refresh: args.min_refresh_interval.clone(),
        extra: args.rotor_args.clone(),
        starts: 0,
    };
    let started = Instant::now();
    let mut rotor = launcher.start(None)?;
    rotor.wait_ready(Duration::from_secs(120)).await?;
    let ready_timeout = Duration::from_secs(120) + Duration::from_millis(500) * args.objects as u32;
    wait_all_ready(&admin, args.objects, ready_timeout, &mut rotor).await?;
    let ready_in = started.elapsed();
    let startup_calls = proxy.calls().await?;
    log(format!(
        "all {} Ready {:.1} s after rotor started",
        args.objects,
        ready_in.as_secs_f64()
    ));
    let baseline = generations(&admin).await?;
    let first_sync_restarts = baseline.values().filter(|&&g| g != 1).count();

    log(format!("settling for {:?}", args.settle));
    tokio::time::sleep(args.settle).await;
    log(format!(
        "idle phase: {} minutes, rotor and the peer strategy side by side",
        args.minutes
    ));
    let idle = idle_phase(&args, &objs, &mut rotor, &proxy, &peer_proxy).await?;
    drop(peer_proxy);

    let mut rounds = Vec::new();
    let poll = RoundPlan {
        name: "polling",
        spread: args.refresh,
        events_queue: None,
        kill_at: None,
    };
    rounds.push(
        rotation_round(
            poll,
            &args,
            &admin,
            &mut objs,
            &seen,
            &sm,
            &sqs_client,
            &proxy,
            &mut launcher,
            &mut rotor,
        )
        .await?,
    );
    let restart = RoundPlan {
        name: "polling, rotor killed midway",
        spread: Duration::ZERO,
        events_queue: None,
        kill_at: Some(args.rotations.div_ceil(2)),
    };
    rounds.push(
        rotation_round(
            restart,
            &args,
            &admin,
            &mut objs,
            &seen,
            &sm,
            &sqs_client,
            &proxy,
            &mut launcher,
            &mut rotor,
        )
        .await?,
    );

    let queue = sqs_client
        .create_queue()
        .queue_name("rotor-bench-events")
        .send()
        .await
        .map_err(|e| format!("CreateQueue: {e:?}"))?
        .queue_url()
        .unwrap_or_default()
        .to_owned();
    rotor.stop();
    rotor = launcher.start(Some(&queue))?;
    rotor.wait_ready(Duration::from_secs(120)).await?;
    {
        let total = objs.len() as u64;
        let r = &rotor;
        eventually(
            "rotor with events to reconcile every object",
            Duration::from_secs(120) + Duration::from_millis(500) * objs.len() as u32,
            || async { r.reconciles().await.ok().filter(|&c| c >= total) },
        )
        .await?;
    }
    let events = RoundPlan {
        name: "SQS events",
        spread: args.refresh,
        events_queue: Some(queue),
        kill_at: None,
    };
    rounds.push(
        rotation_round(
            events,
            &args,
            &admin,
            &mut objs,
            &seen,
            &sm,
            &sqs_client,
            &proxy,
            &mut launcher,
            &mut rotor,
        )
        .await?,
    );

    // Exactly once over the whole run: each Deployment's pod template changed
    // once per round, to that round's version, and never otherwise.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let end = generations(&admin).await?;
    let want = rounds.len() as i64;
    let (mut extra, mut missing) = (0i64, 0i64);
    let mut distinct_ok = 0;
    {
        let seen = seen.lock().expect("seen lock");
        for o in objs.iter().filter(|o| o.deployment.is_some()) {
            let k = o.deploy_key().unwrap_or_default();
            let delta = end.get(&k).copied().unwrap_or(0) - baseline.get(&k).copied().unwrap_or(0);
            extra += (delta - want).max(0);
            missing += (want - delta).max(0);
            if seen
                .deploys
                .get(&k)
                .is_some_and(|t| t.values.len() as i64 == want)
            {
                distinct_ok += 1;
            }
        }
    }
    let (rss_end, hwm_end) = rotor.memory();
    rotor.stop();
    let load_end = loadavg();

    // ------------------------------------------------------------ print
    let refresh_s = args.refresh.as_secs_f64();
    let rotor_rate = idle.rotor_rate();
    let peer_rate = idle.peer_rate();
    let ratio = if rotor_rate > 0.0 {
        peer_rate / rotor_rate
    } else {
        f64::INFINITY
    };
    let nominal_peer = args.objects as f64 * 60.0 / refresh_s;
    let mut complete = true;
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line("## rotor fleet benchmark".into());
    line(String::new());
    line(format!("command:  {command}"));
    line(format!("machine:  {}", machine()));
    line(format!(
        "load avg: {load_start} at start, {load_end} at end (1/5/15 min)"
    ));
    line(format!(
        "versions: rotor {} ({}), {}, kube-apiserver {apiserver}, moto {}",
        env!("CARGO_PKG_VERSION"),
        revision,
        sh("rustc", &["-V"]),
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
    line(format!(
        "setup:    {setup_times}; all Ready {:.1} s after rotor started ({} AWS calls: {})",
        ready_in.as_secs_f64(),
        startup_calls.values().sum::<u64>(),
        ops(&startup_calls, 1.0)
    ));
    line(String::new());
    line("| measurement | result | target |".into());
    line("|---|---|---|".into());
    line(format!(
        "| idle AWS calls/min, rotor (at the endpoint, {:.1} min) | **{rotor_rate:.1}** | ≤ 15 ({}) |",
        idle.minutes,
        verdict(rotor_rate <= 15.0)
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
    let poll_target = refresh_s + 2.0;
    for r in &rounds {
        let (s50, s99, smax) = stats(&r.secret);
        let (w50, w99, wmax) = stats(&r.workload);
        let target = match r.name {
            "polling" => Some((poll_target, format!("p99 ≤ {poll_target:.0} s"))),
            "SQS events" => Some((2.0, "p99 ≤ 2 s".to_owned())),
            _ => None,
        };
        let missing = r.missing_secret + r.missing_workload;
        if missing > 0 {
            complete = false;
        }
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
        if !r.note.is_empty() {
            line(format!("| ↳ {} | {} | |", r.name, r.note));
        }
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
        idle.rss_kib as f64 / 1024.0,
        idle.hwm_kib as f64 / 1024.0
    ));
    line(format!(
        "| rotor RSS at the end (VmRSS / VmHWM, third process) | {:.1} MiB / {:.1} MiB | |",
        rss_end as f64 / 1024.0,
        hwm_end as f64 / 1024.0
    ));
    line(format!(
        "| rotor CPU during the idle phase | {:.1} s ({:.2}% of one core) | |",
        idle.cpu_seconds,
        100.0 * idle.cpu_seconds / (idle.minutes * 60.0)
    ));
    line(format!(
        "| reconciles during the idle phase (rotor_reconciles_total) | {} | |",
        idle.reconciles
    ));
    println!("{out}");

    if let Some(path) = &args.json {
        let rounds_json: Vec<Value> = rounds
            .iter()
            .map(|r| {
                let (s50, s99, smax) = stats(&r.secret);
                let (w50, w99, wmax) = stats(&r.workload);
                json!({
                    "name": r.name, "rotations": r.rotated,
                    "secret_seconds": {"p50": s50, "p99": s99, "max": smax, "samples": r.secret},
                    "workload_seconds": {"p50": w50, "p99": w99, "max": wmax, "samples": r.workload},
                    "missing_secret": r.missing_secret, "missing_workload": r.missing_workload,
                    "pod_template_changes": r.changes, "aws_calls": r.calls, "note": r.note,
                })
            })
            .collect();
        let doc = json!({
            "command": command, "machine": machine(), "load_start": load_start, "load_end": load_end,
            "apiserver": apiserver, "objects": args.objects, "refresh_seconds": refresh_s,
            "ready_seconds": ready_in.as_secs_f64(), "startup_aws_calls": startup_calls,
            "idle": {
                "minutes": idle.minutes, "rotor_calls": idle.rotor, "rotor_per_minute": rotor_rate,
                "rotor_calls_each_minute": idle.per_minute,
                "peer_calls": idle.peer, "peer_per_minute": peer_rate, "peer_errors": idle.peer_errors,
                "ratio": ratio, "rss_kib": idle.rss_kib, "hwm_kib": idle.hwm_kib, "cpu_seconds": idle.cpu_seconds,
                "reconciles": idle.reconciles,
            },
            "rounds": rounds_json,
            "exactly_once": {"extra": extra, "missing": missing, "first_sync_restarts": first_sync_restarts},
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc).unwrap_or_default())
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(complete && first_sync_restarts == 0 && extra == 0 && missing == 0)
}
