//! Dispatch accounting: counts per op label and per layer, and GPU time per label when the
//! adapter has timestamp queries.

use crate::graph::Label;
use std::collections::BTreeMap;

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct DispatchReport {
    pub total: usize,
    /// Dispatches per op label, over the whole plan.
    pub by_op: BTreeMap<String, usize>,
    /// Dispatches per layer ("-" = outside the block stack).
    pub by_layer: BTreeMap<String, usize>,
    /// GPU nanoseconds per op label (empty without TIMESTAMP_QUERY or when not timed).
    pub gpu_ns_by_op: BTreeMap<String, f64>,
}

fn layer_key(l: Option<usize>) -> String {
    l.map_or("-".to_string(), |i| format!("{i:03}"))
}

impl DispatchReport {
    /// Counts from the per-dispatch labels (and optional per-dispatch GPU times).
    pub fn new(labels: &[Label], times_ns: Option<&[f64]>) -> DispatchReport {
        let mut r = DispatchReport { total: labels.len(), ..Default::default() };
        for (i, l) in labels.iter().enumerate() {
            *r.by_op.entry(l.op.clone()).or_default() += 1;
            *r.by_layer.entry(layer_key(l.layer)).or_default() += 1;
            if let Some(t) = times_ns {
                *r.gpu_ns_by_op.entry(l.op.clone()).or_default() += t[i];
            }
        }
        r
    }

    /// A plain-text table: one row per op label, with GPU time where measured.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let timed = !self.gpu_ns_by_op.is_empty();
        s.push_str(&format!("{:<28} {:>10}{}\n", "op", "dispatches", if timed { "   gpu time" } else { "" }));
        for (op, n) in &self.by_op {
            let t = self.gpu_ns_by_op.get(op).map_or(String::new(), |ns| format!(" {:>10.3} ms", ns / 1e6));
            s.push_str(&format!("{op:<28} {n:>10}{t}\n"));
        }
        let total_t = timed.then(|| format!(" {:>10.3} ms", self.gpu_ns_by_op.values().sum::<f64>() / 1e6));
        s.push_str(&format!("{:<28} {:>10}{}\n", "total", self.total, total_t.unwrap_or_default()));
        s
    }
}
