//! The attention tile programs (`shaders/attention/flash.wgsl`, `flash_backward.wgsl`): their
//! layout ([`FlashConfig`]), its fit to the adapter's workgroup memory and the per-lane register
//! bounds of the shaders, and the compositions per fragment backend (docs/kernels.md).

use crate::gpu::Gpu;
use crate::kernels::Tiles;
use crate::layout::JointShape;
use crate::shaders::{
    Shader, FLASH, FLASH_BACKWARD, FLASH_BACKWARD_COOP16, FLASH_BACKWARD_COOP8, FLASH_BACKWARD_EMULATED8,
    FLASH_BACKWARD_F16, FLASH_COOP16, FLASH_COOP8, FLASH_EMULATED8, FLASH_F16,
};
use crate::{Error, Result};

/// `MAX_O` in flash.wgsl: f32 O registers per lane.
const MAX_O: usize = 64;
/// Rows per subgroup the shaders' register arrays are sized for (`WR` at most 16).
const MAX_WR: usize = 16;

/// The layout of one tile-program workgroup: `warps` subgroups, each owning `wr` block rows
/// (query rows in the forward and the dQ pass, keys in the dK/dV pass; a multiple of the
/// fragment edge, at most 16), tiles of `bc` rows staged per step (a multiple of the fragment
/// edge), staged rows padded by `pad` elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlashConfig {
    pub warps: usize,
    pub wr: usize,
    pub bc: usize,
    pub pad: usize,
}

/// Which of the three programs a configuration is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    Forward,
    Backward,
}

impl FlashConfig {
    /// The default per backend, shrunk until it fits `max_bytes` and the register bounds: 64-row
    /// blocks of four 16-row subgroups, tiles of 64 keys on real cooperative matrices (32 on the
    /// SIMT backends), rows padded by 16 bytes of f16 where a real GPU has banks. Shrinks the
    /// tile, then the subgroup count, then (8x8 fragments) the rows per subgroup; `None` when
    /// even one fragment strip does not fit.
    pub fn default_for(tiles: Tiles, pass: Pass, dh: usize, lanes: usize, max_bytes: usize) -> Option<FlashConfig> {
        let mut c = match tiles {
            Tiles::Coop16 | Tiles::Coop8 => FlashConfig { warps: 4, wr: 16, bc: 64, pad: 8 },
            Tiles::F16 => FlashConfig { warps: 4, wr: 16, bc: 32, pad: 8 },
            Tiles::Emulated16 | Tiles::Emulated8 => FlashConfig { warps: 4, wr: 16, bc: 32, pad: 0 },
        };
        let f = tiles.frag();
        loop {
            if c.fits(tiles, pass, dh, lanes, max_bytes) {
                return Some(c);
            }
            if c.bc > f {
                c.bc /= 2;
            } else if c.warps > 1 {
                c.warps /= 2;
            } else if c.wr > f {
                c.wr /= 2;
            } else if c.pad > 0 {
                c.pad = 0;
            } else {
                return None;
            }
        }
    }

    /// Block rows per workgroup (`BR`).
    pub fn br(&self) -> usize {
        self.warps * self.wr
    }

    /// Workgroup memory of the pass's arrays (the dK/dV pass for the backward: the larger).
    pub fn workgroup_bytes(&self, tiles: Tiles, pass: Pass, dh: usize) -> usize {
        let (br, bc, eb) = (self.br(), self.bc, tiles.elem_bytes());
        let (ldd, ldp) = (dh + self.pad, bc + self.pad);
        match pass {
            // Q, K, V, P; the S tile; key_ok, row_alpha; the V max
            Pass::Forward => eb * (br * ldd + 2 * bc * ldd + br * ldp) + 4 * br * bc + 4 * (bc + br) + 4,
            // K, V, Qs, dO, Pᵀ, dSᵀ; Sᵀ and dPᵀ; four row arrays; the dO and V maxima
            Pass::Backward => eb * (2 * br * ldd + 2 * bc * ldd + 2 * br * ldp) + 8 * br * bc + 8 * (bc + br) + 8,
        }
    }

