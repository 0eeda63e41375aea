//! Giving freed heap back to the system.
//!
//! glibc's malloc returns memory to the kernel only from the top of an
//! arena, so the pages freed after a burst (the first sync of thousands of
//! objects, a bulk apply) stay resident: at 10,000 objects rotor's RSS
//! stayed at its high-water mark, well above what it still held.
//! `malloc_trim` also releases the free pages inside each arena.

/// Releases the free pages of every malloc arena. Takes milliseconds; called
/// once a poll interval, after the sweep.
pub fn release_free() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let start = std::time::Instant::now();
        // SAFETY: malloc_trim takes the allocator's own locks and only
        // touches memory that is free.
        let released = unsafe { libc::malloc_trim(0) } == 1;
        tracing::debug!(released, took = ?start.elapsed(), "heap trimmed");
    }
}
