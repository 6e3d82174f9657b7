//! The registry of embedded WGSL shaders: one [`Shader`] per kernel file under `shaders/<family>/`,
//! listed in [`ALL`], and the shared preludes of `shaders/common/`, listed in [`PRELUDES`].
//!
//! WGSL has no include: a shader that `uses` preludes is their text joined before its own at
//! compile time (`concat!` of `include_str!`s: no build script, no templates, no runtime cost).
//! Preludes hold pure functions and constants only (the block reduction also owns its workgroup
//! scratch), their names carry the prelude's prefix (`decode_*`, `reduce_*`, `act_*`, `quant_*`),
//! and each starts with the header a kernel has. One exception: `common/quant`'s decoders read
//! the kernel's `weight: array<u32>` binding (a quantized block is decoded where it lies); every
//! shader using it declares that binding, and alone it is validated against a private stand-in
//! (`reads` below), which is not part of the composed source. `tests/shaders.rs` validates every composed source and
//! every prelude alone with naga, and fails on a prelude no shader uses or an unregistered file.

/// A WGSL source compiled into the binary: a kernel with its preludes joined in front.
#[derive(Clone, Copy, Debug)]
pub struct Shader {
    /// The composition's name: the file's, or `file@variant` for a file composed with another
    /// fragment backend (the tile programs: `gemm/gemm@coop16`).
    pub name: &'static str,
    /// The path under `shaders/` without `.wgsl`, e.g. `gemm/gemm`.
    pub file: &'static str,
    /// The preludes joined in front of the kernel, by name (e.g. `common/decode`).
    pub preludes: &'static [&'static str],
    pub source: &'static str,
}

macro_rules! shaders {
    ($($ident:ident => $file:literal $(as $name:literal)? $(uses [$($lib:literal),*])?),* $(,)?) => {
        $(pub const $ident: Shader = Shader {
            name: shaders!(@name $file $($name)?),
            file: $file,
            preludes: &[$($($lib),*)?],
            source: concat!(
                $($("// ---- prelude shaders/", $lib, ".wgsl ----\n",
                    include_str!(concat!("../shaders/", $lib, ".wgsl")), "\n",)*)?
                "// ---- shaders/", $file, ".wgsl ----\n",
                include_str!(concat!("../shaders/", $file, ".wgsl"))
            ),
        };)*
        /// Every registered kernel shader.
        pub const ALL: &[Shader] = &[$($ident),*];
    };
    (@name $file:literal) => { $file };
    (@name $file:literal $name:literal) => { $name };
}

macro_rules! preludes {
    ($($file:literal $(reads $stand_in:literal)?),* $(,)?) => {
        /// Every shared prelude, alone (what `tests/shaders.rs` validates standalone), followed by
        /// stand-ins of the kernel globals it reads.
        pub const PRELUDES: &[Shader] = &[$(Shader {
            name: $file,
            file: $file,
            preludes: &[],
            source: concat!(include_str!(concat!("../shaders/", $file, ".wgsl")), $("\n", $stand_in,)?),
        }),*];
    };
}

preludes![
    "common/act",
    "common/coop16" reads "var<workgroup> coop_in: array<f16, 1>; var<workgroup> coop_out: array<f32, 1>; const WG: u32 = 64u; // stand-ins for the kernel's",
    "common/coop8" reads "var<workgroup> coop_in: array<f16, 1>; var<workgroup> coop_out: array<f32, 1>; const WG: u32 = 64u; // stand-ins for the kernel's",
    "common/coop_emulated" reads "alias CoopElem = f32; const FRAG: u32 = 16u; const WG: u32 = 64u; fn coop_f32(v: f32) -> f32 { return v; } var<workgroup> coop_in: array<f32, 1>; var<workgroup> coop_out: array<f32, 1>; // stand-ins for elem_*, frag* and the kernel",
    "common/decode",
    "common/elem_f16",
    "common/elem_f32",
    "common/frag16",
    "common/frag8",
    "common/joint" reads "struct JointStandIn { batch: u32, s_txt: u32, s_img: u32, has_mask: u32 } var<private> p: JointStandIn; var<private> mask: array<f32, 1>; // stand-ins for the kernel's",
    "common/rowscale",
    "common/quant" reads "var<private> weight: array<u32, 1>; // stand-in for the kernel's binding",
    "common/reduce",
];

