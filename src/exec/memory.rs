//! Activation memory by liveness, without a GPU. Each activation lives from the first node that
//! writes it to the last node that uses it (graph outputs: to the end). Slots (one GPU buffer each)
//! are assigned offline, greedy by size: largest tensor first, into the first slot whose tenants'
//! lifetimes do not overlap. Inputs get their own slots (the caller writes them before each run);
//! params and accumulators are external.

use crate::graph::{Graph, TensorKind};

#[derive(Clone, Debug)]
pub struct MemoryPlan {
    /// Slot of each graph tensor (`None` for params).
    pub slot_of: Vec<Option<usize>>,
    /// Byte size of each slot (one GPU buffer each).
    pub slot_bytes: Vec<u64>,
    /// Σ slot sizes of activations: what the plan allocates for them.
    pub peak_activation_bytes: u64,
    /// Σ sizes of all activations: what allocating every tensor separately would take.
    pub naive_activation_bytes: u64,
    /// The most activation bytes alive at once: the lower bound any slot assignment can reach.
    pub live_activation_bytes: u64,
    /// Σ sizes of inputs.
    pub input_bytes: u64,
}

/// Index of the last node reading or writing each tensor (`usize::MAX` for graph outputs). A
/// tensor may be written in parts by several nodes (row ranges), so writers count as uses too.
fn last_uses(g: &Graph) -> Vec<Option<usize>> {
    let mut last = vec![None; g.tensors.len()];
    for (i, n) in g.nodes.iter().enumerate() {
        for t in n.op.inputs().into_iter().chain(n.op.outputs()) {
            last[t] = Some(i);
        }
    }
    for &t in &g.outputs {
        last[t] = Some(usize::MAX);
    }
    last
}

pub fn plan(g: &Graph) -> MemoryPlan {
    let last = last_uses(g);
    let mut slot_of = vec![None; g.tensors.len()];
    let mut slot_bytes: Vec<u64> = Vec::new();
    let mut input_bytes = 0;
    for (t, info) in g.tensors.iter().enumerate() {
        if info.kind == TensorKind::Input {
            slot_bytes.push(info.bytes());
            slot_of[t] = Some(slot_bytes.len() - 1);
            input_bytes += info.bytes();
        }
    }
    // Lifetime [first write, last use] of every activation a node writes.
    let mut first = vec![None; g.tensors.len()];
    for (i, n) in g.nodes.iter().enumerate() {
        n.op.visit(
            |_| {},
            |o| {
                first[o].get_or_insert(i);
            },
        );
    }
    let mut acts: Vec<(usize, u64, usize, usize)> = (0..g.tensors.len())
        .filter(|&t| g.tensors[t].kind == TensorKind::Activation)
        .filter_map(|t| Some((t, g.tensors[t].bytes().max(4), first[t]?, last[t]?)))
        .collect();
    let naive = acts.iter().map(|a| a.1).sum();
    let live = live_peak(&acts, g.nodes.len());
    // Greedy by size (largest first): a tensor takes the first slot whose tenants' lifetimes
    // do not overlap its own; slots are never smaller than later (smaller) tenants.
    acts.sort_by_key(|a| (std::cmp::Reverse(a.1), a.2));
    let first_activation_slot = slot_bytes.len();
    let mut tenants: Vec<Vec<(usize, usize)>> = Vec::new();
    for &(t, bytes, from, to) in &acts {
        let free = tenants.iter().position(|iv| iv.iter().all(|&(a, b)| to < a || b < from));
        let s = match free {
            Some(k) => k,
            None => {
                tenants.push(Vec::new());
                slot_bytes.push(bytes);
                tenants.len() - 1
            }
        };
        tenants[s].push((from, to));
        slot_of[t] = Some(first_activation_slot + s);
    }
    let peak = slot_bytes[first_activation_slot..].iter().sum();
    MemoryPlan {
        slot_of,
        slot_bytes,
        peak_activation_bytes: peak,
        naive_activation_bytes: naive,
        live_activation_bytes: live,
        input_bytes,
    }
}

/// The most bytes alive at once over the node sequence.
fn live_peak(acts: &[(usize, u64, usize, usize)], nodes: usize) -> u64 {
    let mut delta = vec![0i64; nodes + 1];
    for &(_, bytes, from, to) in acts {
        delta[from] += bytes as i64;
        delta[to.min(nodes - 1) + 1] -= bytes as i64;
    }
    let (mut cur, mut best) = (0i64, 0i64);
    for d in delta {
        cur += d;
        best = best.max(cur);
    }
    best as u64
}
