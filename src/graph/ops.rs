//! Typed ops. Each variant holds its own parameters (no wgpu types) and declares, next to its
//! shape check: how many dispatches it lowers to, which of its tensors its backward reads
//! (`saves`), and whether its output may share its first input's storage (`in_place`).
//! Lowering to kernels lives in `crate::exec::lower`.

use super::{Graph, TensorId};
use crate::kernels::elementwise::Op as Ew;
use crate::tensor::DType;

/// Which tensors of a node its backward needs: indices into its inputs / outputs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Saves {
    pub inputs: Vec<usize>,
    pub outputs: Vec<usize>,
}

#[derive(Clone, Debug)]
pub enum Op {
    /// `y = a ∘ b` or `y = f(a)` (f32, same shape). Inputs [a] or [a, b]; outputs [y].
    Elementwise(Ew),
}

impl Op {
    /// The op's name for accounting when the builder gives no better label.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Elementwise(e) => match e {
                Ew::Add => "add",
                Ew::Mul => "mul",
                Ew::Silu => "silu",
                Ew::GeluTanh => "gelu",
            },
        }
    }

    /// Dispatches this op lowers to (the executor asserts that lowering agrees).
    pub fn dispatches(&self) -> usize {
        match self {
            Op::Elementwise(_) => 1,
        }
    }

    /// What the backward of this op reads.
    pub fn saves(&self) -> Saves {
        match self {
            // d(a+b) needs nothing; d(a*b) needs both; silu'/gelu' need the input.
            Op::Elementwise(Ew::Add) => Saves::default(),
            Op::Elementwise(Ew::Mul) => Saves {
                inputs: vec![0, 1],
                outputs: vec![],
            },
            Op::Elementwise(_) => Saves {
                inputs: vec![0],
                outputs: vec![],
            },
        }
    }

    /// Panics with the op name when the tensors break the op's shape contract.
    pub fn check(&self, g: &Graph, inputs: &[TensorId], outputs: &[TensorId]) {
        match self {
            Op::Elementwise(e) => {
                let want = if e.is_unary() { 1 } else { 2 };
                assert_eq!(inputs.len(), want, "{}: inputs", self.name());
                assert_eq!(outputs.len(), 1, "{}: outputs", self.name());
                let n = g.shape(outputs[0]).iter().product::<usize>();
                for &t in inputs.iter().chain(outputs) {
                    assert_eq!(g.info(t).dtype, DType::F32, "{}: f32 only", self.name());
                    assert_eq!(
                        g.shape(t).iter().product::<usize>(),
                        n,
                        "{}: element counts differ",
                        self.name()
                    );
                }
            }
        }
    }
}
