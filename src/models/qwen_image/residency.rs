//! Which transformer blocks keep their weights on the GPU under a memory budget, and what the
//! rest cost to stream: the one decision `wgdit plan` prints and the streaming runtime follows.
//!
//! The non-block weights (embeddings, `norm_out`, `proj_out`; the modulation weights unless they
//! are precomputed) always stay resident. Blocks `0..resident_blocks` stay resident too; every
//! later block is uploaded before it runs into one of `ring_slots` device buffers of the largest
//! streamed block's size (two slots: block i+1 is prepared while block i computes), so a
//! forward uploads the streamed blocks once each. Pure arithmetic: no GPU, no weights.

/// The residency decision for one budget.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Residency {
    /// Blocks `0..resident_blocks` stay on the GPU.
    pub resident_blocks: usize,
    /// Ring buffers for the streamed blocks (0 when every block is resident).
    pub ring_slots: usize,
    /// Bytes of one ring slot (the largest streamed block).
    pub slot_bytes: u64,
    /// Weight bytes on the GPU: non-block weights, resident blocks and the ring.
    pub resident_bytes: u64,
    /// Bytes uploaded per forward (the streamed blocks' weights).
    pub streamed_bytes_per_forward: u64,
    /// Device bytes the run needs: `resident_bytes` + the activation peak.
    pub peak_bytes: u64,
}

/// Ring slots used when some blocks stream.
pub const RING_SLOTS: usize = 2;

/// The residency that keeps the most blocks resident within `budget` bytes, given each block's
/// weight bytes (in block order), the always-resident weight bytes and the activation peak.
/// `Err` carries the smallest budget that would fit when none does: every block streamed, or
/// every block resident when the ring would cost more than the blocks it replaces (one or two
/// blocks, or a last block smaller than the others).
pub fn plan_residency(
    block_bytes: &[u64],
    other_bytes: u64,
    activation_peak: u64,
    budget: u64,
) -> Result<Residency, u64> {
    let n = block_bytes.len();
    let mut best = None;
    for resident in (0..=n).rev() {
        let r = residency(block_bytes, other_bytes, activation_peak, resident);
        if r.peak_bytes <= budget {
            best = Some(r);
            break;
        }
    }
    best.ok_or_else(|| {
        (0..=n).map(|k| residency(block_bytes, other_bytes, activation_peak, k).peak_bytes).min().unwrap_or(0)
    })
}

/// The residency with blocks `0..resident` on the GPU and the rest streamed.
pub fn residency(block_bytes: &[u64], other_bytes: u64, activation_peak: u64, resident: usize) -> Residency {
    let (kept, streamed) = block_bytes.split_at(resident.min(block_bytes.len()));
    let slot_bytes = streamed.iter().copied().max().unwrap_or(0);
    let ring_slots = if streamed.is_empty() { 0 } else { RING_SLOTS.min(streamed.len()) };
    let resident_bytes = other_bytes + kept.iter().sum::<u64>() + ring_slots as u64 * slot_bytes;
    Residency {
        resident_blocks: kept.len(),
        ring_slots,
        slot_bytes,
        resident_bytes,
        streamed_bytes_per_forward: streamed.iter().sum(),
        peak_bytes: resident_bytes + activation_peak,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_stays_resident_when_it_fits() {
        let r = plan_residency(&[10, 10, 10], 5, 7, 42).unwrap();
        assert_eq!((r.resident_blocks, r.ring_slots, r.streamed_bytes_per_forward, r.peak_bytes), (3, 0, 0, 42));
    }

    #[test]
    fn the_ring_counts_against_the_budget_when_blocks_stream() {
        // Six blocks of 10: all resident needs 5 + 60 + 7 = 72. Streaming one or two blocks
        // saves nothing (their ring slots cost as much); with 2 resident: 5 + 20 + 2·10 + 7 = 52.
        let r = plan_residency(&[10; 6], 5, 7, 60).unwrap();
        assert_eq!((r.resident_blocks, r.ring_slots, r.slot_bytes), (2, 2, 10));
        assert_eq!((r.resident_bytes, r.streamed_bytes_per_forward, r.peak_bytes), (45, 40, 52));
        let r = plan_residency(&[10; 6], 5, 7, 71).unwrap();
        assert_eq!((r.resident_blocks, r.peak_bytes), (3, 62));
    }

    #[test]
    fn a_budget_below_the_all_streamed_minimum_says_what_it_needs() {
        assert_eq!(plan_residency(&[10, 10, 10], 5, 7, 31), Err(32));
        let r = plan_residency(&[10, 10, 10], 5, 7, 32).unwrap();
        assert_eq!((r.resident_blocks, r.streamed_bytes_per_forward), (0, 30));
        // Two blocks, the last one smaller (no text FFN): streaming both costs 2·10, keeping
        // them 10 + 6, so the minimum is all resident.
        assert_eq!(plan_residency(&[10, 6], 5, 7, 27), Err(28));
        assert_eq!(plan_residency(&[10, 6], 5, 7, 28).unwrap().resident_blocks, 2);
    }
}
