//! glibc's allocator keeps memory a burst freed (thousands of requests deleted, big token Secrets
//! read, a re-list of every Secret) for reuse, so the process's resident size ratchets up to its
//! highest point and stays there. Two settings keep the operator near its working set: large
//! buffers always get their own mapping, returned to the kernel the moment they are freed, and the
//! controller's periodic clean-up hands the rest of the free pages back.

/// Allocations from this size on are mapped on their own. Setting it also turns off glibc's
/// dynamic threshold, which after the first large buffer is freed moves such buffers (up to
/// 32 MiB) into the heap, where they stay resident after use.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD_BYTES: libc::c_int = 128 * 1024;

/// Call once at start-up, before the runtime's threads allocate.
pub fn configure() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes the allocator's tuning; called before other threads run.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES);
    }
}

/// Returns the allocator's free pages to the kernel (glibc `malloc_trim`); a no-op elsewhere.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it takes its own locks and
    // touches no memory the program still owns.
    unsafe {
        libc::malloc_trim(0);
    }
}
