//! GPU-vs-CPU tests of the elementwise family (forward and backward).

mod backward;
mod forward;
