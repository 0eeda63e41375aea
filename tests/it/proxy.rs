//! A fault-injecting proxy between rotor and moto (hack/aws_proxy.py), and a
//! smoke test of it.
//!
//! Point rotor (or an SDK client) at `AwsProxy::url` instead of the test bed's
//! moto; count the AWS calls it makes and inject errors, throttling, dropped
//! connections, latency, or lost responses after a successful write. Each
//! test starts its own proxy, so counts and faults never leak between tests.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub struct AwsProxy {
    pub url: String,
    pub port: u16,
    child: Child,
    // Held open: the proxy exits when its stdin closes (if this process dies
    // without running Drop), and keeping stdout avoids a broken pipe.
    _stdin: ChildStdin,
    _stdout: BufReader<ChildStdout>,
}

impl AwsProxy {
    /// Starts a proxy on a free loopback port forwarding to `upstream`
    /// (e.g. `testbed().aws_endpoint`), and waits until it answers.
    pub fn start(upstream: &str) -> AwsProxy {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/hack/aws_proxy.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args(["--listen-port", "0", "--upstream", upstream])
            .arg("--exit-on-stdin-eof")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start python3 hack/aws_proxy.py");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read the proxy's port");
        let port: u16 = match line.trim().parse() {
            Ok(p) => p,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("aws_proxy.py printed {line:?} instead of its port");
            }
        };
        let proxy = AwsProxy {
            url: format!("http://127.0.0.1:{port}"),
            port,
            child,
            _stdin: stdin,
            _stdout: stdout,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while proxy.try_request("GET", "calls", None).is_err() {
            assert!(Instant::now() < deadline, "aws_proxy.py did not answer");
            std::thread::sleep(Duration::from_millis(50));
        }
        proxy
    }

    /// Calls per AWS operation that reached the proxy, faulted or not.
    pub fn calls(&self) -> BTreeMap<String, u64> {
        self.counts("calls")
    }

    /// Calls per `region/Operation` (the SigV4 signing region) that reached the proxy.
    pub fn calls_by_region(&self) -> BTreeMap<String, u64> {
        self.counts("calls?by=region")
    }

    /// Calls per AWS operation the proxy forwarded to moto.
    pub fn forwarded(&self) -> BTreeMap<String, u64> {
        self.counts("calls?forwarded=1")
    }

    /// Clears counts and faults.
    pub fn reset(&self) {
        self.request("POST", "reset", None);
    }

    /// Makes the next `count` calls of `operation` (`"*"` = any; `-1` = until
    /// cleared) fail with `kind`: `"error"` (500, `code` or InternalFailure,
    /// not forwarded), `"throttle"` (400 ThrottlingException), `"drop"`
    /// (connection closed, not forwarded) or `"after"` (forwarded, so the
    /// write happens, then a 500 error). For `"delay"` and custom statuses
    /// use [`AwsProxy::fault_spec`].
    pub fn fault(&self, operation: &str, count: i64, kind: &str, code: Option<&str>) {
        let mut spec = json!({"operation": operation, "count": count, "kind": kind});
        if let Some(code) = code {
            spec["code"] = json!(code);
        }
        self.fault_spec(spec);
    }

    /// Adds a fault rule as the proxy's control API takes it, e.g.
    /// `{"operation": "GetSecretValue", "kind": "delay", "seconds": 2}` or
    /// `{"operation": "*", "service": "kms", "kind": "error", "code": "KMSInternalException", "status": 500}`.
    pub fn fault_spec(&self, spec: Value) {
        self.request("POST", "fault", Some(&spec));
    }

    /// Removes all fault rules (counts stay).
    pub fn clear_faults(&self) {
        self.request("DELETE", "fault", None);
    }

    fn counts(&self, what: &str) -> BTreeMap<String, u64> {
        serde_json::from_value(self.request("GET", what, None)).expect("counts are a JSON map")
    }

    fn request(&self, method: &str, what: &str, body: Option<&Value>) -> Value {
        self.try_request(method, what, body)
            .unwrap_or_else(|e| panic!("aws_proxy {method} /_proxy/{what}: {e}"))
    }

    fn try_request(&self, method: &str, what: &str, body: Option<&Value>) -> Result<Value, String> {
        let url = format!("{}/_proxy/{what}", self.url);
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--fail-with-body", "--max-time", "10", "-X", method]);
        if let Some(body) = body {
            cmd.args(["-H", "Content-Type: application/json", "--data-binary"])
                .arg(body.to_string());
        }
        let out = cmd.arg(&url).output().map_err(|e| format!("curl: {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Err(format!(
                "{}{stdout}",
                String::from_utf8_lossy(&out.stderr).trim_end()
            ));
        }
        serde_json::from_str(&stdout).map_err(|e| format!("bad JSON {stdout:?}: {e}"))
    }
}