shaders! {
    ADAMW => "adamw/adamw",
    ATTENTION => "attention/attention" uses ["common/joint"],
    ATTENTION_BACKWARD => "attention/attention_backward" uses ["common/joint"],
    CHANNEL_NORM_DENOM => "norm/channel_norm_denom",
    CONV2D => "conv/conv2d" uses ["common/decode"],
    ELEMENTWISE => "elementwise/elementwise" uses ["common/act"],
    ELEMENTWISE_BACKWARD => "elementwise/elementwise_backward" uses ["common/act"],
    FILL => "fill/fill",
    FLASH => "attention/flash" uses ["common/elem_f32", "common/frag16", "common/coop_emulated", "common/rowscale", "common/joint"],
    FLASH_EMULATED8 => "attention/flash" as "attention/flash@emulated8" uses ["common/elem_f32", "common/frag8", "common/coop_emulated", "common/rowscale", "common/joint"],
    FLASH_F16 => "attention/flash" as "attention/flash@f16" uses ["common/elem_f16", "common/frag16", "common/coop_emulated", "common/rowscale", "common/joint"],
    FLASH_COOP16 => "attention/flash" as "attention/flash@coop16" uses ["common/coop16", "common/rowscale", "common/joint"],
    FLASH_COOP8 => "attention/flash" as "attention/flash@coop8" uses ["common/coop8", "common/rowscale", "common/joint"],
    FLASH_BACKWARD => "attention/flash_backward" uses ["common/elem_f32", "common/frag16", "common/coop_emulated", "common/rowscale", "common/joint"],
    FLASH_BACKWARD_EMULATED8 => "attention/flash_backward" as "attention/flash_backward@emulated8" uses ["common/elem_f32", "common/frag8", "common/coop_emulated", "common/rowscale", "common/joint"],
    FLASH_BACKWARD_F16 => "attention/flash_backward" as "attention/flash_backward@f16" uses ["common/elem_f16", "common/frag16", "common/coop_emulated", "common/rowscale", "common/joint"],
    FLASH_BACKWARD_COOP16 => "attention/flash_backward" as "attention/flash_backward@coop16" uses ["common/coop16", "common/rowscale", "common/joint"],
    FLASH_BACKWARD_COOP8 => "attention/flash_backward" as "attention/flash_backward@coop8" uses ["common/coop8", "common/rowscale", "common/joint"],
    GATED_RESIDUAL => "gated_residual/gated_residual",
    GEMM => "gemm/gemm" uses ["common/elem_f32", "common/frag16", "common/coop_emulated", "common/decode", "common/quant", "common/act", "common/rowscale"],
    GEMM_EMULATED8 => "gemm/gemm" as "gemm/gemm@emulated8" uses ["common/elem_f32", "common/frag8", "common/coop_emulated", "common/decode", "common/quant", "common/act", "common/rowscale"],
    GEMM_F16 => "gemm/gemm" as "gemm/gemm@f16" uses ["common/elem_f16", "common/frag16", "common/coop_emulated", "common/decode", "common/quant", "common/act", "common/rowscale"],
    GEMM_COOP16 => "gemm/gemm" as "gemm/gemm@coop16" uses ["common/coop16", "common/decode", "common/quant", "common/act", "common/rowscale"],
    GEMM_COOP8 => "gemm/gemm" as "gemm/gemm@coop8" uses ["common/coop8", "common/decode", "common/quant", "common/act", "common/rowscale"],
    GEMM_DW => "gemm/gemm_dw",
    GEMM_DX => "gemm/gemm_dx" uses ["common/elem_f32", "common/frag16", "common/coop_emulated", "common/decode", "common/quant", "common/rowscale"],
    GEMM_DX_EMULATED8 => "gemm/gemm_dx" as "gemm/gemm_dx@emulated8" uses ["common/elem_f32", "common/frag8", "common/coop_emulated", "common/decode", "common/quant", "common/rowscale"],
    GEMM_DX_F16 => "gemm/gemm_dx" as "gemm/gemm_dx@f16" uses ["common/elem_f16", "common/frag16", "common/coop_emulated", "common/decode", "common/quant", "common/rowscale"],
    GEMM_DX_COOP16 => "gemm/gemm_dx" as "gemm/gemm_dx@coop16" uses ["common/coop16", "common/decode", "common/quant", "common/rowscale"],
    GEMM_DX_COOP8 => "gemm/gemm_dx" as "gemm/gemm_dx@coop8" uses ["common/coop8", "common/decode", "common/quant", "common/rowscale"],
    LAYER_NORM_MOD => "norm/layer_norm_mod" uses ["common/reduce"],
    LAYER_NORM_MOD_BACKWARD => "norm/layer_norm_mod_backward" uses ["common/reduce"],
    QKV_POST => "qkv_post/qkv_post",
    QKV_POST_BACKWARD => "qkv_post/qkv_post_backward",
    QKV_POST_NORM_GRAD => "qkv_post/qkv_post_norm_grad",
    REDUCE_ROWS => "norm/reduce_rows",
    RMS_NORM => "norm/rms_norm" uses ["common/reduce", "common/decode"],
    RMS_NORM_BACKWARD => "norm/rms_norm_backward" uses ["common/reduce", "common/decode"],
    SOFTMAX_ROWS => "norm/softmax_rows" uses ["common/reduce"],
    SQ_NORM => "norm/sq_norm" uses ["common/reduce"],
    TIMESTEP_EMBED => "timestep_embed/timestep_embed",
}
