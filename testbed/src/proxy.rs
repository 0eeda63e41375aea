//! A fault-injecting, call-counting proxy between rotor and moto
//! (`hack/aws_proxy.py`).
//!
//! Point rotor (or an SDK client) at [`AwsProxy::url`] instead of the test
//! bed's moto; count the AWS calls it makes and inject errors, throttling,
//! dropped connections, latency, or lost responses after a successful write.
//! Each test (and each benchmark measurement) starts its own proxy, so
//! counts and faults never leak between them.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::http;

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
    pub fn try_start(upstream: &str) -> Result<AwsProxy, String> {
        let script = crate::repo_root().join("hack/aws_proxy.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args(["--listen-port", "0", "--upstream", upstream])
            .arg("--exit-on-stdin-eof")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("start python3 hack/aws_proxy.py: {e}"))?;
        let stdin = child.stdin.take().expect("piped stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        let read = stdout.read_line(&mut line);
        let Some(port) = read.ok().and_then(|_| line.trim().parse::<u16>().ok()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("aws_proxy.py printed {line:?} instead of its port"));
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
            if Instant::now() > deadline {
                return Err("aws_proxy.py did not answer".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(proxy)
    }

    /// [`AwsProxy::try_start`], panicking.
    pub fn start(upstream: &str) -> AwsProxy {
        Self::try_start(upstream).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Calls per AWS operation that reached the proxy, faulted or not.
    pub fn try_calls(&self) -> Result<BTreeMap<String, u64>, String> {
        self.try_counts("calls")
    }

    pub fn calls(&self) -> BTreeMap<String, u64> {
        self.try_calls().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Calls per `region/Operation` (the SigV4 signing region) that reached the proxy.
    pub fn calls_by_region(&self) -> BTreeMap<String, u64> {
        self.try_counts("calls?by=region")
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Calls per AWS operation the proxy forwarded to moto.
    pub fn forwarded(&self) -> BTreeMap<String, u64> {
        self.try_counts("calls?forwarded=1")
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Clears counts and faults.
    pub fn try_reset(&self) -> Result<(), String> {
        self.try_request("POST", "reset", None).map(drop)
    }

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

    /// The active fault rules (empty once every injected fault fired).
    pub fn active_faults(&self) -> Vec<Value> {
        serde_json::from_value(self.request("GET", "faults", None)).expect("faults are a JSON list")
    }

    fn try_counts(&self, what: &str) -> Result<BTreeMap<String, u64>, String> {
        serde_json::from_value(self.try_request("GET", what, None)?)
            .map_err(|e| format!("aws_proxy /_proxy/{what}: not a JSON map of counts: {e}"))
    }

    fn request(&self, method: &str, what: &str, body: Option<&Value>) -> Value {
        self.try_request(method, what, body)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_request(&self, method: &str, what: &str, body: Option<&Value>) -> Result<Value, String> {
        let path = format!("/_proxy/{what}");
        let body = body.map(Value::to_string);
        let (status, text) = http::request(method, http::authority(&self.url), &path, body.as_deref())?;
        if !(200..300).contains(&status) {
            return Err(format!("aws_proxy {method} {path}: HTTP {status}: {text}"));
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).map_err(|e| format!("aws_proxy {method} {path}: bad JSON {text:?}: {e}"))
    }
}

impl Drop for AwsProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
