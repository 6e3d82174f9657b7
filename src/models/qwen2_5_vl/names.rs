//! Checkpoint names of the Qwen2.5-VL text encoder. Canonical names are the original Qwen2.5-VL
//! layout that the Qwen-Image `text_encoder/` shards use (`model.layers.N.*`, `model.norm`,
//! `model.embed_tokens`, `visual.*`); transformers' current module layout
//! (`model.language_model.*`, `model.visual.*`) is accepted too (spec §2.6 "Checkpoint naming").

use super::config::EncoderConfig;

/// The stored key of canonical `name` under each layout, in the order they are tried.
pub fn candidates(name: &str) -> Vec<String> {
    let mut v = vec![name.to_string()];
    if let Some(rest) = name.strip_prefix("model.") {
        v.push(format!("model.language_model.{rest}"));
    } else if let Some(rest) = name.strip_prefix("visual.") {
        v.push(format!("model.visual.{rest}"));
    }
    v
}

/// Layer `i`'s module prefix.
pub fn layer(i: usize) -> String {
    format!("model.layers.{i}")
}

/// Every language-model tensor (canonical name, shape) the config implies; `lm_head` is never
/// needed (the pipelines take hidden states, not logits).
pub fn text_tensors(c: &EncoderConfig) -> Vec<(String, Vec<usize>)> {
    let t = &c.text;
    let (d, i) = (t.hidden_size, t.intermediate_size);
    let (q, kv) = (t.num_attention_heads * t.head_dim, t.num_key_value_heads * t.head_dim);
    let mut v = vec![("model.embed_tokens.weight".to_string(), vec![t.vocab_size, d])];
    for l in 0..t.num_hidden_layers {
        let p = layer(l);
        for (name, shape) in [
            ("input_layernorm.weight", vec![d]),
            ("self_attn.q_proj.weight", vec![q, d]),
            ("self_attn.q_proj.bias", vec![q]),
            ("self_attn.k_proj.weight", vec![kv, d]),
            ("self_attn.k_proj.bias", vec![kv]),
            ("self_attn.v_proj.weight", vec![kv, d]),
            ("self_attn.v_proj.bias", vec![kv]),
            ("self_attn.o_proj.weight", vec![d, q]),
            ("post_attention_layernorm.weight", vec![d]),
            ("mlp.gate_proj.weight", vec![i, d]),
            ("mlp.up_proj.weight", vec![i, d]),
            ("mlp.down_proj.weight", vec![d, i]),
        ] {
            v.push((format!("{p}.{name}"), shape));
        }
    }
    v.push(("model.norm.weight".to_string(), vec![d]));
    v
}
