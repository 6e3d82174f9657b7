//! Squared L2 norm over one or many gradient buffers (`shaders/norm/sq_norm.wgsl`), for global-norm
//! clipping: one partial pass per tensor (a sum per 4096 elements) into a shared partials
//! buffer, then one finish pass; no float atomics. `adamw` reads the result on the device.

use crate::gpu::{Gpu, Launch};
use crate::shaders::SQ_NORM;
use crate::tensor::{DType, Tensor};
use crate::Result;
use std::sync::Arc;

/// Elements summed by one workgroup of the partial pass (the WGSL `PER_GROUP`).
pub const PER_GROUP: usize = 4096;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    pub n: u32,
    pub partial_offset: u32,
    pub n_partials: u32,
    pub _pad: u32,
}
crate::assert_params!(Params);

pub struct Args<'a> {
    /// f32 gradient buffers, each summed whole
    pub tensors: &'a [&'a Tensor],
    /// f32, at least [`partials`] elements
    pub partials: &'a Tensor,
    /// [1] f32, written
    pub out: &'a Tensor,
}

/// Partial sums needed for tensors of these lengths.
pub fn partials(lens: &[usize]) -> usize {
    lens.iter().map(|n| n.div_ceil(PER_GROUP)).sum()
}

pub fn launch(gpu: &Gpu, a: &Args) -> Result<Vec<Launch>> {
    assert!(!a.tensors.is_empty(), "sq_norm: no tensors");
    let mut out = Vec::with_capacity(a.tensors.len() + 1);
    let mut offset = 0usize;
    for t in a.tensors {
        assert_eq!(t.dtype, DType::F32, "sq_norm: f32 only");
        crate::kernels::check_index("sq_norm", &[("gradient", t)])?;
        let groups = t.numel().div_ceil(PER_GROUP);
        let p = Params { n: t.numel() as u32, partial_offset: offset as u32, n_partials: 0, _pad: 0 };
        out.push(Launch {
            kernel: gpu.kernel(&SQ_NORM, "sq_norm_partial", &[])?,
            params: bytemuck::bytes_of(&p).to_vec(),
            buffers: vec![t.buffer.clone(), a.partials.buffer.clone(), a.out.buffer.clone()],
            groups: crate::kernels::grid_2d(groups as u32),
        });
        offset += groups;
    }
    assert!(a.partials.numel() >= offset, "sq_norm: partials buffer too small");
    let p = Params { n: 0, partial_offset: 0, n_partials: offset as u32, _pad: 0 };
    out.push(Launch {
        kernel: gpu.kernel(&SQ_NORM, "sq_norm_finish", &[])?,
        params: bytemuck::bytes_of(&p).to_vec(),
        // the x binding is unused by the finish pass; any read-only buffer will do
        buffers: vec![a.tensors[0].buffer.clone(), a.partials.buffer.clone(), a.out.buffer.clone()],
        groups: [1, 1, 1],
    });
    Ok(out)
}

/// Convenience for tests and one-off use: Σ x² over the tensors, read back to the host.
pub fn run(gpu: &Arc<Gpu>, tensors: &[&Tensor]) -> Result<f32> {
    let lens: Vec<usize> = tensors.iter().map(|t| t.numel()).collect();
    let partials = Tensor::zeros(gpu, &[partials(&lens)], DType::F32, "sq_norm.partials")?;
    let out = Tensor::zeros(gpu, &[1], DType::F32, "sq_norm.out")?;
    gpu.run(&launch(gpu, &Args { tensors, partials: &partials, out: &out })?)?;
    Ok(out.to_f32(gpu)?[0])
}

pub mod cpu {
    /// f64 Σ x² over all tensors.
    pub fn sq_norm(tensors: &[&[f32]]) -> f64 {
        tensors.iter().flat_map(|t| t.iter()).map(|&x| (x as f64) * (x as f64)).sum()
    }
}
