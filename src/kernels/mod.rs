//! WGSL kernels, one folder per family (`kernels/<family>/` beside `shaders/<family>/`): for each
//! op a `Params` struct mirroring the WGSL one, launchers that return a
//! [`Launch`](crate::gpu::Launch), a naive CPU reference in `cpu`, and the GPU-vs-CPU tests in
//! the family's `tests.rs` (seeded awkward shapes, outputs poisoned with NaN).
//!
//! One launcher vocabulary: `launch_*` builds launches and runs nothing; the caller runs them
//! (`gpu.run(&[..])`) or the executor binds them once and replays them. A family with a backward
//! names its pair `launch_forward` / `launch_backward` (GEMM: `launch_forward`, and `launch_dx`,
//! `launch_dw`, `launch_lora_grads`); `run_*` are conveniences that allocate outputs and run now
//! (tests, one-off use); `cpu::{forward, backward, ..}` are the references.
//!
//! Gradient accumulation, stated once: parameter gradients are written with `+=` (micro-batches
//! accumulate until the trainer zeroes them); activation gradients with `=`, except where several
//! branches meet (a residual stream, the rows of a grouped op), where the kernel takes an
//! `accumulate` flag and the autodiff zero-fills the gradient on first use (`graph::autodiff`).

pub mod adamw;
pub mod attention;
pub mod conv;
pub mod elementwise;
pub mod fill;
pub mod gated_residual;
pub mod gemm;
pub mod norm;
pub mod qkv_post;
pub mod timestep_embed;

#[cfg(test)]
mod test_util;

/// The fragment backend of a tile program (`gemm_coop`, the flash attention): which preludes
/// provide the fragment API of `shaders/common/coop16.wgsl` (docs/kernels.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tiles {
    /// Real 16×16×16 cooperative matrices (`--kernels coop` on Vulkan).
    Coop16,
    /// Real 8×8×8 cooperative matrices (`--kernels coop` on Metal).
    Coop8,
    /// SIMT lanes on f16 operands in workgroup memory (`--kernels f16`).
    F16,
    /// The emulation on f32 values rounded to f16, 16×16 fragments (`--kernels coop-emulated`).
    Emulated16,
    /// The emulation with Metal's 8×8 fragments (tests run the Metal tile layout through it).
    Emulated8,
}

impl Tiles {
    pub const ALL: [Tiles; 5] = [Tiles::Coop16, Tiles::Coop8, Tiles::F16, Tiles::Emulated16, Tiles::Emulated8];

    /// The backend of the device's kernel choice (`None`: the portable kernels).
    pub fn of(choice: &crate::gpu::KernelChoice) -> Option<Tiles> {
        use crate::gpu::Family;
        match choice.family {
            Family::Portable => None,
            Family::F16 => Some(Tiles::F16),
            Family::Coop if choice.frag == 8 => Some(Tiles::Coop8),
            Family::Coop => Some(Tiles::Coop16),
            Family::CoopEmulated => Some(Tiles::Emulated16),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Tiles::Coop16 => "coop16",
            Tiles::Coop8 => "coop8",
            Tiles::F16 => "f16",
            Tiles::Emulated16 => "emulated16",
            Tiles::Emulated8 => "emulated8",
        }
    }

    /// Fragment edge.
    pub fn frag(self) -> usize {
        match self {
            Tiles::Coop8 | Tiles::Emulated8 => 8,
            _ => 16,
        }
    }

    /// Bytes of one staged operand in workgroup memory.
    pub fn elem_bytes(self) -> usize {
        match self {
            Tiles::Emulated16 | Tiles::Emulated8 => 4,
            _ => 2,
        }
    }

    /// Invocations per subgroup the program is laid out for: the adapter's fixed subgroup size
    /// on real cooperative matrices, 32 in the emulation.
    pub fn lanes(self, gpu: &crate::gpu::Gpu) -> usize {
        match self {
            Tiles::Coop16 | Tiles::Coop8 => gpu.info().coop.subgroup_sizes.0 as usize,
            _ => crate::gpu::choice::EMULATED_LANES as usize,
        }
    }

