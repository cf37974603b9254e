//! Tasks off the landing path: runtimes at a lower CPU priority for maintenance and
//! queries, shutdown within a grace period, and giving freed memory back.

use std::time::Duration;

/// How much less CPU priority maintenance threads have than the rest of the processor (a
/// nice value): when the cores are busy, a pass gets about a tenth of what a receiving or
/// committing thread gets (the kernel's weights for nice 10 and 0 are 110 and 1024), so it
/// takes the CPU that landing leaves idle instead of delaying commits.
pub const BACKGROUND_NICE: i32 = 10;

/// A runtime for work that must not delay landing (maintenance, queries): `workers` threads
/// named `name` (plus blocking threads for file I/O), each at [`BACKGROUND_NICE`] below the
/// threads that start it.
pub fn background_runtime(name: &str, workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name(name)
        .on_thread_start(lower_priority)
        .enable_all()
        .build()
}

/// Lower the calling thread's CPU priority by [`BACKGROUND_NICE`]. On Linux the nice value
/// belongs to a thread, so the rest of the process keeps its own.
#[cfg_attr(
    target_os = "linux",
    expect(unsafe_code, reason = "std cannot set a thread's nice value")
)]
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: getpriority and setpriority only read and set the calling thread's nice value.
    unsafe {
        let tid = libc::gettid() as libc::id_t;
        // -1 is also a valid nice value: errno would tell, but a failure only leaves the
        // thread at its priority, which is what it would be without this.
        let now = libc::getpriority(libc::PRIO_PROCESS, tid);
        if libc::setpriority(libc::PRIO_PROCESS, tid, now + BACKGROUND_NICE) != 0 {
            tracing::debug!(
                "cannot lower the maintenance thread's priority: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// Hand the pages the allocator holds free back to the kernel. A pass frees tens of MB at
/// once (compaction's inputs, expiry's metadata), and glibc keeps freed pages of its
/// per-thread arenas mapped: with a live heap flat at ~130 MB, a soak of 1,000 agents
/// saw RSS creep from 190 to 255 MiB over 40,000 commits. Trimming after each pass takes
/// a few milliseconds.
#[cfg_attr(
    all(target_os = "linux", target_env = "gnu"),
    expect(unsafe_code, reason = "glibc's malloc_trim has no safe binding")
)]
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists, under its own locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Stop `task` (already told to): wait up to `grace` for it to end, then cut it off.
pub async fn stop_within(task: tokio::task::JoinHandle<()>, grace: Duration, what: &str) {
    let abort = task.abort_handle();
    if tokio::time::timeout(grace, task).await.is_err() {
        tracing::warn!("{what} did not stop within {grace:?}: cut off");
        abort.abort();
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The calling thread's nice value.
    #[expect(unsafe_code, reason = "std cannot read a thread's nice value")]
    fn nice() -> i32 {
        // SAFETY: reads the calling thread's nice value.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
    }

    #[test]
    fn maintenance_threads_yield_the_cpu_to_the_threads_that_land() {
        let own = nice();
        let rt = background_runtime("sluice-upkeep", 1).expect("runtime");
        let (worker, blocking) = rt.block_on(async {
            let worker = tokio::spawn(async { nice() }).await.expect("worker task");
            let blocking = tokio::task::spawn_blocking(nice)
                .await
                .expect("blocking task");
            (worker, blocking)
        });
        let lowered = (own + BACKGROUND_NICE).min(19);
        assert_eq!((worker, blocking), (lowered, lowered));
        // The thread that started the runtime keeps its priority.
        assert_eq!(nice(), own);
        rt.shutdown_background();
    }
}
