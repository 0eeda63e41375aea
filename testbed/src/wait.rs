//! Polling and unique names.

use std::future::Future;
use std::time::{Duration, Instant};

use rand::Rng;

/// Polls `f` every 200 ms until it returns `Some`, or fails after `timeout`.
pub async fn try_eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(format!("timed out after {timeout:?} waiting for {what}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// [`try_eventually`] that panics on timeout.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    try_eventually(what, timeout, f)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A random UUID-shaped string (ClientRequestTokens, event ids, names).
pub fn uuid_like() -> String {
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

/// Ten random hex digits, for namespaces, AWS name prefixes and log files.
pub fn random_suffix() -> String {
    let n: u64 = rand::rng().random();
    format!("{n:016x}")[..10].to_owned()
}
