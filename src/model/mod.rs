//! The flow: config, rotary positions, transformer layers, flow blocks, the stack with its
//! samplers, and guidance. Nothing here knows about the app.

pub mod attention;
pub mod block;
pub mod config;
pub mod flow;
pub mod guidance;
pub mod noise;
pub mod official_yaml;
pub mod rope;

pub use config::{Conditioning, ConfigError, FlowConfig, GuidanceRule};
pub use flow::{
    Cancelled, Condition, Flow, FlowForward, NoObserver, Progress, SampleError, SampleObserver,
    SampleOutput, Sampler,
};
pub use guidance::Guidance;
