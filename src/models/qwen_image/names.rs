//! Every tensor of a `QwenImageTransformer2DModel` checkpoint in the standard diffusers layout,
//! with its shape (spec qwen-image-dit.md §2), and the merged-QKV names.

use crate::models::qwen_image::DitConfig;

/// (name, shape) of every tensor, top level first, then blocks in order.
pub fn expected_tensors(cfg: &DitConfig) -> Vec<(String, Vec<usize>)> {
    let d = cfg.hidden();
    let dh = cfg.attention_head_dim;
    let mut v: Vec<(String, Vec<usize>)> = Vec::new();
    let linear = |v: &mut Vec<(String, Vec<usize>)>, name: &str, n: usize, k: usize| {
        v.push((format!("{name}.weight"), vec![n, k]));
        v.push((format!("{name}.bias"), vec![n]));
    };
    linear(&mut v, "img_in", d, cfg.in_channels);
    v.push(("txt_norm.weight".into(), vec![cfg.joint_attention_dim]));
    linear(&mut v, "txt_in", d, cfg.joint_attention_dim);
    linear(&mut v, "time_text_embed.timestep_embedder.linear_1", d, 256);
    linear(&mut v, "time_text_embed.timestep_embedder.linear_2", d, d);
    linear(&mut v, "norm_out.linear", 2 * d, d);
    linear(&mut v, "proj_out", cfg.out_features(), d);
    for i in 0..cfg.num_layers {
        let p = format!("transformer_blocks.{i}");
        for m in ["img_mod.1", "txt_mod.1"] {
            linear(&mut v, &format!("{p}.{m}"), 6 * d, d);
        }
        for m in QKV_STANDARD.iter().flatten().chain(["to_out.0", "to_add_out"].iter()) {
            linear(&mut v, &format!("{p}.attn.{m}"), d, d);
        }
        for n in ["norm_q", "norm_k", "norm_added_q", "norm_added_k"] {
            v.push((format!("{p}.attn.{n}.weight"), vec![dh]));
        }
        for s in ["img_mlp", "txt_mlp"] {
            linear(&mut v, &format!("{p}.{s}.net.0.proj"), 4 * d, d);
            linear(&mut v, &format!("{p}.{s}.net.2"), d, 4 * d);
        }
    }
    v
}

/// The standard Q/K/V modules of the image and text streams, and their merged names.
pub const QKV_STANDARD: [[&str; 3]; 2] = [["to_q", "to_k", "to_v"], ["add_q_proj", "add_k_proj", "add_v_proj"]];
pub const QKV_MERGED: [&str; 2] = ["to_qkv", "add_qkv_proj"];

/// For a standard Q/K/V tensor name (`…attn.to_k.weight`), the merged tensor that holds it and
/// the index (0 q, 1 k, 2 v) of its row block there.
pub fn merged_home(name: &str) -> Option<(String, usize)> {
    let (prefix, rest) = name.split_once(".attn.")?;
    let (module, suffix) = rest.split_once('.')?;
    for (stream, modules) in QKV_STANDARD.iter().enumerate() {
        if let Some(i) = modules.iter().position(|m| *m == module) {
            return Some((format!("{prefix}.attn.{}.{suffix}", QKV_MERGED[stream]), i));
        }
    }
    None
}

// ---- Checkpoint and LoRA key vocabulary (what `convert` and the LoRA readers use) ----

/// One fusable group: three standard modules and the merged module that stacks their rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QkvGroup {
    pub parts: [&'static str; 3],
    pub merged: &'static str,
}

/// The fused projections of a block, as module suffixes after `transformer_blocks.{i}.`.
/// Image stream: to_q/to_k/to_v → to_qkv; text stream: add_{q,k,v}_proj → add_qkv_proj.
pub const QKV_GROUPS: [QkvGroup; 2] = [
    QkvGroup { parts: ["attn.to_q", "attn.to_k", "attn.to_v"], merged: "attn.to_qkv" },
    QkvGroup { parts: ["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"], merged: "attn.add_qkv_proj" },
];

/// Linear modules inside a block other than the fusable q/k/v projections.
pub const BLOCK_LINEARS: [&str; 8] = [
    "img_mod.1",
    "txt_mod.1",
    "attn.to_out.0",
    "attn.to_add_out",
    "img_mlp.net.0.proj",
    "img_mlp.net.2",
    "txt_mlp.net.0.proj",
    "txt_mlp.net.2",
];

/// Linear modules outside the blocks.
pub const TOP_LINEARS: [&str; 6] = [
    "img_in",
    "txt_in",
    "time_text_embed.timestep_embedder.linear_1",
    "time_text_embed.timestep_embedder.linear_2",
    "norm_out.linear",
    "proj_out",
];

/// Splits `transformer_blocks.{i}.{rest}` into (i, rest).
pub fn split_block(path: &str) -> Option<(usize, &str)> {
    let tail = path.strip_prefix("transformer_blocks.")?;
    let (idx, rest) = tail.split_once('.')?;
    Some((idx.parse().ok()?, rest))
}

/// Whether `suffix` (after `transformer_blocks.{i}.`) is a linear module a LoRA may target.
fn is_block_linear(suffix: &str) -> bool {
    BLOCK_LINEARS.contains(&suffix) || QKV_GROUPS.iter().any(|g| g.merged == suffix || g.parts.contains(&suffix))
}

