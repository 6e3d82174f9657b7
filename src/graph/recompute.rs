//! Gradient checkpointing as a graph rewrite. In a training graph (forward nodes, then backward
//! nodes), every backward read of a tensor produced inside a checkpoint segment is redirected to a
//! recomputed copy: the segment's forward nodes are cloned, with fresh output tensors, right before
//! the first backward node that needs them. The originals then die at their last forward use, so
//! the liveness planner reuses their memory; only segment inputs (e.g. block outputs) stay stored.

use super::{Graph, Label, Node, TensorId};
use std::collections::{HashMap, HashSet};

/// Rewrites `g` in place. `first_backward` is the index of the first backward node; nodes before
/// it are the forward. Returns the number of recomputed nodes.
pub fn apply(g: &mut Graph, first_backward: usize) -> usize {
    let forward: Vec<Node> = g.nodes[..first_backward].to_vec();
    let mut backward: Vec<Node> = g.nodes[first_backward..].to_vec();
    let mut inserts: Vec<(usize, Vec<Node>)> = Vec::new();
    for seg in 0..g.segments.len() {
        let members: Vec<&Node> = forward.iter().filter(|n| n.segment == Some(seg)).collect();
        // The segment's internal tensors: produced inside and read by no forward node outside it
        // (its outputs, e.g. the block output, stay stored: the next segment starts from them).
        let read_outside: HashSet<TensorId> =
            forward.iter().filter(|n| n.segment != Some(seg)).flat_map(|n| n.op.inputs()).collect();
        let produced: Vec<TensorId> = members
            .iter()
            .flat_map(|n| n.op.outputs())
            .filter(|t| !read_outside.contains(t) && !g.outputs.contains(t))
            .collect();
        let Some(at) = backward.iter().position(|n| n.op.inputs().iter().any(|t| produced.contains(t))) else {
            continue;
        };
        let mut remap: HashMap<TensorId, TensorId> = HashMap::new();
        let mut clones = Vec::with_capacity(members.len());
        for n in &members {
            let mut op = n.op.clone();
            op.map_operands(|t| *remap.get(&t).unwrap_or(&t), |t| t);
            op.map_operands(
                |t| t,
                |t| {
                    if let Some(&r) = remap.get(&t) {
                        return r; // a further partial write of a recomputed tensor
                    }
                    let mut info = g.tensors[t].clone();
                    info.name = format!("{} (recompute)", info.name);
                    g.tensors.push(info);
                    remap.insert(t, g.tensors.len() - 1);
                    g.tensors.len() - 1
                },
            );
            let label = Label { layer: n.label.layer, op: format!("recompute/{}", n.label.op) };
            clones.push(Node { op, label, segment: None });
        }
        // Only internal tensors are redirected: the segment's outputs are stored, and a later
        // segment's backward (which runs before this recompute) reads them.
        for n in backward.iter_mut() {
            n.op.map_operands(|t| *remap.get(&t).filter(|_| produced.contains(&t)).unwrap_or(&t), |t| t);
        }
        inserts.push((at, clones));
    }
    let recomputed = inserts.iter().map(|(_, c)| c.len()).sum();
    // Insert from the back so earlier positions stay valid.
    inserts.sort_by_key(|(at, _)| std::cmp::Reverse(*at));
    for (at, clones) in inserts {
        backward.splice(at..at, clones);
    }
    g.nodes = forward.into_iter().chain(backward).collect();
    recomputed
}
