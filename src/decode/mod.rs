//! Decoding: one engine for every model. Every model decodes through the `Decoder` trait: feed tokens after what a cache holds, get
//! the next-token logits; reorder cache rows for beam search. The model-independent engine
//! drives that trait: `processors` (Hugging Face's logits-processor chain, greedy and seeded
//! sampling), `driver` (`generate_ids`, greedy or sampled decoding of one prompt) and `beam`
//! (beam search and diverse group beam search).

pub mod beam;
pub mod bench;
pub mod driver;
pub mod generate;
#[cfg(test)]
mod mock;
pub mod processors;
pub mod stream;
pub mod translate;

pub use beam::{beam_search, BeamConfig, BeamHypothesis, EarlyStopping};
pub use driver::{generate_batch, generate_ids, generate_ids_until, GeneratedIds, StopReason};
pub use processors::{process_logits, SamplingConfig, Strategy};
pub use stream::{reply_text, TextStream};

pub use crate::models::{Cache, Decoder};
