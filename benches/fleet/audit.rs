//! rotor's requests to the API server, counted from kube-apiserver's audit
//! log (hack/bench.sh starts the test bed with `TESTBED_AUDIT_USER=rotor`,
//! so the log holds only rotor's requests, at the Metadata level).

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

use serde_json::Value;

use crate::Res;

pub struct Audit {
    path: PathBuf,
}

impl Audit {
    pub fn new(dir: &std::path::Path) -> Audit {
        Audit {
            path: dir.join("audit.log"),
        }
    }

    /// Where the log ends now: counting starts here.
    pub fn mark(&self) -> Res<u64> {
        std::fs::metadata(&self.path).map(|m| m.len()).map_err(|e| {
            format!(
                "{} (is the test bed up with TESTBED_AUDIT_USER=rotor?): {e}",
                self.path.display()
            )
        })
    }

    /// Requests made since `from`, by `verb resource`. A request counts once:
    /// a watch when its response starts, anything else when it completes.
    pub fn since(&self, from: u64) -> Res<BTreeMap<String, u64>> {
        let mut f = std::fs::File::open(&self.path).map_err(|e| format!("{}: {e}", self.path.display()))?;
        f.seek(SeekFrom::Start(from)).map_err(|e| e.to_string())?;
        let mut text = String::new();
        f.read_to_string(&mut text).map_err(|e| e.to_string())?;
        let mut counts = BTreeMap::new();
        // The last line may be half written; it is counted next time, if ever.
        for line in text.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()) {
            let verb = line["verb"].as_str().unwrap_or("?");
            let counted = match line["stage"].as_str() {
                Some("ResponseStarted") => verb == "watch",
                Some("ResponseComplete") => verb != "watch",
                _ => false,
            };
            if counted {
                let resource = line["objectRef"]["resource"].as_str().unwrap_or("-");
                *counts.entry(format!("{verb} {resource}")).or_default() += 1;
            }
        }
        Ok(counts)
    }
}