    /// Whether the layout suits the fragment edge, the subgroup width and the register arrays.
    fn valid(&self, tiles: Tiles, dh: usize, lanes: usize) -> bool {
        let f = tiles.frag();
        let per_round = self.wr * self.bc / lanes;
        self.wr % f == 0
            && self.bc % f == 0
            && self.wr <= MAX_WR
            && dh % f == 0
            && (self.wr * self.bc) % lanes == 0
            && dh.div_ceil(self.bc) * per_round <= MAX_O
    }

    fn fits(&self, tiles: Tiles, pass: Pass, dh: usize, lanes: usize, max_bytes: usize) -> bool {
        self.valid(tiles, dh, lanes) && self.workgroup_bytes(tiles, pass, dh) <= max_bytes
    }

    /// The explicit configuration's check at launch: `TooLarge` (not a failed pipeline) when it
    /// needs more workgroup memory than the adapter has; a layout that breaks the shader's
    /// contract is a programmer error.
    pub(super) fn check(&self, gpu: &Gpu, tiles: Tiles, pass: Pass, sh: &JointShape) -> Result<()> {
        let lanes = tiles.lanes(gpu);
        assert!(sh.seq().div_ceil(self.br()) <= 65535, "flash: S = {} over {}·65535", sh.seq(), self.br());
        assert!(
            self.valid(tiles, sh.head_dim, lanes),
            "flash: {self:?} does not suit {tiles:?}, {lanes} lanes, {sh:?}"
        );
        let (bytes, max) = (self.workgroup_bytes(tiles, pass, sh.head_dim), gpu.limits().max_workgroup_storage);
        if bytes > max as usize {
            return Err(Error::TooLarge(format!(
                "attention tile program {pass:?} {tiles:?} {self:?} at head_dim {} needs {bytes} B of workgroup \
                 memory; the adapter allows {max} (use a smaller configuration or the portable kernels)",
                sh.head_dim
            )));
        }
        Ok(())
    }

    pub(super) fn constants(&self, gpu: &Gpu, tiles: Tiles, sh: &JointShape) -> Vec<(&'static str, f64)> {
        let f = |v: usize| v as f64;
        vec![
            ("DH", f(sh.head_dim)),
            ("WARPS", f(self.warps)),
            ("LANES", f(tiles.lanes(gpu))),
            ("WR", f(self.wr)),
            ("BC", f(self.bc)),
            ("PAD", f(self.pad)),
        ]
    }

    pub(super) fn groups(&self, sh: &JointShape) -> [u32; 3] {
        [sh.seq().div_ceil(self.br()) as u32, (sh.batch * sh.heads) as u32, 1]
    }
}

/// The default configuration of `tiles` for this pass on this adapter, or `None` when none fits.
pub(super) fn default_config(gpu: &Gpu, tiles: Tiles, pass: Pass, sh: &JointShape) -> Option<FlashConfig> {
    let max = gpu.limits().max_workgroup_storage as usize;
    FlashConfig::default_for(tiles, pass, sh.head_dim, tiles.lanes(gpu), max)
}

/// The `attention/flash` (forward) and `attention/flash_backward` compositions of a backend.
pub(super) fn shaders(tiles: Tiles) -> (&'static Shader, &'static Shader) {
    match tiles {
        Tiles::Coop16 => (&FLASH_COOP16, &FLASH_BACKWARD_COOP16),
        Tiles::Coop8 => (&FLASH_COOP8, &FLASH_BACKWARD_COOP8),
        Tiles::F16 => (&FLASH_F16, &FLASH_BACKWARD_F16),
        Tiles::Emulated16 => (&FLASH, &FLASH_BACKWARD),
        Tiles::Emulated8 => (&FLASH_EMULATED8, &FLASH_BACKWARD_EMULATED8),
    }
}
