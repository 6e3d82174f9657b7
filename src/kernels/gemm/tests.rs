//! GPU-vs-CPU tests of the gemm family (forward and backward), and of the quantized and fp8
//! weight decoders inside them.

mod backward;
mod forward;
mod quant;
