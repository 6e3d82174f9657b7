//! Streaming safetensors writer and atomic outputs.
//!
//! The header is computed from shapes and dtypes alone, written first, then each tensor is streamed
//! from its sources (memory-mapped byte ranges or small host buffers) through a buffered writer,
//! converting dtype chunk by chunk. At most one chunk of one tensor is held in host memory, and
//! the pages of each mapped source are released after use.

use super::safetensors::{dtype_str, SafeFile, TensorInfo};
use crate::dtype::DType;
use crate::{Error, Result};
use indicatif::ProgressBar;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// Elements converted (and mapped pages released) per window: 4 MiB of f32, 2 MiB of bf16.
const CHUNK: usize = 1 << 20;

/// A byte range of one mapped tensor.
#[derive(Clone, Copy)]
pub struct Piece<'a> {
    pub file: &'a SafeFile,
    pub info: &'a TensorInfo,
    /// Byte range inside the tensor.
    pub begin: usize,
    pub end: usize,
}

impl<'a> Piece<'a> {
    pub fn whole(file: &'a SafeFile, info: &'a TensorInfo) -> Piece<'a> {
        Piece { file, info, begin: 0, end: info.end - info.begin }
    }
    fn bytes(&self) -> &'a [u8] {
        &self.file.bytes(self.info)[self.begin..self.end]
    }
}

/// Where an output tensor's bytes come from.
pub enum Source<'a> {
    /// Mapped pieces of one source dtype, concatenated (a copy is one piece, a q/k/v merge three,
    /// a split one sub-range).
    Mapped { dtype: DType, pieces: Vec<Piece<'a>> },
    /// As `Mapped`, with every value divided by `scale` before it is encoded: ComfyUI's scaled
    /// fp8, where the file holds `w / scale` and `<module>.scale_weight` holds `scale`.
    Scaled { dtype: DType, pieces: Vec<Piece<'a>>, scale: f32 },
    /// Host values (LoRA factors), encoded to the output dtype on write.
    Host(Cow<'a, [f32]>),
}

/// One tensor of an output file.
pub struct OutTensor<'a> {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub source: Source<'a>,
}

impl OutTensor<'_> {
    pub fn nbytes(&self) -> u64 {
        self.dtype.bytes(self.shape.iter().product::<usize>()) as u64
    }
}

