//! One memory-mapped safetensors file: the header parsed and validated, tensors handed out as
//! borrowed byte slices of the map (no copy, no widening).
//!
//! Format (huggingface/safetensors `docs/source/metadata_parsing.mdx`): an 8-byte little-endian
//! header length N, N bytes of JSON `{"__metadata__": {str: str}, name: {"dtype", "shape",
//! "data_offsets": [begin, end]}}`, then the data buffer; offsets are relative to the buffer, and
//! the buffer must be fully indexed without holes or overlaps.
//!
//! A GGUF file (recognised by its magic, whatever its name) opens as the same [`SafeFile`]:
//! [`super::gguf`] validates it with GGUF's own rules and gives the tensor list (dtype = the GGML
//! type name, `Q4_K`; shape = `ne` reversed) and the metadata (every KV rendered as a string).

use super::gguf;
use crate::dtype::DType;
use crate::{Error, Result};
use memmap2::Mmap;
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

/// Headers above this size are refused (the real 9-shard Qwen-Image headers are ~30 KB each).
const MAX_HEADER: u64 = 100 << 20;

/// One tensor's header entry. `dtype` is the safetensors string ("BF16", "F8_E4M3", ...).
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
    /// Byte range inside the data buffer.
    pub begin: usize,
    pub end: usize,
}

/// A tensor borrowed from a memory map: the bytes are little-endian `dtype` values, row-major.
#[derive(Clone, Copy, Debug)]
pub struct TensorView<'a> {
    pub name: &'a str,
    pub dtype: DType,
    pub shape: &'a [usize],
    pub bytes: &'a [u8],
}

impl TensorView<'_> {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// Decodes to f32 on the host (exact for f16 and bf16). For small tensors (LoRA, tests).
    pub fn to_f32(&self) -> Vec<f32> {
        self.dtype.decode(self.bytes)
    }
}

/// Maps a safetensors dtype string, or a GGUF tensor's GGML type name, to a storage dtype.
pub fn dtype_from_str(s: &str) -> Option<DType> {
    Some(match s {
        "F32" => DType::F32,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        "F8_E4M3" => DType::F8E4M3,
        "F8_E5M2" => DType::F8E5M2,
        // GGML block formats: only GGUF files have them (safetensors headers with these dtypes
        // are refused by `parse_entry`).
        "Q8_0" => DType::Q8_0,
        "Q4_0" => DType::Q4_0,
        "Q4_1" => DType::Q4_1,
        "Q5_0" => DType::Q5_0,
        "Q5_1" => DType::Q5_1,
        "Q2_K" => DType::Q2K,
        "Q3_K" => DType::Q3K,
        "Q4_K" => DType::Q4K,
        "Q5_K" => DType::Q5K,
        "Q6_K" => DType::Q6K,
        _ => return None,
    })
}

/// The safetensors dtype string of a storage dtype; block formats have none (GGUF holds them).
pub fn dtype_str(d: DType) -> Option<&'static str> {
    Some(match d {
        DType::F32 => "F32",
        DType::F16 => "F16",
        DType::BF16 => "BF16",
        DType::F8E4M3 => "F8_E4M3",
        DType::F8E5M2 => "F8_E5M2",
        _ => return None,
    })
}

/// Byte size of a safetensors dtype, for validating entries of types we do not decode.
fn dtype_bytes(s: &str) -> Option<usize> {
    Some(match s {
        "F64" | "I64" | "U64" | "C64" => 8,
        "F32" | "I32" | "U32" => 4,
        "F16" | "BF16" | "I16" | "U16" => 2,
        "BOOL" | "U8" | "I8" | "F8_E4M3" | "F8_E5M2" | "F8_E8M0" => 1,
        _ => return None,
    })
}

/// The bytes of a file: a read-only map, or (for [`SafeFile::from_bytes`]) an owned buffer.
enum Storage {
    Map(Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Storage {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Storage::Map(m) => m,
            Storage::Owned(v) => v,
        }
    }
}

/// A safetensors or GGUF file, memory-mapped (or held in memory: [`SafeFile::from_bytes`]).
pub struct SafeFile {
    pub path: PathBuf,
    mmap: Storage,
    data_start: usize,
    /// Tensors in data order (ascending offsets).
    pub tensors: Vec<TensorInfo>,
    /// The `__metadata__` string map (empty when absent); for GGUF, every KV rendered as a string.
    pub metadata: BTreeMap<String, String>,
    /// The typed GGUF header (version, alignment, KVs); None for safetensors.
    pub gguf: Option<gguf::Meta>,
}

