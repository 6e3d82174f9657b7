//! What `wgdit quantize` reports: tensors, bytes and the quantization error per output type.

use crate::dtype::DType;
use std::fmt;
use std::path::PathBuf;

/// Tensors, bytes and the quantization error of one output type.
#[derive(Clone, Debug, PartialEq)]
pub struct TypeRow {
    pub dtype: DType,
    pub tensors: usize,
    pub bytes: u64,
    /// Tensors converted from another dtype, and Σ(out − src)² and Σ src² over them.
    pub converted: usize,
    pub err2: f64,
    pub ref2: f64,
}

impl TypeRow {
    /// Relative L2 error of the dequantized tensors against their source (None: nothing converted).
    pub fn rel_l2(&self) -> Option<f64> {
        (self.converted > 0).then(|| if self.ref2 > 0.0 { (self.err2 / self.ref2).sqrt() } else { self.err2.sqrt() })
    }
}

/// What a quantization did.
#[derive(Clone, Debug, Default)]
pub struct QuantizeReport {
    pub input_kind: String,
    pub output: PathBuf,
    /// One line per tensor written in another type than asked (block-size fallback).
    pub warnings: Vec<String>,
    pub notes: Vec<String>,
    /// One row per output type, in [`crate::dtype::ALL`] order.
    pub rows: Vec<TypeRow>,
    /// The tensor bytes read and the file bytes written.
    pub input_bytes: u64,
    pub output_bytes: u64,
    pub seconds: f64,
}

impl QuantizeReport {
    pub fn row(&self, d: DType) -> Option<&TypeRow> {
        self.rows.iter().find(|r| r.dtype == d)
    }
    pub(super) fn add(&mut self, d: DType, bytes: u64, stats: Option<Stats>) {
        let i = match self.rows.iter().position(|r| r.dtype == d) {
            Some(i) => i,
            None => {
                let row = TypeRow { dtype: d, tensors: 0, bytes: 0, converted: 0, err2: 0.0, ref2: 0.0 };
                self.rows.push(row);
                self.rows.sort_by(|a, b| a.dtype.code().total_cmp(&b.dtype.code()));
                self.rows.iter().position(|r| r.dtype == d).expect("cannot fail: just pushed")
            }
        };
        let r = &mut self.rows[i];
        r.tensors += 1;
        r.bytes += bytes;
        if let Some(s) = stats {
            r.converted += 1;
            r.err2 += s.err2;
            r.ref2 += s.ref2;
        }
    }
}

impl fmt::Display for QuantizeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "input: {}", self.input_kind)?;
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        for w in &self.warnings {
            writeln!(f, "warning: {w}")?;
        }
        writeln!(f, "{:<8} {:>7} {:>12}  rel-L2 vs source", "type", "tensors", "bytes")?;
        for r in &self.rows {
            let err = match r.rel_l2() {
                None => "copied".to_string(),
                Some(0.0) => format!("exact ({} converted)", r.converted),
                Some(e) => format!("{e:.3e} ({} converted)", r.converted),
            };
            writeln!(f, "{:<8} {:>7} {:>12}  {err}", r.dtype.name(), r.tensors, mb(r.bytes))?;
        }
        let ratio = self.input_bytes as f64 / self.output_bytes.max(1) as f64;
        let size = if ratio >= 1.0 { format!("{ratio:.2}x smaller") } else { format!("{:.2}x larger", 1.0 / ratio) };
        write!(
            f,
            "wrote {}: {} -> {} ({size}) in {:.2} s",
            self.output.display(),
            mb(self.input_bytes),
            mb(self.output_bytes),
            self.seconds
        )
    }
}

fn mb(b: u64) -> String {
    format!("{:.2} MB", b as f64 / 1e6)
}

/// The squared error of a quantized tensor against its source, and the source's squared norm.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(super) struct Stats {
    pub err2: f64,
    pub ref2: f64,
}
