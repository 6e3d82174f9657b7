//! The VAE's module walk and its one names table: which tensors a config needs, with their
//! checkpoint shapes (diffusers layout, spec vae-and-text-encoder.md §1.6 and Appendix A). The
//! graph builder (`vae.rs`) walks the same [`Layer`] lists, so names and graph cannot drift apart.

use super::config::VaeConfig;

/// One module of the encoder or decoder, in execution order, with its diffusers path.
#[derive(Clone, Debug, PartialEq)]
pub enum Layer {
    /// A causal 3×3×3 conv (pad 1) reduced to its last time tap: `<path>.weight [co, ci, 3, 3, 3]`.
    Conv3 { path: String, ci: usize, co: usize },
    /// `QwenImageResidualBlock(ci, co)`: norm1, conv1, norm2, conv2, and a 1×1 `conv_shortcut` if ci ≠ co.
    Res { path: String, ci: usize, co: usize },
    /// `QwenImageAttentionBlock(c)`: norm, to_qkv, single-head attention, proj.
    Attn { path: String, c: usize },
    /// `downsample2d`/`3d`: ZeroPad2d(0, 1, 0, 1) + 3×3 stride-2 conv `resample.1`; `time_conv` if temporal.
    Down { path: String, c: usize, temporal: bool },
    /// `upsample2d`/`3d`: nearest ×2 + 3×3 conv `resample.1` (c → c/2); `time_conv` if temporal.
    Up { path: String, c: usize, temporal: bool },
    /// `norm_out` (channel RMS norm, then SiLU).
    NormSilu { path: String, c: usize },
}

/// The encoder from `conv_in` to `conv_out` (2·z_dim channels); `quant_conv` follows.
pub fn encoder_layers(cfg: &VaeConfig) -> Vec<Layer> {
    let dims = cfg.encoder_dims();
    let mut v = vec![Layer::Conv3 { path: "encoder.conv_in".into(), ci: cfg.input_channels, co: dims[0] }];
    let mut idx = 0;
    let mut path = || {
        idx += 1;
        format!("encoder.down_blocks.{}", idx - 1)
    };
    for i in 0..cfg.dim_mult.len() {
        let (mut ci, co) = (dims[i], dims[i + 1]);
        for _ in 0..cfg.num_res_blocks {
            v.push(Layer::Res { path: path(), ci, co });
            ci = co;
        }
        if i + 1 != cfg.dim_mult.len() {
            v.push(Layer::Down { path: path(), c: co, temporal: cfg.temperal_downsample[i] });
        }
    }
    let c = *dims.last().expect("dims are not empty");
    v.extend(mid_block("encoder", c));
    v.push(Layer::NormSilu { path: "encoder.norm_out".into(), c });
    v.push(Layer::Conv3 { path: "encoder.conv_out".into(), ci: c, co: 2 * cfg.z_dim });
    v
}

/// The decoder from `conv_in` to `conv_out` (input_channels); `post_quant_conv` precedes it.
pub fn decoder_layers(cfg: &VaeConfig) -> Vec<Layer> {
    let dims = cfg.decoder_dims();
    let mut v = vec![Layer::Conv3 { path: "decoder.conv_in".into(), ci: cfg.z_dim, co: dims[0] }];
    v.extend(mid_block("decoder", dims[0]));
    let temporal_up: Vec<bool> = cfg.temperal_downsample.iter().rev().copied().collect();
    for i in 0..cfg.dim_mult.len() {
        let (mut ci, co) = (if i > 0 { dims[i] / 2 } else { dims[i] }, dims[i + 1]);
        for r in 0..=cfg.num_res_blocks {
            v.push(Layer::Res { path: format!("decoder.up_blocks.{i}.resnets.{r}"), ci, co });
            ci = co;
        }
        if i + 1 != cfg.dim_mult.len() {
            v.push(Layer::Up { path: format!("decoder.up_blocks.{i}.upsamplers.0"), c: co, temporal: temporal_up[i] });
        }
    }
    let c = *dims.last().expect("dims are not empty");
    v.push(Layer::NormSilu { path: "decoder.norm_out".into(), c });
    v.push(Layer::Conv3 { path: "decoder.conv_out".into(), ci: c, co: cfg.input_channels });
    v
}

fn mid_block(side: &str, c: usize) -> [Layer; 3] {
    [
        Layer::Res { path: format!("{side}.mid_block.resnets.0"), ci: c, co: c },
        Layer::Attn { path: format!("{side}.mid_block.attentions.0"), c },
        Layer::Res { path: format!("{side}.mid_block.resnets.1"), ci: c, co: c },
    ]
}

/// Every tensor the config needs, with its checkpoint shape, in a stable order.
pub fn expected_tensors(cfg: &VaeConfig) -> Vec<(String, Vec<usize>)> {
    let z2 = 2 * cfg.z_dim;
    let mut t = Vec::new();
    for l in encoder_layers(cfg).iter().chain(&decoder_layers(cfg)) {
        layer_tensors(l, &mut t);
    }
    conv(&mut t, "quant_conv", z2, z2, &[1, 1, 1]);
    conv(&mut t, "post_quant_conv", cfg.z_dim, cfg.z_dim, &[1, 1, 1]);
    t
}

fn conv(t: &mut Vec<(String, Vec<usize>)>, path: &str, ci: usize, co: usize, kernel: &[usize]) {
    t.push((format!("{path}.weight"), [co, ci].iter().chain(kernel).copied().collect()));
    t.push((format!("{path}.bias"), vec![co]));
}

fn layer_tensors(l: &Layer, t: &mut Vec<(String, Vec<usize>)>) {
    match l {
        Layer::Conv3 { path, ci, co } => conv(t, path, *ci, *co, &[3, 3, 3]),
        Layer::Res { path, ci, co } => {
            t.push((format!("{path}.norm1.gamma"), vec![*ci, 1, 1, 1]));
            conv(t, &format!("{path}.conv1"), *ci, *co, &[3, 3, 3]);
            t.push((format!("{path}.norm2.gamma"), vec![*co, 1, 1, 1]));
            conv(t, &format!("{path}.conv2"), *co, *co, &[3, 3, 3]);
            if ci != co {
                conv(t, &format!("{path}.conv_shortcut"), *ci, *co, &[1, 1, 1]);
            }
        }
        Layer::Attn { path, c } => {
            t.push((format!("{path}.norm.gamma"), vec![*c, 1, 1]));
            conv(t, &format!("{path}.to_qkv"), *c, 3 * c, &[1, 1]);
            conv(t, &format!("{path}.proj"), *c, *c, &[1, 1]);
        }
        Layer::Down { path, c, temporal } => {
            conv(t, &format!("{path}.resample.1"), *c, *c, &[3, 3]);
            if *temporal {
                conv(t, &format!("{path}.time_conv"), *c, *c, &[3, 1, 1]);
            }
        }
        Layer::Up { path, c, temporal } => {
            conv(t, &format!("{path}.resample.1"), *c, c / 2, &[3, 3]);
            if *temporal {
                conv(t, &format!("{path}.time_conv"), *c, 2 * c, &[3, 1, 1]);
            }
        }
        Layer::NormSilu { path, c } => t.push((format!("{path}.gamma"), vec![*c, 1, 1, 1])),
    }
}
