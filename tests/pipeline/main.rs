//! The pure-Rust pieces of the sampling pipeline against their references, bit for bit
//! (tests/fixtures/pipeline_math, made by tools/gen_pipeline_math_fixture.py from torch 2.15,
//! diffusers 0.42.1 and Pillow 13): torch's CPU randn, the flow-match scheduler, true CFG, the
//! pipelines' image sizes, Pillow's LANCZOS resize, image decoding and VAE pre/post-processing.

mod common;

mod cfg;
mod dims;
mod noise;
mod pixels;
mod resize;
mod scheduler;