impl SafeFile {
    /// Maps `path` and validates its header. Truncated files, bad JSON, unknown dtypes, shapes that
    /// disagree with their byte ranges, holes and overlaps are errors naming the file.
    pub fn open(path: &Path) -> Result<SafeFile> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        if len < 8 {
            return Err(Error::file(path, format!("not a safetensors or GGUF file: only {len} bytes (truncated?)")));
        }
        // SAFETY: the map is read-only; the file must not be truncated by another process while
        // it is mapped (the usual contract of every safetensors loader).
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        SafeFile::new(path, Storage::Map(mmap))
    }

    /// The same validation for a file already in memory (`path` only names it in messages);
    /// nothing is read from or written to disk.
    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<SafeFile> {
        if bytes.len() < 8 {
            let len = bytes.len();
            return Err(Error::file(path, format!("not a safetensors or GGUF file: only {len} bytes (truncated?)")));
        }
        SafeFile::new(path, Storage::Owned(bytes))
    }

    fn new(path: &Path, mmap: Storage) -> Result<SafeFile> {
        let named_gguf = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
        if gguf::is_gguf(&mmap) || named_gguf {
            return SafeFile::new_gguf(path, mmap);
        }
        let len = mmap.len() as u64;
        let n = u64::from_le_bytes(mmap[..8].try_into().expect("cannot fail: 8 bytes"));
        if n > MAX_HEADER || 8 + n > len {
            return Err(Error::file(
                path,
                format!("bad safetensors header: declares {n} header bytes but the file has {len} bytes (truncated, or not a safetensors file)"),
            ));
        }
        let data_start = 8 + n as usize;
        let (tensors, metadata) = parse_header(&mmap[8..data_start]).map_err(|m| Error::file(path, m))?;
        validate_layout(&tensors, mmap.len() - data_start).map_err(|m| Error::file(path, m))?;
        Ok(SafeFile { path: path.to_path_buf(), mmap, data_start, tensors, metadata, gguf: None })
    }

    fn new_gguf(path: &Path, mmap: Storage) -> Result<SafeFile> {
        let p = gguf::parse(&mmap).map_err(|m| Error::file(path, m))?;
        let (tensors, metadata, data_start) = (p.tensors, p.metadata, p.data_start);
        Ok(SafeFile { path: path.to_path_buf(), mmap, data_start, tensors, metadata, gguf: Some(p.meta) })
    }

    /// `general.architecture` of a GGUF file (None for safetensors, or a GGUF file without one).
    pub fn architecture(&self) -> Option<&str> {
        self.gguf.as_ref().and_then(|m| m.architecture())
    }

    /// Size of the data buffer in bytes.
    pub fn data_len(&self) -> usize {
        self.mmap.len() - self.data_start
    }

    /// The raw bytes of a tensor.
    pub fn bytes(&self, t: &TensorInfo) -> &[u8] {
        &self.mmap[self.data_start + t.begin..self.data_start + t.end]
    }

    /// A typed view; dtypes other than F32/F16/BF16/F8_E4M3/F8_E5M2 (and, in GGUF files, the GGML
    /// block formats) are an error naming the tensor.
    pub fn view<'a>(&'a self, t: &'a TensorInfo) -> Result<TensorView<'a>> {
        let dtype = dtype_from_str(&t.dtype).ok_or_else(|| {
            Error::file(
                &self.path,
                format!(
                    "tensor {} has dtype {}; only F32, F16, BF16, F8_E4M3 and F8_E5M2 are supported",
                    t.name, t.dtype
                ),
            )
        })?;
        Ok(TensorView { name: &t.name, dtype, shape: &t.shape, bytes: self.bytes(t) })
    }

    /// Tells the kernel that the pages of a tensor are no longer needed, so that streaming
    /// through a file larger than RAM does not keep it resident.
    pub fn release(&self, t: &TensorInfo) {
        self.release_range(t.begin, t.end);
    }

    /// Drops the mapped pages covering data bytes `begin..end` from this process's resident set.
    /// Rounded outwards to whole pages: a neighbour's page that is dropped too is simply faulted
    /// in again from the page cache if it is still needed.
    pub fn release_range(&self, begin: usize, end: usize) {
        let page = 4096;
        let start = (self.data_start + begin) / page * page;
        let stop = ((self.data_start + end).div_ceil(page) * page).min(self.mmap.len());
        if let (Storage::Map(mmap), true) = (&self.mmap, stop > start) {
            // SAFETY: the map is a read-only, file-backed mapping: MADV_DONTNEED only drops clean
            // pages, which are re-read from the file when touched again; no content changes.
            let _ = unsafe { mmap.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, stop - start) };
        }
    }

    /// Hints sequential access for the whole map (readahead).
    pub fn advise_sequential(&self) {
        if let Storage::Map(mmap) = &self.mmap {
            let _ = mmap.advise(memmap2::Advice::Sequential);
        }
    }
}

