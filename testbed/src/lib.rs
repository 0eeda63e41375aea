//! The test-bed harness shared by rotor's integration tests (`tests/it`) and
//! the fleet benchmark (`benches/fleet`): the test bed's variables, AWS and
//! Kubernetes clients, the fault-injecting AWS proxy, `rotor run` processes,
//! rotation simulation, SQS queues, unique names and polling.
//!
//! The test bed itself (etcd, kube-apiserver, moto, PostgreSQL, MariaDB) is
//! started by `hack/testbed.sh up`, which writes the `ROTOR_TEST_*`
//! variables read here. Without them everything here fails; nothing skips.
//!
//! Errors: what a benchmark must survive and report returns
//! `Result<_, String>` (`try_*`); tests call the panicking forms beside them.
//! The rotor binary's path (`env!("CARGO_BIN_EXE_rotor")`, only defined in
//! rotor's own tests and benches) is passed in.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub mod aws;
pub mod control_plane;
pub mod db;
pub mod http;
pub mod k8s;
pub mod proxy;
pub mod rotor;
pub mod wait;

pub use control_plane::ControlPlane;
pub use proxy::AwsProxy;
pub use rotor::{Rotor, RotorCommand};
pub use wait::{eventually, random_suffix, try_eventually, uuid_like};

/// The region everything on the test bed runs in.
pub const REGION: &str = "us-east-1";
/// moto's default account.
pub const ACCOUNT: &str = "123456789012";

/// Where `hack/testbed.sh up` put the test bed.
#[derive(Clone, Debug)]
pub struct TestBed {
    /// kubeconfig of the API server's admin.
    pub admin_kubeconfig: PathBuf,
    /// kubeconfig of the `rotor` user, bound to the chart's ClusterRole.
    pub rotor_kubeconfig: PathBuf,
    /// moto, e.g. `http://127.0.0.1:5000`.
    pub aws_endpoint: String,
    /// The test bed's folder, for logs and scratch files.
    pub dir: PathBuf,
}

impl TestBed {
    pub fn from_env() -> Result<TestBed, String> {
        Ok(TestBed {
            admin_kubeconfig: var("ROTOR_TEST_ADMIN_KUBECONFIG")?.into(),
            rotor_kubeconfig: var("ROTOR_TEST_ROTOR_KUBECONFIG")?.into(),
            aws_endpoint: var("ROTOR_TEST_AWS_ENDPOINT")?,
            dir: var("ROTOR_TEST_DIR")?.into(),
        })
    }
}

fn var(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| {
        format!(
            "{name} is not set: this needs the test bed. Run `make test` (or `make bench`), or \
             `hack/testbed.sh up && . .testbed/env` first."
        )
    })
}

/// The test bed, read once; panics (with how to start it) when it is not up.
pub fn testbed() -> &'static TestBed {
    static BED: OnceLock<TestBed> = OnceLock::new();
    BED.get_or_init(|| TestBed::from_env().unwrap_or_else(|e| panic!("{e}")))
}

/// JSON merge of `patch` into `base`: objects merged key by key, anything
/// else replaced.
pub fn merge_json(base: &mut serde_json::Value, patch: serde_json::Value) {
    use serde_json::Value;
    match (base, patch) {
        (Value::Object(base), Value::Object(patch)) => {
            for (k, v) in patch {
                merge_json(base.entry(k).or_insert(Value::Null), v);
            }
        }
        (base, patch) => *base = patch,
    }
}

/// The repository's root (for `hack/` scripts and the chart's files).
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testbed/ is inside the repository")
}
