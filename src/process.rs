//! Process-wide settings the binary (and the benches, to time what it runs) apply at start.

/// Tells glibc's allocator to serve blocks of up to 32 MiB from its heap and to keep up to
/// 64 MiB of freed memory for reuse. The engines allocate and free a few MiB per layer and batch,
/// which by default become fresh mappings whose pages are faulted in and zeroed every time.
/// Does nothing on other platforms. Call it first thing in `main`, before any other thread.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
}
