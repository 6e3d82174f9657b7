//! The registry of embedded WGSL shaders: one `Shader` per file in `shaders/`, listed in `ALL`,
//! which a test walks to validate every shader with naga (no GPU needed).

/// A WGSL source file compiled into the binary.
#[derive(Clone, Copy, Debug)]
pub struct Shader {
    pub name: &'static str,
    pub source: &'static str,
}

macro_rules! shaders {
    ($($ident:ident => $file:literal),* $(,)?) => {
        $(pub const $ident: Shader = Shader { name: $file, source: include_str!(concat!("../shaders/", $file, ".wgsl")) };)*
        /// Every registered shader.
        pub const ALL: &[Shader] = &[$($ident),*];
    };
}

shaders! {
    ADAMW => "adamw",
    ATTENTION => "attention",
    ATTENTION_BACKWARD => "attention_backward",
    ELEMENTWISE => "elementwise",
    ELEMENTWISE_BACKWARD => "elementwise_backward",
    FILL => "fill",
    GATED_RESIDUAL => "gated_residual",
    GEMM => "gemm",
    GEMM_DW => "gemm_dw",
    GEMM_DX => "gemm_dx",
    LAYER_NORM_MOD => "layer_norm_mod",
    LAYER_NORM_MOD_BACKWARD => "layer_norm_mod_backward",
    QKV_POST => "qkv_post",
    QKV_POST_BACKWARD => "qkv_post_backward",
    QKV_POST_NORM_GRAD => "qkv_post_norm_grad",
    REDUCE_ROWS => "reduce_rows",
    RMS_NORM => "rms_norm",
    RMS_NORM_BACKWARD => "rms_norm_backward",
    SQ_NORM => "sq_norm",
    TIMESTEP_EMBED => "timestep_embed",
}