/// The safetensors header for `tensors` written in order, padded with spaces to 8 bytes.
pub fn header_bytes(tensors: &[OutTensor], metadata: &BTreeMap<String, String>) -> Vec<u8> {
    let mut s = String::from("{");
    if !metadata.is_empty() {
        s += &format!("\"__metadata__\":{}", serde_json::to_string(metadata).expect("cannot fail: string map"));
    }
    let mut off = 0u64;
    for t in tensors {
        let end = off + t.nbytes();
        if s.len() > 1 {
            s.push(',');
        }
        let name = serde_json::to_string(&t.name).expect("cannot fail: string");
        s += &format!(
            "{name}:{{\"dtype\":\"{}\",\"shape\":{:?},\"data_offsets\":[{off},{end}]}}",
            dtype_str(t.dtype).expect("cannot fail: callers refuse block formats for safetensors outputs"),
            t.shape
        );
        off = end;
    }
    s.push('}');
    while s.len() % 8 != 0 {
        s.push(' ');
    }
    let mut out = (s.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(s.as_bytes());
    out
}

/// Writes one safetensors file; returns the bytes written. `progress` advances by tensor bytes.
pub fn write_safetensors(
    path: &Path,
    tensors: &[OutTensor],
    metadata: &BTreeMap<String, String>,
    progress: &ProgressBar,
) -> Result<u64> {
    let file = File::create(path).map_err(|e| Error::io(path, e))?;
    let mut w = BufWriter::with_capacity(8 << 20, file);
    let io = |e| Error::io(path, e);
    let header = header_bytes(tensors, metadata);
    w.write_all(&header).map_err(io)?;
    let mut total = header.len() as u64;
    let mut buf = Vec::new();
    for t in tensors {
        let n = write_tensor(&mut w, t, &mut buf).map_err(io)?;
        assert_eq!(n, t.nbytes(), "writer: {} wrote {n} bytes for a {}-byte tensor", t.name, t.nbytes());
        total += n;
        progress.inc(n);
    }
    let file = w.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    Ok(total)
}

fn write_tensor(w: &mut impl Write, t: &OutTensor, buf: &mut Vec<u8>) -> std::io::Result<u64> {
    let mut n = 0u64;
    match &t.source {
        Source::Host(v) => {
            for c in v.chunks(CHUNK) {
                buf.clear();
                encode_into(c, t.dtype, buf);
                w.write_all(buf)?;
                n += buf.len() as u64;
            }
        }
        Source::Mapped { dtype, pieces } => n = write_pieces(w, pieces, *dtype, t.dtype, None, buf)?,
        Source::Scaled { dtype, pieces, scale } => n = write_pieces(w, pieces, *dtype, t.dtype, Some(*scale), buf)?,
    }
    Ok(n)
}

/// Window by window, releasing each window's pages once written, so that resident memory stays
/// at about one window whatever the tensor size.
fn write_pieces(
    w: &mut impl Write,
    pieces: &[Piece],
    from: DType,
    to: DType,
    scale: Option<f32>,
    buf: &mut Vec<u8>,
) -> std::io::Result<u64> {
    let window = from.bytes(CHUNK);
    let mut n = 0;
    for p in pieces {
        let mut at = p.begin;
        while at < p.end {
            let sub = Piece { begin: at, end: (at + window).min(p.end), ..*p };
            n += write_converted(w, sub.bytes(), from, to, scale, buf)?;
            release(&sub);
            at = sub.end;
        }
    }
    Ok(n)
}

/// Copies `src` (little-endian `from` values) as `to` values: raw when the dtypes agree (and no
/// scale), else through f32 chunk by chunk (exact widening; narrowing rounds to nearest even).
fn write_converted(
    w: &mut impl Write,
    src: &[u8],
    from: DType,
    to: DType,
    scale: Option<f32>,
    buf: &mut Vec<u8>,
) -> std::io::Result<u64> {
    if from == to && scale.is_none() {
        w.write_all(src)?;
        return Ok(src.len() as u64);
    }
    let mut n = 0;
    for c in src.chunks(from.bytes(CHUNK)) {
        buf.clear();
        let mut v = from.decode(c);
        if let Some(s) = scale {
            v.iter_mut().for_each(|x| *x /= s);
        }
        encode_into(&v, to, buf);
        w.write_all(buf)?;
        n += buf.len() as u64;
    }
    Ok(n)
}

fn encode_into(v: &[f32], to: DType, buf: &mut Vec<u8>) {
    buf.extend_from_slice(&to.encode(v));
}

/// Drops the mapped pages of a piece once written.
fn release(p: &Piece) {
    p.file.release_range(p.info.begin + p.begin, p.info.begin + p.end);
}

/// A temporary output next to its final path (`<name>.tmp-<pid>`), removed on drop unless
/// committed by an atomic rename. Temporaries of `<name>` left by processes that no longer run
/// are removed when a new one is made (`outputs::remove_stale_temps`).
pub struct TempOutput {
    pub tmp: PathBuf,
    pub dest: PathBuf,
    done: bool,
}

impl TempOutput {
    /// For a folder output, the temporary folder is created here.
    pub fn new(dest: &Path, folder: bool) -> Result<TempOutput> {
        if !folder && dest.is_dir() {
            return Err(Error::input(format!("output {} is a folder; give a file name", dest.display())));
        }
        if folder && dest.is_file() {
            return Err(Error::input(format!(
                "output {} is a file, but this conversion writes a folder",
                dest.display()
            )));
        }
        let name =
            dest.file_name().ok_or_else(|| Error::input(format!("output {} has no file name", dest.display())))?;
        let tmp = dest.with_file_name(format!("{}.tmp-{}", name.to_string_lossy(), std::process::id()));
        let out = TempOutput { tmp, dest: dest.to_path_buf(), done: false };
        crate::outputs::remove_stale_temps(dest);
        out.remove_tmp();
        if folder {
            std::fs::create_dir(&out.tmp).map_err(|e| Error::io(&out.tmp, e))?;
        }
        Ok(out)
    }

    /// Renames the temporary output onto its destination. An existing destination file is
    /// replaced atomically; an existing non-empty folder is refused (before any work, by the caller).
    pub fn commit(mut self) -> Result<()> {
        std::fs::rename(&self.tmp, &self.dest).map_err(|e| Error::io(&self.dest, e))?;
        self.done = true;
        Ok(())
    }

    fn remove_tmp(&self) {
        if self.tmp.is_dir() {
            let _ = std::fs::remove_dir_all(&self.tmp);
        } else if self.tmp.exists() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

impl Drop for TempOutput {
    fn drop(&mut self) {
        if !self.done {
            self.remove_tmp();
        }
    }
}

/// One f32 tensor written to a safetensors file atomically (temporary file, then rename), with
/// `metadata` in the header.
pub fn write_f32_tensor(
    path: &Path,
    name: &str,
    data: &[f32],
    shape: &[usize],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let out = TempOutput::new(path, false)?;
    let t = OutTensor {
        name: name.to_string(),
        dtype: crate::dtype::DType::F32,
        shape: shape.to_vec(),
        source: Source::Host(std::borrow::Cow::Borrowed(data)),
    };
    write_safetensors(&out.tmp, &[t], metadata, &indicatif::ProgressBar::hidden())?;
    out.commit()
}
