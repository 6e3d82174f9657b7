//! Writes a synthetic multi-GB Qwen-Image checkpoint for measuring `wgdit convert` (docs/convert.md):
//! the real tensor names and full shapes (D = 3072, joint_attention_dim 3584, in_channels 64) for
//! the first N blocks, bf16, random bits. The generator streams too: it never holds a tensor.
//!
//! usage: cargo run --example convert_bench -- OUT.safetensors [BLOCKS=4]

use std::io::{BufWriter, Write};

/// The real model's tensors (`models::qwen_image::names`) for the first `blocks` blocks.
fn shapes(blocks: usize) -> Vec<(String, Vec<usize>)> {
    let cfg = wgdit::models::qwen_image::DitConfig {
        num_layers: blocks,
        ..wgdit::models::qwen_image::DitConfig::qwen_image()
    };
    wgdit::models::qwen_image::names::expected_tensors(&cfg)
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let out = args.get(1).expect("usage: convert_bench OUT.safetensors [BLOCKS]");
    let blocks: usize = args.get(2).map_or(4, |b| b.parse().expect("BLOCKS must be a number"));
    let tensors = shapes(blocks);
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut off = 0usize;
    for (n, s) in &tensors {
        let len = s.iter().product::<usize>() * 2;
        header.insert(n.clone(), serde_json::json!({"dtype": "BF16", "shape": s, "data_offsets": [off, off + len]}));
        off += len;
    }
    let mut h = serde_json::to_string(&header)?;
    while h.len() % 8 != 0 {
        h.push(' ');
    }
    let mut w = BufWriter::with_capacity(8 << 20, std::fs::File::create(out)?);
    w.write_all(&(h.len() as u64).to_le_bytes())?;
    w.write_all(h.as_bytes())?;
    // xorshift64 random bits, 1 MiB at a time.
    let mut x = 0x9E3779B97F4A7C15u64;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = off;
    while left > 0 {
        for c in buf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(buf.len());
        w.write_all(&buf[..n])?;
        left -= n;
    }
    w.flush()?;
    eprintln!("{out}: {} tensors, {blocks} blocks, {:.2} GB", tensors.len(), off as f64 / 1e9);
    Ok(())
}
