//! New objects while the fleet exists: a RotatedSecret applied every second
//! (its AWS secret created first, as a team would), timed from the apply to
//! Ready. Issue 11's target: p95 ≤ 10 s, whatever the fleet's size.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::setup::{Obj, refresh_spec};
use crate::{Bench, NS_PREFIX, Res, log};

pub struct Newcomers {
    /// Seconds from apply to Ready, one per object.
    pub ready: Vec<f64>,
    /// Objects not Ready within the timeout.
    pub missing: usize,
}

const TIMEOUT: Duration = Duration::from_secs(120);

impl Bench {
    pub async fn newcomers(&mut self, n: usize) -> Res<Newcomers> {
        log(format!(
            "{n} new objects, one a second, timed from apply to Ready"
        ));
        let refresh = refresh_spec(&self.args);
        let mut applied = Vec::new();
        for i in 0..n {
            let ns = format!("{NS_PREFIX}{}", i % self.args.namespaces);
            let obj = Obj::create(&self.sm, ns, format!("new-{i:03}")).await?;
            obj.apply(&self.admin, &refresh, json!({})).await?;
            // Stamped after the apply returns, like the Ready times (the watch).
            applied.push((obj.key(), Instant::now()));
            self.objs.push(obj);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let ready: Vec<f64> = {
                let seen = self.seen.lock().expect("seen lock");
                applied
                    .iter()
                    .filter_map(|(key, at)| {
                        Some(seen.ready.get(key)?.saturating_duration_since(*at).as_secs_f64())
                    })
                    .collect()
            };
            if ready.len() == n || Instant::now() > deadline {
                return Ok(Newcomers {
                    missing: n - ready.len(),
                    ready,
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
