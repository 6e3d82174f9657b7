//! GGUF files (ggml's `docs/gguf.md`, version 3; version 2 is the same layout for little-endian
//! files): the header parsed and validated into the [`TensorInfo`]s and string metadata that
//! [`super::SafeFile`] hands out for safetensors, so that checkpoints, views and the loaders need
//! no GGUF-specific code.
//!
//! Layout, all little-endian: magic `GGUF`, version u32, tensor_count u64, kv_count u64; the KVs
//! (key string, value type u32, value); the tensor infos (name string, n_dims u32 ≤ 4, ne[n_dims]
//! u64, ggml type u32, offset u64); padding to `general.alignment` (default 32); the data section.
//! A string is a u64 length and that many UTF-8 bytes; an array is an element type u32, a count
//! u64 and the elements (arrays nest). Offsets are relative to the data section and multiples of
//! the alignment. `ne[0]` is the innermost (contiguous) dimension: a wgdit (row-major) shape is
//! `ne` reversed, so a `[N, K]` weight has `ne = [K, N]`, and each of its rows is whole blocks.
//!
//! Every count, length and offset is checked against the file before anything is allocated;
//! errors name the key or tensor (docs/reliability.md). Tensors may sit in any order with holes
//! between them (padding); overlaps are refused. ComfyUI-GGUF's `comfy.gguf.orig_shape.<name>`
//! (an integer array, the shape before a tensor was flattened to rows of 256 for quantizing) gives
//! that tensor's shape; its blocks then run over the tensor flattened in row-major order.

use super::safetensors::TensorInfo;
use crate::dtype::DType;
use std::collections::{BTreeMap, HashSet};

type Res<T> = std::result::Result<T, String>;

pub const MAGIC: &[u8; 4] = b"GGUF";
/// The data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: usize = 32;
/// ComfyUI-GGUF's key prefix for the original shape of a reshaped tensor.
pub const ORIG_SHAPE_PREFIX: &str = "comfy.gguf.orig_shape.";
/// The most dimensions a tensor may have (`GGML_MAX_DIMS`).
pub const MAX_DIMS: usize = 4;
/// Arrays nest at most this deep (a deeper one would be a stack overflow, not a model file).
const MAX_DEPTH: u32 = 8;
/// Arrays longer than this are rendered in [`super::SafeFile::metadata`] as a count and a type
/// (a 150 000-token vocabulary is no use as one string); [`Meta::kvs`] keeps every element.
const MAX_RENDERED: usize = 4096;

/// The GGML types wgdit reads, for messages.
pub const READ_TYPES: &str = "F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K and Q6_K";

/// A metadata value type (`enum gguf_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl ValueType {
    fn from_u32(id: u32) -> Option<ValueType> {
        use ValueType::*;
        [U8, I8, U16, I16, U32, I32, F32, Bool, String, Array, U64, I64, F64].get(id as usize).copied()
    }
    /// The fewest bytes a value of this type takes (an empty string: its length; an empty array:
    /// its type and count): what a count is checked against before anything is allocated.
    fn min_bytes(self) -> usize {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | String => 8,
            Array => 12,
        }
    }
    pub fn name(self) -> &'static str {
        use ValueType::*;
        match self {
            U8 => "u8",
            I8 => "i8",
            U16 => "u16",
            I16 => "i16",
            U32 => "u32",
            I32 => "i32",
            F32 => "f32",
            Bool => "bool",
            String => "string",
            Array => "array",
            U64 => "u64",
            I64 => "i64",
            F64 => "f64",
        }
    }
}

