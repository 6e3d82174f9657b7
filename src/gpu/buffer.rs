//! Storage buffers: creation (checked against the adapter's limits), upload, download through
//! reused staging buffers, and NaN poisoning for tests.

use super::memory::Allocation;
use super::{gpu_err, Gpu};
use crate::error::{Error, Result};
use std::sync::Arc;

/// A GPU storage buffer, or a view of the byte range `offset..offset + size` of one (a weight in
/// a streaming ring slot, `Buffer::view`). Bindings, writes, reads and poisoning all act on that
/// range; a whole buffer is a view at offset 0 of its full size and binds as before. Cheap to
/// clone (reference counted).
#[derive(Clone, Debug)]
pub struct Buffer {
    pub(super) inner: wgpu::Buffer,
    /// Start of the view in `inner` (0 for a whole buffer).
    pub(super) offset: u64,
    pub(super) size: u64,
    /// Counts the whole buffer's bytes in the device's held bytes while any handle (or view)
    /// exists.
    _allocation: Arc<Allocation>,
}

impl Buffer {
    /// Size in bytes (a multiple of 4): the view's, for a view.
    pub fn size(&self) -> u64 {
        self.size
    }
    /// Byte offset of the view in its buffer (0 for a whole buffer).
    pub fn offset(&self) -> u64 {
        self.offset
    }
    /// Whether two handles name overlapping bytes of the same GPU buffer.
    pub fn same(&self, other: &Buffer) -> bool {
        self.inner == other.inner && self.offset < other.offset + other.size && other.offset < self.offset + self.size
    }
    /// Whether this handle covers its whole buffer (binds as `as_entire_binding`).
    pub(super) fn is_whole(&self) -> bool {
        self.offset == 0 && self.size == self.inner.size()
    }
    /// The view of bytes `offset..offset + size` of this buffer (or view). Panics (an engine
    /// contract) when the range leaves the buffer or is not 4-byte aligned; the caller aligns
    /// `offset` to `DeviceLimits::storage_offset_alignment` for views that are bound.
    pub fn view(&self, offset: u64, size: u64) -> Buffer {
        assert!(
            offset % 4 == 0 && size % 4 == 0 && size > 0 && offset + size <= self.size,
            "view {offset}..+{size} of a {}-byte buffer",
            self.size
        );
        Buffer { offset: self.offset + offset, size, ..self.clone() }
    }
}

/// One range of a [`Gpu::copy`]: `bytes` from `src` at `src_offset` to `dst` at `dst_offset`.
#[derive(Clone, Copy, Debug)]
pub struct BufferCopy<'a> {
    pub src: &'a Buffer,
    pub src_offset: u64,
    pub dst: &'a Buffer,
    pub dst_offset: u64,
    pub bytes: u64,
}

const STORAGE: wgpu::BufferUsages =
    wgpu::BufferUsages::STORAGE.union(wgpu::BufferUsages::COPY_SRC).union(wgpu::BufferUsages::COPY_DST);

fn round4(n: u64) -> u64 {
    n.div_ceil(4) * 4
}

impl Gpu {
    /// Checks that `bytes` fits one storage binding on this adapter.
    pub fn check_binding_size(&self, bytes: u64, what: &str) -> Result<()> {
        let max = self.limits.max_storage_binding.min(self.limits.max_buffer);
        if bytes > max {
            return Err(Error::TooLarge(format!(
                "{what} needs {bytes} bytes ({:.1} MiB) but {} binds at most {max} bytes ({:.1} MiB) per storage buffer; \
                 use smaller shapes or a GPU with a larger binding limit",
                bytes as f64 / 1048576.0,
                self.report.name,
                max as f64 / 1048576.0
            )));
        }
        Ok(())
    }

    /// A zero-initialised storage buffer of at least `bytes` (rounded up to 4).
    pub fn buffer(&self, bytes: u64, label: &str) -> Result<Buffer> {
        let size = round4(bytes.max(4));
        self.check_binding_size(size, label)?;
        self.create(size, label)
    }

    /// A storage buffer for views (a streaming ring slot): checked against the adapter's
    /// largest buffer, not its binding limit, since only views of it are bound.
    pub fn arena(&self, bytes: u64, label: &str) -> Result<Buffer> {
        let size = round4(bytes.max(4));
        if size > self.limits.max_buffer {
            return Err(Error::TooLarge(format!(
                "{label} needs {size} bytes ({:.1} MiB) but {} allocates at most {} bytes ({:.1} MiB) per buffer",
                size as f64 / 1048576.0,
                self.report.name,
                self.limits.max_buffer,
                self.limits.max_buffer as f64 / 1048576.0
            )));
        }
        self.create(size, label)
    }

