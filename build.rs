//! Exports `ROTOR_GIT_SHA` to the crate: the short git revision the binary is
//! built from, `-dirty` appended when the work tree has changes, `unknown`
//! outside a git checkout. An existing `ROTOR_GIT_SHA` environment variable
//! wins, so image builds (whose context has no `.git`) pass it as a build arg.
//! `rotor --version`, the startup log line and `rotor_build_info` carry it.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=ROTOR_GIT_SHA");
    let sha = match std::env::var("ROTOR_GIT_SHA") {
        Ok(sha) if !sha.trim().is_empty() => sha.trim().to_owned(),
        _ => from_git().unwrap_or_else(|| "unknown".to_owned()),
    };
    println!("cargo:rustc-env=ROTOR_GIT_SHA={sha}");
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn from_git() -> Option<String> {
    let sha = git(&["rev-parse", "--short=12", "HEAD"]).filter(|s| !s.is_empty())?;
    watch_git_state();
    let dirty = !git(&["status", "--porcelain"])?.is_empty();
    Some(if dirty { format!("{sha}-dirty") } else { sha })
}

/// Re-run when HEAD moves (checkout, commit) or the index changes (add,
/// commit). Only paths that exist: cargo treats a missing one as always
/// changed, and would rebuild the crate every time.
fn watch_git_state() {
    let Some(git_dir) = git(&["rev-parse", "--git-dir"]).map(PathBuf::from) else {
        return;
    };
    let watch = |path: &Path| {
        if path.exists() {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    };
    let head = git_dir.join("HEAD");
    watch(&head);
    watch(&git_dir.join("index"));
    if let Some(reference) = std::fs::read_to_string(&head)
        .ok()
        .and_then(|h| h.strip_prefix("ref: ").map(|r| r.trim().to_owned()))
    {
        // A loose ref, or (after `git pack-refs`) the packed-refs file.
        watch(&git_dir.join(&reference));
        watch(&git_dir.join("packed-refs"));
    }
    // Edits that are not staged change `git status` but no file above;
    // sources changing rebuild the crate anyway, so re-run with them.
    for path in ["src", "Cargo.toml", "Cargo.lock", "build.rs"] {
        watch(Path::new(path));
    }
}
