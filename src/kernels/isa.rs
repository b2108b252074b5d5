//! The instruction-set tier the kernels run on, chosen once per process: the best this CPU has,
//! or the one `DECODEX_ISA` names (`portable`, `neon`, `avx2` or `avx512`), for tests and
//! measurements.
//!
//! - `Portable`: the baseline target (SSE2 on x86-64, NEON on aarch64), written so that LLVM
//!   vectorizes it;
//! - `Neon` (aarch64): hand-written NEON kernels where the compiler's are not enough (the
//!   quantized block products);
//! - `Avx2`: AVX2 + FMA (+ F16C), the ISA of most laptops and desktops;
//! - `Avx512`: AVX-512 F/BW/VL with VNNI; the bf16 GEMM also needs AVX512-BF16, which it checks
//!   apart.
//!
//! A tier only reaches a CPU that has it: the CLI refuses a `DECODEX_ISA` the CPU lacks before
//! anything runs (`Isa::check`); a library caller that skips the check gets a panic naming the
//! problem at the first kernel call, never an illegal instruction. The quantized products give
//! the same bits on every tier (tested against the portable one); the element-wise kernels are
//! one Rust body compiled per tier and are tested per tier against their references.

use std::sync::OnceLock;

use crate::error::{Error, Result};

/// An instruction-set tier; the x86 ones in increasing order of width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    Portable,
    Neon,
    Avx2,
    Avx512,
}

impl Isa {
    /// The tier's name, as `DECODEX_ISA` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Neon => "neon",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    fn parse(s: &str) -> Option<Isa> {
        match s.trim().to_ascii_lowercase().as_str() {
            "portable" | "scalar" => Some(Isa::Portable),
            "neon" => Some(Isa::Neon),
            "avx2" => Some(Isa::Avx2),
            "avx512" => Some(Isa::Avx512),
            _ => None,
        }
    }

    /// The best tier this CPU supports.
    pub fn detected() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx512f")
                && has!("avx512bw")
                && has!("avx512vl")
                && has!("avx512vnni")
                && has!("fma")
                && has!("f16c")
            {
                return Isa::Avx512;
            }
            if has!("avx2") && has!("fma") && has!("f16c") {
                return Isa::Avx2;
            }
        }
        #[cfg(target_arch = "aarch64")]
        if std::arch::is_aarch64_feature_detected!("neon") {
            return Isa::Neon;
        }
        Isa::Portable
    }

    /// Every tier this CPU can run, narrowest first (the ones tests compare).
    pub fn available() -> Vec<Isa> {
        let best = Isa::detected();
        let arch = if cfg!(target_arch = "aarch64") {
            &[Isa::Portable, Isa::Neon][..]
        } else {
            &[Isa::Portable, Isa::Avx2, Isa::Avx512][..]
        };
        arch.iter().copied().filter(|&t| t <= best).collect()
    }

    /// The tier of this process: `DECODEX_ISA` when set (checked against the CPU), else the
    /// detected one. Panics with the reason when `DECODEX_ISA` is invalid; `Isa::check` lets a
    /// command report that as an error before any kernel runs.
    #[inline]
    pub fn current() -> Isa {
        match Isa::check() {
            Ok(t) => t,
            Err(e) => panic!("{e}"),
        }
    }

    /// `current`, as a `Result`.
    pub fn check() -> Result<Isa> {
        static TIER: OnceLock<std::result::Result<Isa, String>> = OnceLock::new();
        match TIER.get_or_init(|| Isa::resolve(std::env::var("DECODEX_ISA").ok())) {
            Ok(t) => Ok(*t),
            Err(e) => Err(Error::Invalid(e.clone())),
        }
    }

    /// The tier a `DECODEX_ISA` value asks for on this CPU (`None` or empty: the detected one).
    fn resolve(forced: Option<String>) -> std::result::Result<Isa, String> {
        let best = Isa::detected();
        let Some(s) = forced.filter(|s| !s.is_empty()) else {
            return Ok(best);
        };
        match Isa::parse(&s) {
            None => Err(format!(
                "DECODEX_ISA={s:?} is not a tier: use portable, neon, avx2 or avx512"
            )),
            Some(t) if !Isa::available().contains(&t) => Err(format!(
                "DECODEX_ISA={s} asks for a tier this CPU lacks (its best is {}; CPU features: {})",
                best.name(),
                cpu_features().join(" ")
            )),
            Some(t) => Ok(t),
        }
    }
}

/// The SIMD features of this CPU that the kernels look at, for reports.
pub fn cpu_features() -> Vec<&'static str> {
    #[allow(unused_mut)]
    let mut found = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        let all = [
            ("avx2", has!("avx2")),
            ("fma", has!("fma")),
            ("f16c", has!("f16c")),
            ("avx512f", has!("avx512f")),
            ("avx512bw", has!("avx512bw")),
            ("avx512vl", has!("avx512vl")),
            ("avx512vnni", has!("avx512vnni")),
            ("avx512bf16", has!("avx512bf16")),
        ];
        found.extend(all.iter().filter(|f| f.1).map(|f| f.0));
    }
    #[cfg(target_arch = "aarch64")]
    {
        found.push("neon");
    }
    found
}

/// One line for reports: the tier that runs and the CPU's features.
pub fn describe() -> String {
    let tier = Isa::check().map_or_else(|e| format!("invalid ({e})"), |t| t.name().to_string());
    format!("isa {tier}; cpu features: {}", cpu_features().join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_parse_and_order() {
        assert_eq!(Isa::parse("AVX2"), Some(Isa::Avx2));
        assert_eq!(Isa::parse("portable"), Some(Isa::Portable));
        assert_eq!(Isa::parse("avx512"), Some(Isa::Avx512));
        assert_eq!(Isa::parse("sse9"), None);
        assert!(Isa::Portable < Isa::Avx2 && Isa::Avx2 < Isa::Avx512);
        let avail = Isa::available();
        assert_eq!(avail[0], Isa::Portable);
        assert_eq!(*avail.last().unwrap(), Isa::detected());
        assert_eq!(Isa::resolve(None), Ok(Isa::detected()));
        assert_eq!(Isa::resolve(Some("portable".into())), Ok(Isa::Portable));
        assert!(Isa::resolve(Some("neon9".into())).is_err());
    }
}
