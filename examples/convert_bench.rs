//! Writes a synthetic multi-GB Qwen-Image checkpoint for measuring `wgdit convert` (docs/convert.md):
//! the real tensor names and full shapes (D = 3072, joint_attention_dim 3584, in_channels 64) for
//! the first N blocks, bf16, random bits. The generator streams too: it never holds a tensor.
//!
//! usage: cargo run --example convert_bench -- OUT.safetensors [BLOCKS=4]

use std::io::{BufWriter, Write};

const D: usize = 3072;

fn shapes(blocks: usize) -> Vec<(String, Vec<usize>)> {
    let lin = |n: &str, o: usize, i: usize| vec![(format!("{n}.weight"), vec![o, i]), (format!("{n}.bias"), vec![o])];
    let mut v = Vec::new();
    v.extend(lin("img_in", D, 64));
    v.push(("txt_norm.weight".to_string(), vec![3584]));
    v.extend(lin("txt_in", D, 3584));
    v.extend(lin("time_text_embed.timestep_embedder.linear_1", D, 256));
    v.extend(lin("time_text_embed.timestep_embedder.linear_2", D, D));
    v.extend(lin("norm_out.linear", 2 * D, D));
    v.extend(lin("proj_out", 64, D));
    for b in 0..blocks {
        let p = |s: &str| format!("transformer_blocks.{b}.{s}");
        for m in ["img_mod.1", "txt_mod.1"] {
            v.extend(lin(&p(m), 6 * D, D));
        }
        for m in [
            "attn.to_q",
            "attn.to_k",
            "attn.to_v",
            "attn.add_q_proj",
            "attn.add_k_proj",
            "attn.add_v_proj",
            "attn.to_out.0",
            "attn.to_add_out",
        ] {
            v.extend(lin(&p(m), D, D));
        }
        for n in ["attn.norm_q", "attn.norm_k", "attn.norm_added_q", "attn.norm_added_k"] {
            v.push((format!("{}.weight", p(n)), vec![128]));
        }
        for s in ["img_mlp", "txt_mlp"] {
            v.extend(lin(&p(&format!("{s}.net.0.proj")), 4 * D, D));
            v.extend(lin(&p(&format!("{s}.net.2")), D, 4 * D));
        }
    }
    v
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
