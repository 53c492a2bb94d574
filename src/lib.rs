//! STARFlow Studio: text-to-image generation with STARFlow normalizing flows on burn.
//!
//! STARFlow (Gu et al., 2025, arXiv 2506.06276) is a stack of transformer autoregressive
//! affine flow blocks over the latent tokens of an autoencoder, conditioned on a text
//! encoder; it extends TARFlow (Zhai et al., 2024, arXiv 2412.06329). The model code here is
//! written against the official PyTorch implementation (apple/ml-starflow, apple/ml-tarflow)
//! and checked against reference tensors computed by it.
//!
//! # Axis glossary
//! - `batch`: images in one call (twice that inside a guided block: conditional, then null)
//! - `channels`, `height`, `width`: the latent, NCHW
//! - `tokens`: positions of one block's sequence; `patch_dim`: channels per token
//!   (latent channels x patch^2)
//! - `model_dim`, `heads`, `head_dim`: transformer widths
//!
//! # Layout
//! - [`model`]: config, blocks, samplers, guidance, denoising (generic over the burn device)
//! - [`checkpoint`]: strict loading of `.pth` and `.safetensors` weights
//! - [`backend`]: picking burn-wgpu or the CPU fallback

pub mod app;
pub mod autoencoder;
pub mod backend;
pub mod bench;
pub mod checkpoint;
pub mod data;
pub mod download;
pub mod image_out;
pub mod metadata;
pub mod model;
pub mod pipeline;
pub mod text;
pub mod train;