/// A metadata value. Arrays keep their element type (an empty array has one too).
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(ValueType, Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::String(_) => ValueType::String,
            Value::Array(..) => ValueType::Array,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
        }
    }
    /// An integer value of any width, widened (None for floats, bools, strings, arrays).
    pub fn as_i128(&self) -> Option<i128> {
        Some(match *self {
            Value::U8(v) => v.into(),
            Value::I8(v) => v.into(),
            Value::U16(v) => v.into(),
            Value::I16(v) => v.into(),
            Value::U32(v) => v.into(),
            Value::I32(v) => v.into(),
            Value::U64(v) => v.into(),
            Value::I64(v) => v.into(),
            _ => return None,
        })
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
    /// The value as one string: strings as they are at the top level, numbers in decimal, arrays
    /// as `[1, 2]` / `["a", "b"]` (strings inside arrays JSON-quoted), long arrays as
    /// `[151936 × string]`.
    pub fn render(&self) -> String {
        match self {
            Value::String(s) => s.clone(),
            v => {
                let mut out = String::new();
                v.render_into(&mut out);
                out
            }
        }
    }
    fn render_into(&self, out: &mut String) {
        use std::fmt::Write;
        // cannot fail: writing to a String
        let _ = match self {
            Value::U8(v) => write!(out, "{v}"),
            Value::I8(v) => write!(out, "{v}"),
            Value::U16(v) => write!(out, "{v}"),
            Value::I16(v) => write!(out, "{v}"),
            Value::U32(v) => write!(out, "{v}"),
            Value::I32(v) => write!(out, "{v}"),
            Value::U64(v) => write!(out, "{v}"),
            Value::I64(v) => write!(out, "{v}"),
            Value::F32(v) => write!(out, "{v}"),
            Value::F64(v) => write!(out, "{v}"),
            Value::Bool(v) => write!(out, "{v}"),
            Value::String(s) => write!(out, "{}", serde_json::Value::from(s.as_str())),
            Value::Array(t, items) if items.len() > MAX_RENDERED => write!(out, "[{} × {}]", items.len(), t.name()),
            Value::Array(_, items) => {
                out.push('[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    v.render_into(out);
                }
                out.push(']');
                Ok(())
            }
        };
    }
}

/// What a GGUF file says beyond its tensors.
#[derive(Clone, Debug, PartialEq)]
pub struct Meta {
    pub version: u32,
    pub alignment: usize,
    /// Every KV in file order, typed.
    pub kvs: Vec<(String, Value)>,
}

impl Meta {
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.kvs.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
    /// `general.architecture` (city96's Qwen-Image files: `qwen_image`; absent in sd.cpp-style files).
    pub fn architecture(&self) -> Option<&str> {
        self.get("general.architecture").and_then(Value::as_str)
    }
}

/// A parsed and validated GGUF header.
pub(crate) struct Parsed {
    pub meta: Meta,
    /// Byte offset of the data section in the file.
    pub data_start: usize,
    /// Tensors in data order, offsets relative to the data section, dtype = the GGML type name.
    pub tensors: Vec<TensorInfo>,
    /// The KVs rendered as strings ([`Value::render`]).
    pub metadata: BTreeMap<String, String>,
}

