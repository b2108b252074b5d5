//! Model architectures, one file each.

pub mod gpt;
pub mod llama;

pub use gpt::Gpt;
pub use llama::Llama;
