//! Host-side index tables of the image path (transformers 4.x `modeling_qwen2_5_vl.py`; spec
//! §2.7-2.8): the language model's 3-D M-RoPE position ids of a sequence with images
//! (`get_rope_index`), and the vision tower's patch positions (`rot_pos_emb`) and window
//! permutation (`get_window_index`, with `cu_window_seqlens` after `unique_consecutive`).

use super::rope::Pos3;
use crate::error::{Error, Result};

/// `get_rope_index` for one unpadded sequence: text tokens count up on all three axes; the
/// `gh/m × gw/m` tokens of image `i` (ids equal to `image_token`) at merged (r, c) get
/// `(s, s + r, s + c)` with `s` the position after the preceding text; the text after an image
/// continues from the image's largest position + 1. `grids` are the images' `[t, gh, gw]`.
pub fn rope_index(ids: &[u32], image_token: u32, grids: &[[usize; 3]], merge: usize) -> Result<Vec<Pos3>> {
    let mut out = Vec::with_capacity(ids.len());
    let mut next = 0u32; // the position the next text token gets
    let mut i = 0;
    let mut images = grids.iter();
    while i < ids.len() {
        if ids[i] != image_token {
            out.push([next; 3]);
            next += 1;
            i += 1;
            continue;
        }
        let g = images.next().ok_or_else(|| {
            Error::input("more <|image_pad|> blocks than images: the prompt names an image that was not given")
        })?;
        let (gt, gh, gw) = (g[0], g[1] / merge, g[2] / merge);
        let n = gt * gh * gw;
        if i + n > ids.len() || ids[i..i + n].iter().any(|&t| t != image_token) {
            return Err(Error::input(format!(
                "an image of {gh}×{gw} merged tokens needs {n} consecutive <|image_pad|> tokens"
            )));
        }
        let s = next;
        // Still images: the time index stays 0 (second_per_grid_t = 0).
        for _ in 0..gt {
            for r in 0..gh {
                for c in 0..gw {
                    out.push([s, s + r as u32, s + c as u32]);
                }
            }
        }
        next = s + gh.max(gw) as u32;
        i += n;
    }
    if images.next().is_some() {
        return Err(Error::input("more images than <|image_pad|> blocks in the prompt"));
    }
    Ok(out)
}

/// `rot_pos_emb`'s (row, column) of every patch of a `[t, gh, gw]` grid, in the processor's
/// merge-group order.
pub fn patch_positions(grid: [usize; 3], merge: usize) -> Vec<[u32; 2]> {
    let [t, gh, gw] = grid;
    let mut out = Vec::with_capacity(t * gh * gw);
    for _ in 0..t {
        for bh in 0..gh / merge {
            for bw in 0..gw / merge {
                for mh in 0..merge {
                    for mw in 0..merge {
                        out.push([(bh * merge + mh) as u32, (bw * merge + mw) as u32]);
                    }
                }
            }
        }
    }
    out
}

/// `get_window_index` over images `grids`: the merged-token permutation that makes each window
/// (`window` merged tokens a side, row-major over windows, partial at the right and bottom edges)
/// contiguous, and the window boundaries in patches (`cu_window_seqlens`, empty windows removed).
pub fn window_index(grids: &[[usize; 3]], merge: usize, window: usize) -> (Vec<usize>, Vec<usize>) {
    let unit = merge * merge;
    let (mut index, mut cu) = (Vec::new(), vec![0usize]);
    let mut base = 0;
    for g in grids {
        let (t, gh, gw) = (g[0], g[1] / merge, g[2] / merge);
        let (nwh, nww) = (gh.div_ceil(window), gw.div_ceil(window));
        for ti in 0..t {
            for wr in 0..nwh {
                for wc in 0..nww {
                    let mut count = 0;
                    for r in wr * window..((wr + 1) * window).min(gh) {
                        for c in wc * window..((wc + 1) * window).min(gw) {
                            index.push(base + (ti * gh + r) * gw + c);
                            count += 1;
                        }
                    }
                    let last = *cu.last().expect("cannot fail: starts with 0");
                    if count > 0 {
                        cu.push(last + count * unit);
                    }
                }
            }
        }
        base += t * gh * gw;
    }
    (index, cu)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ints(case: &str, name: &str) -> Vec<i64> {
        let dir = crate::testing::unpacked_fixture("text/cases").unwrap();
        let bytes = std::fs::read(dir.join(format!("{case}.safetensors"))).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        bytemuck::pod_collect_to_vec(st.tensor(name).unwrap_or_else(|e| panic!("{case} {name}: {e}")).data())
    }

    fn grids(case: &str) -> Vec<[usize; 3]> {
        ints(case, "image_grid_thw").chunks(3).map(|g| [g[0] as usize, g[1] as usize, g[2] as usize]).collect()
    }

    #[test]
    fn m_rope_position_ids_equal_transformers_4_get_rope_index() {
        for case in ["edit", "edit_plus"] {
            let ids: Vec<u32> = ints(case, "input_ids").iter().map(|&i| i as u32).collect();
            let got = rope_index(&ids, 151_655, &grids(case), 2).unwrap();
            let want = ints(case, "position_ids"); // [3, 1, L]
            let l = ids.len();
            for (j, p) in got.iter().enumerate() {
                for axis in 0..3 {
                    assert_eq!(p[axis] as i64, want[axis * l + j], "{case}: token {j} axis {axis}");
                }
            }
        }
        let e = rope_index(&[1, 151_655, 2], 151_655, &[], 2).unwrap_err().to_string();
        assert!(e.contains("more <|image_pad|> blocks than images"), "{e}");
    }

    #[test]
    fn the_vision_window_permutation_and_patch_positions_equal_transformers() {
        let g = grids("edit");
        let (index, cu) = window_index(&g, 2, 4);
        let want: Vec<usize> = ints("edit", "vision.window_index").iter().map(|&i| i as usize).collect();
        assert_eq!(index, want);
        let want_cu: Vec<usize> = ints("edit", "vision.cu_window_seqlens").iter().map(|&i| i as usize).collect();
        assert_eq!(cu, want_cu);
        let pos = patch_positions(g[0], 2);
        let want_pos = ints("edit", "vision.position_ids");
        assert_eq!(pos.iter().flatten().map(|&v| v as i64).collect::<Vec<_>>(), want_pos);
    }
}