/// Whether `bytes` begin with the GGUF magic.
pub fn is_gguf(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

/// Parses and validates a whole GGUF file held in `bytes` (a map or a buffer).
pub(crate) fn parse(bytes: &[u8]) -> Res<Parsed> {
    let mut c = Cursor { b: bytes, pos: 0 };
    let magic = c.take(4, || "the magic".into())?;
    if magic != MAGIC {
        return Err(format!("not a GGUF file: it starts with {:?}, not \"GGUF\"", String::from_utf8_lossy(magic)));
    }
    let version = check_version(c.u32(|| "the version".into())?)?;
    let tensor_count = c.u64(|| "the tensor count".into())?;
    let kv_count = c.u64(|| "the metadata count".into())?;
    check_counts(tensor_count, kv_count, c.remaining())?;
    let kvs = read_kvs(&mut c, kv_count as usize)?;
    let alignment = alignment(&kvs)?;
    let raw = (0..tensor_count as usize).map(|i| read_tensor_info(&mut c, i)).collect::<Res<Vec<_>>>()?;
    let header_end = c.pos;
    let data_start = header_end
        .checked_next_multiple_of(alignment)
        .ok_or_else(|| format!("bad GGUF file: alignment {alignment} overflows"))?;
    if data_start > bytes.len() && !raw.is_empty() {
        return Err(format!(
            "GGUF file is truncated: its data section would start at byte {data_start} but the file has {} bytes",
            bytes.len()
        ));
    }
    let data_start = data_start.min(bytes.len());
    let meta = Meta { version, alignment, kvs };
    let tensors = tensor_infos(raw, &meta, bytes.len() - data_start)?;
    let metadata = meta.kvs.iter().map(|(k, v)| (k.clone(), v.render())).collect();
    Ok(Parsed { meta, data_start, tensors, metadata })
}

fn check_version(v: u32) -> Res<u32> {
    match v {
        2 | 3 => Ok(v),
        1 => Err("GGUF version 1 is not supported (it has 32-bit counts and lengths; wgdit reads versions 2 and 3): \
             convert the model again with a current gguf-py or llama.cpp"
            .into()),
        v if v & 0xffff == 0 => Err(format!(
            "GGUF version {v:#x}: this looks like a big-endian GGUF file, which wgdit does not read (it reads little-endian versions 2 and 3)"
        )),
        v => Err(format!("GGUF version {v} is not supported (wgdit reads versions 2 and 3)")),
    }
}

/// Refuses counts that cannot fit in the rest of the file (a KV takes at least 13 bytes, a tensor
/// info 24) before anything is allocated for them.
fn check_counts(tensors: u64, kvs: u64, left: usize) -> Res<()> {
    let need = (tensors as u128) * 24 + (kvs as u128) * 13;
    if need > left as u128 {
        return Err(format!(
            "bad GGUF header: it declares {tensors} tensor(s) and {kvs} metadata entries, which need at least {need} bytes, \
             but only {left} bytes follow the header (lying counts, or a truncated file)"
        ));
    }
    Ok(())
}

fn read_kvs(c: &mut Cursor, n: usize) -> Res<Vec<(String, Value)>> {
    let mut kvs = Vec::with_capacity(n);
    let mut seen = HashSet::with_capacity(n);
    for i in 0..n {
        let key = c.string(|| format!("the key of metadata entry {i}"))?.to_string();
        let t = c.u32(|| format!("the type of metadata key {key}"))?;
        let v = read_value(c, t, &key, 0)?;
        if !seen.insert(key.clone()) {
            return Err(format!("bad GGUF metadata: key {key} appears twice"));
        }
        kvs.push((key, v));
    }
    Ok(kvs)
}

fn read_value(c: &mut Cursor, t: u32, key: &str, depth: u32) -> Res<Value> {
    let t = ValueType::from_u32(t).ok_or_else(|| format!("bad GGUF metadata: key {key} has unknown value type {t}"))?;
    let what = || format!("the value of metadata key {key}");
    Ok(match t {
        ValueType::U8 => Value::U8(c.take(1, what)?[0]),
        ValueType::I8 => Value::I8(c.take(1, what)?[0] as i8),
        ValueType::U16 => Value::U16(u16::from_le_bytes(c.array(what)?)),
        ValueType::I16 => Value::I16(i16::from_le_bytes(c.array(what)?)),
        ValueType::U32 => Value::U32(u32::from_le_bytes(c.array(what)?)),
        ValueType::I32 => Value::I32(i32::from_le_bytes(c.array(what)?)),
        ValueType::F32 => Value::F32(f32::from_le_bytes(c.array(what)?)),
        ValueType::U64 => Value::U64(u64::from_le_bytes(c.array(what)?)),
        ValueType::I64 => Value::I64(i64::from_le_bytes(c.array(what)?)),
        ValueType::F64 => Value::F64(f64::from_le_bytes(c.array(what)?)),
        ValueType::Bool => match c.take(1, what)?[0] {
            0 => Value::Bool(false),
            1 => Value::Bool(true),
            b => return Err(format!("bad GGUF metadata: key {key} is a bool stored as {b} (must be 0 or 1)")),
        },
        ValueType::String => Value::String(c.string(what)?.to_string()),
        ValueType::Array => read_array(c, key, depth)?,
    })
}

fn read_array(c: &mut Cursor, key: &str, depth: u32) -> Res<Value> {
    if depth >= MAX_DEPTH {
        return Err(format!("bad GGUF metadata: key {key} nests arrays more than {MAX_DEPTH} deep"));
    }
    let t = c.u32(|| format!("the element type of metadata key {key}"))?;
    let n = c.u64(|| format!("the length of metadata key {key}"))?;
    let et = ValueType::from_u32(t)
        .ok_or_else(|| format!("bad GGUF metadata: key {key} is an array of unknown value type {t}"))?;
    let need = (n as u128) * et.min_bytes() as u128;
    if need > c.remaining() as u128 {
        return Err(format!(
            "bad GGUF metadata: key {key} declares an array of {n} {} values, which needs at least {need} bytes, \
             but only {} bytes are left in the file",
            et.name(),
            c.remaining()
        ));
    }
    let items = (0..n as usize).map(|_| read_value(c, t, key, depth + 1)).collect::<Res<Vec<_>>>()?;
    Ok(Value::Array(et, items))
}

/// `general.alignment`: a u32 power of two (gguf-py refuses any other type too).
fn alignment(kvs: &[(String, Value)]) -> Res<usize> {
    match kvs.iter().find(|(k, _)| k == "general.alignment").map(|(_, v)| v) {
        None => Ok(DEFAULT_ALIGNMENT),
        Some(Value::U32(a)) if a.is_power_of_two() => Ok(*a as usize),
        Some(Value::U32(a)) => Err(format!("bad GGUF metadata: general.alignment is {a}; it must be a power of two")),
        Some(v) => {
            Err(format!("bad GGUF metadata: general.alignment is a {}; it must be a u32", v.value_type().name()))
        }
    }
}

/// One tensor info as stored.
struct RawInfo {
    name: String,
    ne: Vec<u64>,
    ggml_type: u32,
    offset: u64,
}

fn read_tensor_info(c: &mut Cursor, i: usize) -> Res<RawInfo> {
    let name = c.string(|| format!("the name of tensor info {i}"))?.to_string();
    let n_dims = c.u32(|| format!("n_dims of tensor {name}"))?;
    if n_dims as usize > MAX_DIMS {
        return Err(format!("bad GGUF tensor info: tensor {name} has n_dims {n_dims}; GGUF allows at most {MAX_DIMS}"));
    }
    let ne = (0..n_dims).map(|_| c.u64(|| format!("the shape of tensor {name}"))).collect::<Res<Vec<_>>>()?;
    let ggml_type = c.u32(|| format!("the type of tensor {name}"))?;
    let offset = c.u64(|| format!("the offset of tensor {name}"))?;
    Ok(RawInfo { name, ne, ggml_type, offset })
}

/// Validates each tensor info against the data section and turns it into a [`TensorInfo`]; sorted
/// by offset, overlaps refused.
fn tensor_infos(raw: Vec<RawInfo>, meta: &Meta, data_len: usize) -> Res<Vec<TensorInfo>> {
    let mut seen = HashSet::with_capacity(raw.len());
    let mut out = Vec::with_capacity(raw.len());
    for r in raw {
        if !seen.insert(r.name.clone()) {
            return Err(format!("bad GGUF file: tensor {} appears twice", r.name));
        }
        out.push(tensor_info(r, meta, data_len)?);
    }
    out.sort_by_key(|t| (t.begin, t.end));
    for w in out.windows(2) {
        if w[1].begin < w[0].end {
            return Err(format!(
                "bad GGUF file: tensors {} (data bytes {}..{}) and {} (from byte {}) overlap",
                w[0].name, w[0].begin, w[0].end, w[1].name, w[1].begin
            ));
        }
    }
    Ok(out)
}

fn tensor_info(r: RawInfo, meta: &Meta, data_len: usize) -> Res<TensorInfo> {
    let name = &r.name;
    let dtype = DType::from_ggml_type(r.ggml_type).ok_or_else(|| {
        format!(
            "tensor {name} has GGML type {} ({}), which wgdit does not read; wgdit reads {READ_TYPES}",
            DType::ggml_type_name(r.ggml_type),
            r.ggml_type
        )
    })?;
    let type_name = DType::ggml_type_name(r.ggml_type);
    if let Some(i) = r.ne.iter().position(|&d| d == 0) {
        return Err(format!("bad GGUF tensor info: tensor {name} has a dimension of 0 (ne[{i}] of {:?})", r.ne));
    }
    let numel =
        r.ne.iter().try_fold(1usize, |a, &d| usize::try_from(d).ok().and_then(|d| a.checked_mul(d))).ok_or_else(
            || format!("bad GGUF tensor info: tensor {name}: the element count of ne {:?} overflows", r.ne),
        )?;
    let row = r.ne.first().map_or(1, |&d| d as usize);
    if row % dtype.block_elems() != 0 {
        return Err(format!(
            "bad GGUF tensor info: tensor {name} ({type_name}, ne {:?}) has rows of {row} elements, not whole blocks of {}",
            r.ne,
            dtype.block_elems()
        ));
    }
    let bytes = (numel / dtype.block_elems())
        .checked_mul(dtype.block_bytes())
        .ok_or_else(|| format!("bad GGUF tensor info: tensor {name}: its byte count overflows"))?;
    let begin = usize::try_from(r.offset).unwrap_or(usize::MAX);
    if begin % meta.alignment != 0 {
        return Err(format!(
            "bad GGUF tensor info: tensor {name} starts at data offset {} which is not a multiple of the alignment {}",
            r.offset, meta.alignment
        ));
    }
    let end = begin.checked_add(bytes).filter(|&e| e <= data_len).ok_or_else(|| {
        format!(
            "GGUF file is truncated or its offsets are wrong: tensor {name} ({type_name}, {bytes} bytes) spans data bytes \
             {}..{} but the data section holds only {data_len} bytes",
            r.offset,
            r.offset as u128 + bytes as u128
        )
    })?;
    let shape = match meta.get(&format!("{ORIG_SHAPE_PREFIX}{name}")) {
        Some(v) => orig_shape(name, v, numel)?,
        None => r.ne.iter().rev().map(|&d| d as usize).collect(),
    };
    Ok(TensorInfo { name: r.name.clone(), dtype: type_name, shape, begin, end })
}

/// The shape a `comfy.gguf.orig_shape.<name>` array gives, checked against the element count.
fn orig_shape(name: &str, v: &Value, numel: usize) -> Res<Vec<usize>> {
    let key = format!("{ORIG_SHAPE_PREFIX}{name}");
    let Value::Array(_, items) = v else {
        return Err(format!("bad GGUF metadata: {key} is a {}, not an array of integers", v.value_type().name()));
    };
    let shape = items
        .iter()
        .map(|d| d.as_i128().filter(|&d| d >= 1 && d <= usize::MAX as i128).map(|d| d as usize))
        .collect::<Option<Vec<_>>>()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| format!("bad GGUF metadata: {key} must be a non-empty array of positive integers"))?;
    let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    if n != Some(numel) {
        return Err(format!(
            "bad GGUF metadata: {key} is {shape:?} but the tensor holds {numel} elements (the shapes must hold as many)"
        ));
    }
    Ok(shape)
}

