//! Model architectures, one file each.

pub mod bert;
pub mod gpt;
pub mod llama;
pub mod pretrained;
pub mod rnn_seq2seq;
pub mod seq2seq;
pub mod transformer_seq2seq;

pub use gpt::Gpt;
pub use llama::Llama;
