//! Training: the config, AdamW, the two gradient backends (the fast CPU path of `models::gpt::fast`
//! and candle autograd) and the loop.

pub mod backend;
pub mod bench;
pub mod config;
pub mod driver;
pub mod finetune;
pub mod optim;
pub mod progress;
pub mod seq2seq;
pub mod trainer;

pub use config::TrainConfig;
pub use progress::Event;
pub use trainer::{train, StepLog, TrainOptions, TrainSummary};