    fn create(&self, size: u64, label: &str) -> Result<Buffer> {
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let inner = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage: STORAGE,
            mapped_at_creation: false,
        });
        if pollster::block_on(scope.pop()).is_some() {
            return Err(Error::OutOfMemory(format!("allocating {label} ({size} bytes)")));
        }
        Ok(self.wrap(inner, size))
    }

    /// A `Buffer` handle over a buffer made elsewhere in this module (counted like the others).
    pub(super) fn wrap(&self, inner: wgpu::Buffer, size: u64) -> Buffer {
        Buffer { inner, offset: 0, size, _allocation: Allocation::new(size, &self.held) }
    }

    /// A storage buffer holding `data` (padded with zeros to a multiple of 4 bytes).
    pub fn upload(&self, data: &[u8], label: &str) -> Result<Buffer> {
        let buf = self.buffer(data.len() as u64, label)?;
        self.write(&buf, 0, data);
        Ok(buf)
    }

    /// Writes `data` at byte `offset` of the buffer or view (queued; visible to the next
    /// submission, after every earlier one).
    pub fn write(&self, buf: &Buffer, offset: u64, data: &[u8]) {
        let padded;
        let bytes = if data.len() % 4 == 0 {
            data
        } else {
            let mut v = data.to_vec();
            v.resize(round4(data.len() as u64) as usize, 0);
            padded = v;
            &padded
        };
        debug_assert!(offset + bytes.len() as u64 <= buf.size, "write past the end of {:?}", buf.inner);
        self.queue.write_buffer(&buf.inner, buf.offset + offset, bytes);
    }

    /// Copies byte ranges between buffers (or views: offsets count from the view's start) on the
    /// GPU, all in one submission (ordered after the work submitted before it and before the work
    /// submitted after it). Offsets and lengths are multiples of 4.
    pub fn copy(&self, copies: &[BufferCopy<'_>]) {
        let mut enc = self.device.create_command_encoder(&Default::default());
        for c in copies {
            debug_assert!(
                c.src_offset + c.bytes <= c.src.size && c.dst_offset + c.bytes <= c.dst.size,
                "copy past the end"
            );
            debug_assert!((c.src_offset | c.dst_offset | c.bytes) % 4 == 0, "copy: unaligned range");
            // offsets are within each handle's range (a view's start added), like write and bind
            let (src, dst) = (c.src.offset + c.src_offset, c.dst.offset + c.dst_offset);
            enc.copy_buffer_to_buffer(&c.src.inner, src, &c.dst.inner, dst, c.bytes);
        }
        self.queue.submit([enc.finish()]);
    }

    /// Zeroes the buffers (or views) on the GPU, in one submission ordered after the work
    /// submitted before it: no host upload (the trainer's gradients, every optimizer step).
    pub fn clear_all(&self, bufs: &[&Buffer]) {
        let mut enc = self.device.create_command_encoder(&Default::default());
        for b in bufs {
            // `Buffer::view` keeps offset and size multiples of 4, as clear_buffer requires.
            enc.clear_buffer(&b.inner, b.offset, Some(b.size));
        }
        self.queue.submit([enc.finish()]);
    }

    /// Fills the buffer with 0xFF bytes: NaN as f32, f16 and bf16. Tests use it to prove that a
    /// kernel writes every element of its output.
    pub fn poison(&self, buf: &Buffer) {
        self.queue.write_buffer(&buf.inner, buf.offset, &vec![0xFFu8; buf.size as usize]);
    }

    /// Reads the whole buffer (or view) back (waits for all submitted work).
    pub fn download(&self, buf: &Buffer) -> Result<Vec<u8>> {
        let staging = self.take_staging(buf.size)?;
        let mut enc = self.device.create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(&buf.inner, buf.offset, &staging, 0, buf.size);
        self.queue.submit([enc.finish()]);
        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, 0..buf.size, move |r| {
            let _ = tx.send(r);
        });
        self.sync()?;
        rx.recv()
            .map_err(|e| gpu_err("reading a buffer back", e))?
            .map_err(|e| gpu_err("mapping a staging buffer", e))?;
        let out = {
            let view = staging.get_mapped_range(0..buf.size).map_err(|e| gpu_err("mapping a staging buffer", e))?;
            view.to_vec()
        };
        staging.unmap();
        self.staging.lock().unwrap_or_else(|p| p.into_inner()).push(staging);
        Ok(out)
    }

    /// Downloads and decodes f32 values.
    pub fn download_f32(&self, buf: &Buffer) -> Result<Vec<f32>> {
        Ok(bytemuck::pod_collect_to_vec(&self.download(buf)?))
    }

    /// Reuses a staging buffer of at least `size` bytes, or makes one.
    fn take_staging(&self, size: u64) -> Result<wgpu::Buffer> {
        let mut pool = self.staging.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = pool.iter().position(|b| b.size() >= size && b.size() <= size.saturating_mul(4)) {
            return Ok(pool.swap_remove(i));
        }
        drop(pool);
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let b = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("staging"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        if pollster::block_on(scope.pop()).is_some() {
            return Err(Error::OutOfMemory(format!("allocating a {size}-byte staging buffer")));
        }
        Ok(b)
    }
}
