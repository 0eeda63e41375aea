//! Control-plane failures: restarting a test bed's etcd or kube-apiserver
//! (`hack/testbed.sh restart`), and a private control plane (its own etcd and
//! kube-apiserver, `hack/testbed.sh up-control-plane`) for tests that restart
//! it while other tests use the shared one.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::{random_suffix, repo_root};

/// Stops component `name` (`etcd`, `kube-apiserver`) of the test bed in
/// `dir`, keeps it down for `down`, starts it again with the same command
/// line and waits until it answers.
pub fn restart(dir: &Path, name: &str, down: Duration) -> Result<(), String> {
    testbed_sh(dir, &["restart", name, &down.as_secs_f64().to_string()])
}

fn testbed_sh(dir: &Path, args: &[&str]) -> Result<(), String> {
    let out = Command::new(repo_root().join("hack/testbed.sh"))
        .args(args)
        .env("TESTBED_DIR", dir)
        .output()
        .map_err(|e| format!("hack/testbed.sh {args:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "hack/testbed.sh {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// An etcd and a kube-apiserver of one test's own, stopped on drop.
pub struct ControlPlane {
    pub dir: PathBuf,
    pub admin_kubeconfig: PathBuf,
    /// The `rotor` user (no permissions until a test binds some).
    pub rotor_kubeconfig: PathBuf,
}

impl ControlPlane {
    /// Starts one (about 10 s) in a fresh folder under the system's temp dir.
    pub fn start() -> Result<ControlPlane, String> {
        let dir = std::env::temp_dir().join(format!("rotor-cp-{}", random_suffix()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        testbed_sh(&dir, &["up-control-plane"])?;
        Ok(ControlPlane {
            admin_kubeconfig: dir.join("admin.kubeconfig"),
            rotor_kubeconfig: dir.join("rotor.kubeconfig"),
            dir,
        })
    }

    pub fn restart(&self, name: &str, down: Duration) -> Result<(), String> {
        restart(&self.dir, name, down)
    }

    /// The running process of component `name`, as `hack/testbed.sh` recorded it.
    pub fn pid(&self, name: &str) -> Result<u32, String> {
        let path = self.dir.join("cmd").join(format!("{name}.pid"));
        std::fs::read_to_string(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .trim()
            .parse()
            .map_err(|e| format!("{}: {e}", path.display()))
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = testbed_sh(&self.dir, &["down"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
