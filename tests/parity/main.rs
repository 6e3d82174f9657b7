//! Parity against diffusers fixtures (forward, runtime LoRA, LoRA gradients, RoPE, the sampler, the VAE) and the
//! graph/executor checks behind them.

#[path = "../support/diffusers_fixtures.rs"]
mod diffusers_fixtures;
#[path = "../support/quant_dit.rs"]
mod quant_dit;

mod dit;
mod exec;
mod generate;
mod grads;
mod graph;
mod lora;
mod mixed;
mod quant;
mod rope;
mod sampler;
mod stream;
mod text;
mod vae;