    /// Whether it runs on real cooperative matrices.
    pub fn is_real_coop(self) -> bool {
        matches!(self, Tiles::Coop16 | Tiles::Coop8)
    }
}

/// Kernels that decode only f32, f16 and bf16 weights (`shaders/common/decode.wgsl`: conv2d, the
/// RMS norms) refuse the block formats and fp8 with an error naming the dtype: their weights
/// are small, and a loader that meets one there widens it on the host.
pub fn require_float_weight(kernel: &str, dtype: crate::tensor::DType) -> crate::Result<()> {
    if dtype.is_float() {
        return Ok(());
    }
    Err(crate::Error::input(format!(
        "{kernel}: weights stored as {} are not supported (f32, f16 or bf16 only); widen this tensor on the host",
        dtype.name()
    )))
}

/// The most elements a launcher lets a shader index: u32 element indices, less one grid row of
/// [`grid_2d`]'s padding (65535 workgroups of 256) so that `gid.y * row_pitch + gid.x` cannot wrap
/// past 2^32 onto a valid index. Under `gpu::MAX_BINDING` no f32/f16/bf16 tensor comes near; the
/// check guards views of larger arenas and sub-byte weights.
pub const MAX_INDEX_ELEMS: usize = (u32::MAX - 65535 * 256) as usize;

/// Refuses a launch of `kernel` when a tensor has more elements than a u32 index reaches,
/// naming the tensor (an `Error::TooLarge`, never a silent wrap).
pub fn check_index(kernel: &str, tensors: &[(&str, &crate::tensor::Tensor)]) -> crate::Result<()> {
    for (name, t) in tensors {
        index_len(kernel, name, t.numel())?;
    }
    Ok(())
}

/// `n` elements of `kernel`'s tensor `name` as the u32 a shader indexes with, or `Error::TooLarge`.
pub fn index_len(kernel: &str, name: &str, n: usize) -> crate::Result<u32> {
    if n > MAX_INDEX_ELEMS {
        return Err(crate::Error::TooLarge(format!(
            "{kernel}: {name} has {n} elements, more than the {MAX_INDEX_ELEMS} a u32 index reaches; \
             use smaller shapes (fewer tokens, a smaller batch or tile)"
        )));
    }
    Ok(n as u32)
}

/// Splits `groups` workgroups into an (x, y) grid within the per-dimension limit (65535).
pub fn grid_2d(groups: u32) -> [u32; 3] {
    const MAX: u32 = 65535;
    if groups <= MAX {
        [groups.max(1), 1, 1]
    } else {
        [MAX, groups.div_ceil(MAX), 1]
    }
}

/// Asserts at compile time that a Params struct is a whole number of 16-byte rows, as WGSL
/// uniform layout requires.
#[macro_export]
macro_rules! assert_params {
    ($t:ty) => {
        const _: () = assert!(std::mem::size_of::<$t>() % 16 == 0, "Params must be padded to 16 bytes");
    };
}

#[cfg(test)]
mod index_tests {
    #[test]
    fn an_element_count_past_u32_indexing_is_too_large_and_names_the_tensor() {
        assert_eq!(super::index_len("attention", "q", 1 << 20).unwrap(), 1 << 20);
        let e = super::index_len("attention", "q", 1 << 32).unwrap_err();
        assert!(matches!(e, crate::Error::TooLarge(_)), "{e}");
        assert!(e.to_string().contains("attention: q has 4294967296 elements"), "{e}");
        // one grid row of padding short of 2^32: the last row's indices cannot wrap
        assert!(super::index_len("fill", "y", super::MAX_INDEX_ELEMS).is_ok());
        assert!(super::index_len("fill", "y", super::MAX_INDEX_ELEMS + 1).is_err());
    }
}
