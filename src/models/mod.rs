//! Model architectures, one file each.

pub mod gpt;

pub use gpt::Gpt;
