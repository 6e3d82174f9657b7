//! Lowering: one graph node → its kernel launches. The only place that maps ops to kernels.

use crate::gpu::{Gpu, Launch};
use crate::graph::Op;
use crate::kernels::elementwise;
use crate::tensor::Tensor;
use crate::Result;

pub fn lower(gpu: &Gpu, op: &Op, inputs: &[&Tensor], outputs: &[&Tensor]) -> Result<Vec<Launch>> {
    Ok(match op {
        Op::Elementwise(e) => vec![elementwise::launch(gpu, *e, inputs[0], inputs.get(1).copied(), outputs[0])?],
        other => return Err(crate::Error::input(format!("TEMP: {} not lowered", other.name()))),
    })
}