/// Whether `path` names a linear module of the DiT, standard or merged layout.
pub fn is_linear_module(path: &str) -> bool {
    match split_block(path) {
        Some((_, rest)) => is_block_linear(rest),
        None => TOP_LINEARS.contains(&path),
    }
}

/// Whether a tensor name (prefix removed) belongs to the DiT: a block tensor, `txt_norm`, or a
/// weight or bias of one of its linear modules.
pub fn is_dit_tensor(name: &str) -> bool {
    let stem = name.strip_suffix(".weight").or_else(|| name.strip_suffix(".bias")).unwrap_or(name);
    split_block(name).is_some() || stem == "txt_norm" || is_linear_module(stem)
}

/// The merged-layout role of a module path: which group it belongs to and its part index
/// (0, 1, 2 for q, k, v) or `None` for the merged module itself.
pub fn qkv_role(path: &str) -> Option<(usize, QkvGroup, Option<usize>)> {
    let (block, rest) = split_block(path)?;
    for g in QKV_GROUPS {
        if g.merged == rest {
            return Some((block, g, None));
        }
        if let Some(i) = g.parts.iter().position(|p| *p == rest) {
            return Some((block, g, Some(i)));
        }
    }
    None
}

/// Kohya/musubi flat name (`transformer_blocks_0_attn_to_out_0`, after `lora_unet_`) → dotted
/// diffusers module path. Same result as diffusers' `_convert_non_diffusers_qwen_lora_to_diffusers`
/// (which rebuilds dots with protected n-grams), done here by lookup in the known module list so
/// that an unknown name is an error instead of a guess.
pub fn kohya_to_path(flat: &str) -> Option<String> {
    if let Some(top) = TOP_LINEARS.iter().find(|t| t.replace('.', "_") == flat) {
        return Some(top.to_string());
    }
    let tail = flat.strip_prefix("transformer_blocks_")?;
    let (idx, rest) = tail.split_once('_')?;
    let block: usize = idx.parse().ok()?;
    let all =
        BLOCK_LINEARS.iter().copied().chain(QKV_GROUPS.iter().flat_map(|g| g.parts.into_iter().chain([g.merged])));
    all.into_iter().find(|s| s.replace('.', "_") == rest).map(|s| format!("transformer_blocks.{block}.{s}"))
}

/// The Qwen-Image DiT's module vocabulary, as the LoRA readers of `weights` ask for it.
pub struct QwenImageNames;

impl crate::weights::ModulePaths for QwenImageNames {
    fn model_name(&self) -> &str {
        "Qwen-Image DiT"
    }
    fn is_linear_module(&self, path: &str) -> bool {
        is_linear_module(path)
    }
    fn kohya_to_path(&self, flat: &str) -> Option<String> {
        kohya_to_path(flat)
    }
}

/// Whether a checkpoint's q/k/v projections are stored separately (diffusers) or fused
/// (`attn.to_qkv`, `attn.add_qkv_proj`, rows stacked q, k, v).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    Standard,
    Merged,
    /// No q/k/v projection at all (a partial file).
    Neither,
}

/// The q/k/v layout of a checkpoint; one holding both layouts is an error.
pub fn checkpoint_layout(ck: &crate::weights::Checkpoint) -> crate::Result<Layout> {
    let (mut std, mut merged) = (None, None);
    for e in ck.entries.iter().filter(|e| !e.foreign) {
        let module = e.name.rsplit_once('.').map_or("", |(m, _)| m);
        match qkv_role(module) {
            Some((_, _, Some(_))) => std = std.or(Some(&e.name)),
            Some((_, _, None)) => merged = merged.or(Some(&e.name)),
            None => {}
        }
    }
    match (std, merged) {
        (Some(s), Some(m)) => {
            Err(crate::Error::file(&ck.path, format!("mixed layout: holds both {s} (standard) and {m} (merged)")))
        }
        (Some(_), None) => Ok(Layout::Standard),
        (None, Some(_)) => Ok(Layout::Merged),
        (None, None) => Ok(Layout::Neither),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_model_has_1933_tensors_and_20_4b_parameters() {
        let t = expected_tensors(&DitConfig::qwen_image());
        // 32 per block × 60 + 13 top level. (The spec says 1931 in total; its parameter count,
        // which this list reproduces exactly, implies 1933.)
        assert_eq!(t.len(), 60 * 32 + 13);
        let params: usize = t.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
        assert_eq!(params, 20_430_401_088);
    }

    #[test]
    fn qkv_tables_agree() {
        for (g, (standard, merged)) in QKV_GROUPS.iter().zip(QKV_STANDARD.iter().zip(QKV_MERGED)) {
            assert_eq!(g.parts.map(|p| p.strip_prefix("attn.").expect("attn module")), *standard);
            assert_eq!(g.merged.strip_prefix("attn."), Some(merged));
        }
    }

    #[test]
    fn merged_home_maps_q_k_v_to_row_blocks() {
        assert_eq!(
            merged_home("transformer_blocks.3.attn.to_k.weight"),
            Some(("transformer_blocks.3.attn.to_qkv.weight".into(), 1))
        );
        assert_eq!(
            merged_home("transformer_blocks.0.attn.add_v_proj.bias"),
            Some(("transformer_blocks.0.attn.add_qkv_proj.bias".into(), 2))
        );
        assert_eq!(merged_home("transformer_blocks.0.attn.to_out.0.weight"), None);
    }
}
