//! The `decodex` command: a thin dispatcher over the library (see `cli`).

mod cli;

/// glibc returns every block over its mmap threshold to the kernel on free, so a training step
/// that allocates tens of tensors of several MiB each pays a page fault per 4 KiB of each, every
/// step (a third of the time of a seq2seq step, measured). Keep freed memory in the heap instead.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_allocator() {
    // SAFETY: mallopt only sets allocator parameters; called before any other thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}

fn main() {
    tune_allocator();
    std::process::exit(cli::run());
}
