//! Tells the tests whether the build machine's CPU has AVX512-BF16, as the cfg
//! `decodex_avx512bf16`. A test that compares a SIMD kernel with its
//! portable twin needs both paths to run; on a CPU without the instructions it is marked
//! `#[cfg_attr(not(decodex_…), ignore = "…")]`, so the harness reports it ignored instead of
//! letting it pass having compared the portable path with itself.
//!
//! The library never reads these cfgs: it chooses its kernels at run time. The tests run on the
//! machine that builds them (as `cargo test` and CI do). The script runs again when the machine
//! boots anew (procfs files carry the boot time as their mtime), so a target folder carried to
//! another CPU does not keep the old answer.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=/proc/cpuinfo");
    println!("cargo:rustc-check-cfg=cfg(decodex_avx512bf16)");
    let (host, target) = (std::env::var("HOST"), std::env::var("TARGET"));
    if host.is_err() || host != target {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512bf16")
        {
            println!("cargo:rustc-cfg=decodex_avx512bf16");
        }
    }
}
