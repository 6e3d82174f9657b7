//! What the converter knows about Qwen-Image DiT tensor names (spec qwen-image-dit.md §2): key
//! prefixes, the linear modules a LoRA may target, and the q/k/v groups that the merged layout fuses.

/// Key prefixes that wrap canonical diffusers names: ComfyUI full checkpoints, ComfyUI model state
/// dicts. Longest first, so that `model.diffusion_model.` is not mistaken for `diffusion_model.`.
pub const BASE_PREFIXES: [&str; 2] = ["model.diffusion_model.", "diffusion_model."];

/// The prefix ComfyUI uses for a bare diffusion model (what `--format comfyui` writes).
pub const COMFY_PREFIX: &str = "diffusion_model.";

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

/// Dotted module path → kohya flat name (without `lora_unet_`).
pub fn path_to_kohya(path: &str) -> String {
    path.replace('.', "_")
}
