//! decodex: build, train, fine-tune and decode transformer language models in Rust.
//!
//! The crate is organised by concern: `tokenizer` (char and byte-level BPE, saved as Hugging Face
//! `tokenizer.json`), `data` (token files), `nn` (shared layers), `models` (one file per
//! architecture), `train` (optimizer, schedule, trainer, and the fast CPU training path), `decode`
//! (greedy search and sampling with a KV cache) and `cli` (the thin command-line layer).

pub mod data;
pub mod decode;
pub mod error;
pub mod eval;
pub mod kernels;
pub mod models;
pub mod nn;
pub mod plot;
pub mod search;
pub mod serve;
pub mod tasks;
pub mod tokenizer;
pub mod train;

pub use error::{Error, Result};

/// Helpers shared by the unit and integration tests (NaN-keeping maxima, deterministic fills):
/// not a stable API.
#[doc(hidden)]
pub mod testutil;