impl Drop for AwsProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn proxy_counts_and_injects_faults() {
    use crate::common::{secrets_manager, testbed, uuid_like};
    use aws_sdk_secretsmanager::config::retry::RetryConfig;
    use aws_sdk_secretsmanager::error::ProvideErrorMetadata;

    let proxy = AwsProxy::start(&testbed().aws_endpoint);
    assert_eq!(proxy.port.to_string(), proxy.url.rsplit(':').next().unwrap());
    assert!(proxy.calls().is_empty());
    // One attempt per call, so each injected fault is seen exactly once.
    let sm = aws_sdk_secretsmanager::Client::from_conf(
        secrets_manager(&proxy.url)
            .config()
            .to_builder()
            .retry_config(RetryConfig::disabled())
            .build(),
    );
    let direct = secrets_manager(&testbed().aws_endpoint);
    let prefix = format!("it/proxy-{}/", &uuid_like()[..8]);
    let (a, b) = (format!("{prefix}a"), format!("{prefix}b"));
    let exists = |name: String| {
        let direct = direct.clone();
        async move { direct.describe_secret().secret_id(name).send().await.is_ok() }
    };
    let counts = |pairs: &[(&str, u64)]| -> BTreeMap<String, u64> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    };

    // Plain forwarding, counted per operation.
    sm.create_secret()
        .name(&a)
        .secret_string("v1")
        .send()
        .await
        .expect("create through the proxy");
    sm.describe_secret().secret_id(&a).send().await.unwrap();
    let want = counts(&[("CreateSecret", 1), ("DescribeSecret", 1)]);
    assert_eq!(proxy.calls(), want);
    assert_eq!(proxy.forwarded(), want);

    // An injected error fails once and never reaches moto.
    proxy.fault("CreateSecret", 1, "error", Some("InternalFailure"));
    let err = sm
        .create_secret()
        .name(&b)
        .secret_string("v1")
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("InternalFailure"));
    assert!(!exists(b.clone()).await, "a faulted call must not reach moto");
    sm.create_secret()
        .name(&b)
        .secret_string("v1")
        .send()
        .await
        .expect("the fault is used up");
    assert_eq!(proxy.calls()["CreateSecret"], 3);
    assert_eq!(proxy.forwarded()["CreateSecret"], 2);

    // Throttling until cleared.
    proxy.fault("DescribeSecret", -1, "throttle", None);
    for _ in 0..2 {
        let err = sm.describe_secret().secret_id(&a).send().await.unwrap_err();
        assert_eq!(err.code(), Some("ThrottlingException"));
    }
    proxy.clear_faults();
    sm.describe_secret().secret_id(&a).send().await.unwrap();

    // `after`: the write happens, the response is lost.
    proxy.fault("PutSecretValue", 1, "after", None);
    let err = sm
        .put_secret_value()
        .secret_id(&a)
        .secret_string("v2")
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("InternalFailure"));
    let value = direct
        .get_secret_value()
        .secret_id(&a)
        .version_stage("AWSCURRENT")
        .send()
        .await
        .unwrap();
    assert_eq!(value.secret_string(), Some("v2"), "`after` forwards the write");

    // A dropped connection is a dispatch failure, not a service error.
    proxy.fault("*", 1, "drop", None);
    let err = sm.list_secrets().send().await.unwrap_err();
    assert!(err.code().is_none(), "expected a connection error, got {err:?}");
    sm.list_secrets().send().await.expect("next call goes through");

    // Latency.
    proxy.fault_spec(json!({"operation": "ListSecrets", "kind": "delay", "seconds": 1}));
    let start = Instant::now();
    sm.list_secrets().send().await.unwrap();
    assert!(start.elapsed() >= Duration::from_secs(1));

    assert_eq!(
        proxy.calls(),
        counts(&[
            ("CreateSecret", 3),
            ("DescribeSecret", 4),
            ("ListSecrets", 3),
            ("PutSecretValue", 1),
        ])
    );
    assert_eq!(
        proxy.forwarded(),
        counts(&[
            ("CreateSecret", 2),
            ("DescribeSecret", 2),
            ("ListSecrets", 2),
            ("PutSecretValue", 1),
        ])
    );

    proxy.fault("*", -1, "error", None);
    proxy.reset();
    assert!(proxy.calls().is_empty() && proxy.forwarded().is_empty());
    sm.describe_secret()
        .secret_id(&a)
        .send()
        .await
        .expect("reset clears faults");

    for name in [a, b] {
        direct
            .delete_secret()
            .secret_id(name)
            .force_delete_without_recovery(true)
            .send()
            .await
            .unwrap();
    }
}
