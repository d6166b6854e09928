//! glibc's allocator keeps memory a burst freed (thousands of requests deleted, a re-list of
//! every Secret) in its arenas for reuse, so the process's resident size ratchets up to its
//! highest point and stays there. Handing the free pages back after the controller's periodic
//! clean-up lets the operator shrink back towards idle once the burst has passed.

/// Returns the allocator's free pages to the kernel (glibc `malloc_trim`); a no-op elsewhere.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it takes its own locks and
    // touches no memory the program still owns.
    unsafe {
        libc::malloc_trim(0);
    }
}
