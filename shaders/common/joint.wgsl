// joint: the joint text+image row layout and key visibility of the attention kernels (portable
// and tile programs). Reads the kernel's `p` (batch, s_txt, s_img, has_mask) and `mask` binding.
// Joint position s of sample b (text first) lives in stream-major row
//   s < s_txt ? b·s_txt + s : B·s_txt + b·s_img + (s − s_txt).
fn joint_row(b: u32, s: u32) -> u32 {
    if (s < p.s_txt) { return b * p.s_txt + s; }
    return p.batch * p.s_txt + b * p.s_img + (s - p.s_txt);
}

// 1 when key j of sample b exists and is not a masked text key, else 0.
fn key_valid(b: u32, j: u32, s_all: u32) -> f32 {
    if (j >= s_all) { return 0.0; }
    if (p.has_mask != 0u && j < p.s_txt && mask[b * p.s_txt + j] == 0.0) { return 0.0; }
    return 1.0;
}
