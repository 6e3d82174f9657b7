//! M-RoPE of the Qwen2.5-VL language model (transformers `Qwen2_5_VLModel.get_rope_index` of 4.x
//! and `Qwen2_5_VLRotaryEmbedding`; spec §2.8): each token has a position triple (t, h, w);
//! frequency i < head_dim/2 uses t, h or w by `mrope_section`; dims i and i + head_dim/2 share
//! the angle (rotate_half form). Text tokens have t = h = w, so text alone is ordinary 1-D RoPE.

use super::config::TextConfig;

/// One token's (t, h, w) position.
pub type Pos3 = [u32; 3];

/// Positions of a text-only sequence: `cumsum(mask) − 1` over valid tokens (0..L−1 without
/// padding); padded tokens get 0 (their outputs are dropped).
pub fn text_positions(mask: &[bool]) -> Vec<Pos3> {
    let mut next = 0u32;
    mask.iter()
        .map(|&valid| {
            if !valid {
                return [0; 3];
            }
            let p = next;
            next += 1;
            [p; 3]
        })
        .collect()
}

/// `inv_freq[i] = 1 / θ^(2i/head_dim)`, i < head_dim/2, as f32 (computed in f64 and rounded once).
pub fn inv_freq(theta: f64, head_dim: usize) -> Vec<f32> {
    (0..head_dim / 2).map(|i| (1.0 / theta.powf(2.0 * i as f64 / head_dim as f64)) as f32).collect()
}

/// The rotation table `[tokens, head_dim/2, 2]` of (cos, sin) per token and frequency, in f32 as
/// transformers computes it (`position · inv_freq` multiplied in f32, then cos and sin).
pub fn cos_sin_table(cfg: &TextConfig, positions: &[Pos3]) -> Vec<f32> {
    let inv = inv_freq(cfg.rope_theta, cfg.head_dim);
    let [st, sh, _] = cfg.mrope_section;
    let mut out = Vec::with_capacity(positions.len() * inv.len() * 2);
    for p in positions {
        for (i, &f) in inv.iter().enumerate() {
            let axis = if i < st {
                0
            } else if i < st + sh {
                1
            } else {
                2
            };
            let a = p[axis] as f32 * f;
            out.extend([a.cos(), a.sin()]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_positions_count_valid_tokens_only() {
        assert_eq!(text_positions(&[true, true, true]), [[0; 3], [1; 3], [2; 3]]);
        assert_eq!(text_positions(&[false, true, true]), [[0; 3], [0; 3], [1; 3]]);
    }

    #[test]
    fn sections_pick_the_axis_of_each_frequency() {
        let cfg = TextConfig {
            vocab_size: 10,
            hidden_size: 8,
            intermediate_size: 8,
            num_hidden_layers: 1,
            num_attention_heads: 1,
            num_key_value_heads: 1,
            head_dim: 8,
            rms_norm_eps: 1e-6,
            rope_theta: 1e6,
            mrope_section: [1, 1, 2],
            tie_word_embeddings: false,
        };
        let t = cos_sin_table(&cfg, &[[2, 3, 5]]);
        let inv = inv_freq(1e6, 8);
        let want = [2.0 * inv[0], 3.0 * inv[1], 5.0 * inv[2], 5.0 * inv[3]];
        for (i, a) in want.iter().enumerate() {
            assert_eq!((t[2 * i], t[2 * i + 1]), (a.cos(), a.sin()), "frequency {i}");
        }
    }
}
