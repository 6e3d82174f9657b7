// elem_f16: operands of an emulated tile program stored as f16 (SHADER_F16): the `f16` kernel
// family, the tile programs on SIMT lanes where cooperative matrices are missing.
enable f16;

alias CoopElem = f16;

fn coop_elem(v: f32) -> CoopElem { return f16(v); }
fn coop_f32(v: CoopElem) -> f32 { return f32(v); }
