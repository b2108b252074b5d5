//! Model architectures, one file or folder each: the config, the candle reference forward, the
//! fast forward/backward, the inference step; and `Decoder`, what the decoding engine drives.

pub mod bert;
pub mod decoder;
pub mod gpt;
pub mod llama;
pub mod pretrained;
pub mod rnn_seq2seq;
pub mod seq2seq;
pub mod transformer_seq2seq;

pub use decoder::{Cache, Decoder};
pub use gpt::Gpt;
pub use llama::Llama;
