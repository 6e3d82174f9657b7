//! Activation memory by liveness, without a GPU. Each activation lives from the node that writes it
//! to the last node that reads it (graph outputs: to the end). Storage slots are reused best-fit:
//! a dead tensor's slot is handed to the next tensor that fits (a slot grows when none fits).
//! Inputs get their own slots (the caller writes them before each run); params are external.

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
    /// Σ sizes of inputs.
    pub input_bytes: u64,
}

/// Index of the last node reading or writing each tensor (`usize::MAX` for graph outputs). A
/// tensor may be written in parts by several nodes (row ranges), so writers count as uses too.
fn last_uses(g: &Graph) -> Vec<Option<usize>> {
    let mut last = vec![None; g.tensors.len()];
    for (i, n) in g.nodes.iter().enumerate() {
        for &t in n.inputs.iter().chain(&n.outputs) {
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
    let mut free: Vec<usize> = Vec::new();
    let mut input_bytes = 0;
    for (t, info) in g.tensors.iter().enumerate() {
        if info.kind == TensorKind::Input {
            slot_bytes.push(info.bytes());
            slot_of[t] = Some(slot_bytes.len() - 1);
            input_bytes += info.bytes();
        }
    }
    let first_activation_slot = slot_bytes.len();
    let mut naive = 0;
    for (i, n) in g.nodes.iter().enumerate() {
        for &o in &n.outputs {
            if slot_of[o].is_some() {
                continue; // a later partial write of an already placed tensor
            }
            let need = g.tensors[o].bytes().max(4);
            naive += need;
            slot_of[o] = Some(take_slot(&mut free, &mut slot_bytes, need));
        }
        // Free every activation whose last use is this node.
        for &t in n.inputs.iter().chain(&n.outputs) {
            if last[t] == Some(i) && g.tensors[t].kind == TensorKind::Activation {
                if let Some(s) = slot_of[t] {
                    if !free.contains(&s) {
                        free.push(s);
                    }
                }
            }
        }
    }
    let peak = slot_bytes[first_activation_slot..].iter().sum();
    MemoryPlan { slot_of, slot_bytes, peak_activation_bytes: peak, naive_activation_bytes: naive, input_bytes }
}

/// Best fit among free slots; else grow the largest free slot; else a new slot.
fn take_slot(free: &mut Vec<usize>, sizes: &mut Vec<u64>, need: u64) -> usize {
    let fit = free.iter().enumerate().filter(|(_, &s)| sizes[s] >= need).min_by_key(|(_, &s)| sizes[s]);
    if let Some((i, _)) = fit {
        return free.swap_remove(i);
    }
    if let Some((i, _)) = free.iter().enumerate().max_by_key(|(_, &s)| sizes[s]) {
        let s = free.swap_remove(i);
        sizes[s] = need;
        return s;
    }
    sizes.push(need);
    sizes.len() - 1
}