pub(crate) type Header = (Vec<TensorInfo>, BTreeMap<String, String>);

/// The JSON header (without its 8-byte length): entries sorted by offset, and `__metadata__`.
pub(crate) fn parse_header(raw: &[u8]) -> std::result::Result<Header, String> {
    let text = std::str::from_utf8(raw)
        .map_err(|_| "bad safetensors header: not UTF-8 (truncated or not a safetensors file)".to_string())?;
    let json: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text.trim_end())
        .map_err(|e| format!("bad safetensors header: {e} (truncated or not a safetensors file)"))?;
    let mut tensors = Vec::with_capacity(json.len());
    let mut metadata = BTreeMap::new();
    for (name, v) in json {
        if name == "__metadata__" {
            let m = v.as_object().ok_or("bad safetensors header: __metadata__ is not an object")?;
            for (k, v) in m {
                let s =
                    v.as_str().ok_or_else(|| format!("bad safetensors header: __metadata__.{k} is not a string"))?;
                metadata.insert(k.clone(), s.to_string());
            }
            continue;
        }
        tensors.push(parse_entry(name, &v)?);
    }
    tensors.sort_by_key(|t| (t.begin, t.end));
    Ok((tensors, metadata))
}

fn parse_entry(name: String, v: &serde_json::Value) -> std::result::Result<TensorInfo, String> {
    let bad = |what: &str| format!("bad safetensors header: tensor {name}: {what}");
    let dtype = v.get("dtype").and_then(|d| d.as_str()).ok_or_else(|| bad("missing dtype"))?.to_string();
    let nums = |key: &str| -> std::result::Result<Vec<usize>, String> {
        let arr = v.get(key).and_then(|a| a.as_array()).ok_or_else(|| bad(&format!("missing {key}")))?;
        arr.iter()
            .map(|x| x.as_u64().map(|u| u as usize).ok_or_else(|| bad(&format!("{key} is not a list of integers"))))
            .collect()
    };
    let shape = nums("shape")?;
    let offs = nums("data_offsets")?;
    if offs.len() != 2 || offs[0] > offs[1] {
        return Err(bad("data_offsets must be [begin, end] with begin <= end"));
    }
    let size = dtype_bytes(&dtype).ok_or_else(|| bad(&format!("unknown dtype {dtype}")))?;
    let numel = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(|| bad("shape overflows"))?;
    let need = numel.checked_mul(size);
    if need != Some(offs[1] - offs[0]) {
        // the byte count itself can overflow (fuzz target safetensors_header)
        let need = need.map_or_else(|| format!("more than {}", usize::MAX), |n| n.to_string());
        return Err(bad(&format!(
            "shape {shape:?} of {dtype} needs {need} bytes but data_offsets span {}",
            offs[1] - offs[0]
        )));
    }
    Ok(TensorInfo { name, dtype, shape, begin: offs[0], end: offs[1] })
}

/// The buffer must be indexed contiguously from 0 to its end (no holes, no overlaps).
pub(crate) fn validate_layout(tensors: &[TensorInfo], data_len: usize) -> std::result::Result<(), String> {
    let mut pos = 0;
    for t in tensors {
        if t.begin != pos {
            return Err(format!("bad safetensors header: tensor {} starts at byte {} but the previous tensor ends at {pos} (hole or overlap)", t.name, t.begin));
        }
        pos = t.end;
    }
    if pos > data_len {
        let last = &tensors[tensors.len() - 1].name;
        return Err(format!(
            "file is truncated: tensor {last} ends at data byte {pos} but the file holds only {data_len} data bytes"
        ));
    }
    if pos < data_len {
        return Err(format!("bad safetensors file: {} trailing bytes after the last tensor", data_len - pos));
    }
    Ok(())
}