/// A bounds-checked little-endian reader over the file.
struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.b.len() - self.pos
    }
    /// `n` bytes, or an error saying what was being read and where the file ends.
    fn take(&mut self, n: usize, what: impl FnOnce() -> String) -> Res<&'a [u8]> {
        if n > self.remaining() {
            return Err(format!(
                "GGUF file is truncated: {} needs {n} bytes at byte {} but the file has {} bytes",
                what(),
                self.pos,
                self.b.len()
            ));
        }
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn array<const N: usize>(&mut self, what: impl FnOnce() -> String) -> Res<[u8; N]> {
        Ok(self.take(N, what)?.try_into().expect("cannot fail: took N bytes"))
    }
    fn u32(&mut self, what: impl FnOnce() -> String) -> Res<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: impl FnOnce() -> String) -> Res<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    /// A u64 length and that many UTF-8 bytes; the length is checked before it is used.
    fn string(&mut self, what: impl Fn() -> String) -> Res<&'a str> {
        let n = self.u64(&what)?;
        if n > self.remaining() as u64 {
            return Err(format!(
                "GGUF file is truncated or lies: {} is a string of {n} bytes at byte {} but only {} bytes are left",
                what(),
                self.pos,
                self.remaining()
            ));
        }
        let s = self.take(n as usize, &what)?;
        std::str::from_utf8(s).map_err(|_| format!("bad GGUF file: {} is not UTF-8", what()))
    }
}
