//! Fine-tuning pretrained Llama-family decoders: full or LoRA, on prompt/completion data with
//! the loss on completion tokens only.

pub mod data;
pub mod run;
