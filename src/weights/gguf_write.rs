//! Streaming GGUF (version 3) writer with an atomic output.
//!
//! The header, the KVs and every tensor info are written first (a tensor's size follows from its
//! dtype and shape), then the tensors' bytes one by one in the same order, each padded with zeros
//! to the alignment (32, gguf-py's default; no `general.alignment` key is written), as gguf-py's
//! `GGUFWriter` lays them out. The caller holds one tensor in memory at a time. Everything goes to
//! `<name>.tmp-<pid>` ([`TempOutput`]) and is renamed onto the destination by
//! [`GgufWriter::finish`]: an interrupted run leaves the destination as it was (its temporary is
//! removed on drop, or by the next run if the process was killed).

use super::gguf::{Value, DEFAULT_ALIGNMENT, MAGIC, MAX_DIMS};
use super::writer::TempOutput;
use crate::dtype::DType;
use crate::{Error, Result};
use std::collections::HashSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

/// One tensor of a GGUF output: wgdit's row-major shape (written as `ne` reversed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GgufTensor {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
}

impl GgufTensor {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn nbytes(&self) -> usize {
        self.dtype.bytes(self.numel())
    }
    /// GGUF's `ne`: the shape reversed; a scalar (shape `[]`) is written as `[1]`.
    fn ne(&self) -> Vec<u64> {
        if self.shape.is_empty() {
            return vec![1];
        }
        self.shape.iter().rev().map(|&d| d as u64).collect()
    }
    /// Refuses what a GGUF file cannot hold (callers plan dtypes so that this never fires on a
    /// model; the message names the tensor anyway).
    fn check(&self) -> Result<()> {
        let bad = |what: String| Err(Error::input(format!("cannot write tensor {} to GGUF: {what}", self.name)));
        if self.dtype.ggml_type().is_none() {
            return bad(format!("{} has no GGML type", self.dtype.name()));
        }
        if self.shape.len() > MAX_DIMS {
            return bad(format!("shape {:?} has more than {MAX_DIMS} dimensions", self.shape));
        }
        if self.shape.contains(&0) {
            return bad(format!("shape {:?} has a dimension of 0", self.shape));
        }
        let row = self.shape.last().copied().unwrap_or(1);
        if row % self.dtype.block_elems() != 0 {
            return bad(format!(
                "rows of {row} elements are not whole {} blocks of {}",
                self.dtype.name(),
                self.dtype.block_elems()
            ));
        }
        Ok(())
    }
}

fn pad(n: u64) -> u64 {
    n.next_multiple_of(DEFAULT_ALIGNMENT as u64)
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// A value without its type tag (arrays carry their element type and count).
fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(*x as u8),
        Value::String(s) => put_str(out, s),
        Value::Array(t, items) => {
            debug_assert!(items.iter().all(|i| i.value_type() == *t), "gguf_write: mixed array");
            out.extend_from_slice(&(*t as u32).to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            items.iter().for_each(|i| put_value(out, i));
        }
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
    }
}

/// Everything before the data section, padded to the alignment.
pub fn header_bytes(kvs: &[(String, Value)], tensors: &[GgufTensor]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&(kvs.len() as u64).to_le_bytes());
    for (k, v) in kvs {
        put_str(&mut out, k);
        out.extend_from_slice(&(v.value_type() as u32).to_le_bytes());
        put_value(&mut out, v);
    }
    let mut offset = 0u64;
    for t in tensors {
        put_str(&mut out, &t.name);
        let ne = t.ne();
        out.extend_from_slice(&(ne.len() as u32).to_le_bytes());
        ne.iter().for_each(|d| out.extend_from_slice(&d.to_le_bytes()));
        let id = t.dtype.ggml_type().expect("cannot fail: checked by GgufWriter::create");
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
        offset = pad(offset + t.nbytes() as u64);
    }
    out.resize(pad(out.len() as u64) as usize, 0);
    out
}

/// The size of the whole file `header_bytes` + the padded tensors make.
pub fn file_size(kvs: &[(String, Value)], tensors: &[GgufTensor]) -> u64 {
    header_bytes(kvs, tensors).len() as u64 + tensors.iter().map(|t| pad(t.nbytes() as u64)).sum::<u64>()
}

/// A GGUF file being written: tensors go in with [`GgufWriter::write_tensor`], in the order given
/// to [`GgufWriter::create`].
pub struct GgufWriter {
    out: TempOutput,
    w: BufWriter<File>,
    tensors: Vec<GgufTensor>,
    next: usize,
    written: u64,
}

impl GgufWriter {
    /// Checks the tensors, creates the temporary file and writes the header.
    pub fn create(dest: &Path, kvs: &[(String, Value)], tensors: Vec<GgufTensor>) -> Result<GgufWriter> {
        let mut names = HashSet::new();
        for t in &tensors {
            t.check()?;
            if !names.insert(t.name.as_str()) {
                return Err(Error::input(format!(
                    "cannot write GGUF {}: tensor {} appears twice",
                    dest.display(),
                    t.name
                )));
            }
        }
        let out = TempOutput::new(dest, false)?;
        let file = File::create(&out.tmp).map_err(|e| Error::io(&out.tmp, e))?;
        let mut w = BufWriter::with_capacity(8 << 20, file);
        let header = header_bytes(kvs, &tensors);
        w.write_all(&header).map_err(|e| Error::io(&out.tmp, e))?;
        Ok(GgufWriter { out, w, tensors, next: 0, written: header.len() as u64 })
    }

    /// The tensor the next [`GgufWriter::write_tensor`] expects.
    pub fn next_tensor(&self) -> Option<&GgufTensor> {
        self.tensors.get(self.next)
    }

    /// Writes the next tensor's bytes (exactly its size) and the padding after them.
    pub fn write_tensor(&mut self, bytes: &[u8]) -> Result<()> {
        let t = self.tensors.get(self.next).expect("gguf_write: more tensors written than declared");
        assert_eq!(bytes.len(), t.nbytes(), "gguf_write: {} is {} bytes, not {}", t.name, bytes.len(), t.nbytes());
        let padded = pad(bytes.len() as u64);
        let zeros = [0u8; DEFAULT_ALIGNMENT];
        let io = |e| Error::io(&self.out.tmp, e);
        self.w.write_all(bytes).map_err(io)?;
        self.w.write_all(&zeros[..(padded - bytes.len() as u64) as usize]).map_err(io)?;
        self.written += padded;
        self.next += 1;
        Ok(())
    }

    /// Flushes, syncs and renames the file onto its destination; returns the bytes written.
    pub fn finish(self) -> Result<u64> {
        assert_eq!(
            self.next,
            self.tensors.len(),
            "gguf_write: {} of {} tensors written",
            self.next,
            self.tensors.len()
        );
        let io = |e| Error::io(&self.out.tmp, e);
        let file = self.w.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)?;
        drop(file);
        self.out.commit()?;
        Ok(self.written)
    }
}
