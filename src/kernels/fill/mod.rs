//! `y = value` over a whole f32 tensor (`shaders/fill/fill.wgsl`): zeroes gradient accumulators.

use crate::gpu::{Gpu, Launch};
use crate::shaders::FILL;
use crate::tensor::{DType, Tensor};
use crate::Result;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    pub n: u32,
    pub row_pitch: u32,
    pub value: f32,
    pub _pad: u32,
}
crate::assert_params!(Params);

pub fn launch(gpu: &Gpu, y: &Tensor, value: f32) -> Result<Launch> {
    assert_eq!(y.dtype, DType::F32, "fill: f32 only");
    let n = crate::kernels::index_len("fill", "y", y.numel())?;
    let groups = crate::kernels::grid_2d(n.div_ceil(256));
    let p = Params { n, row_pitch: groups[0] * 256, value, _pad: 0 };
    Ok(Launch {
        kernel: gpu.kernel(&FILL, "fill", &[])?,
        params: bytemuck::bytes_of(&p).to_vec(),
        buffers: vec![y.buffer.clone()],
        groups,
    })
}
