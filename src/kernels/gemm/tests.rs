//! GPU-vs-CPU tests of the gemm family (forward and backward).

mod backward;
mod forward;
