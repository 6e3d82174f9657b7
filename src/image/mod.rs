//! Image files and pixels: decoding to 8-bit RGB, Pillow-exact resizing, VAE pre/post-processing, PNG output.

pub mod pixels;
pub mod resize;
