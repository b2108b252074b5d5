//! Training: the config, AdamW, the two gradient backends, the loop, and the fast CPU path.

pub mod backend;
pub mod bench;
pub mod config;
pub mod fast;
pub mod finetune;
pub mod optim;
pub mod seq2seq;
pub mod trainer;

pub use config::TrainConfig;
pub use trainer::{train, Event, StepLog, TrainOptions, TrainSummary};
