//! The GPU runtime: the only module that names wgpu types.
//!
//! - [`Gpu`]: one adapter + device + queue, its capabilities and limits, a pipeline cache and
//!   reusable staging buffers.
//! - [`Buffer`]: a storage buffer, bound whole (creation checks the adapter's binding limit), or a
//!   view of a byte range of one (`Buffer::view`: weights in a streaming ring slot).
//! - [`Kernel`]: a compute pipeline built from a registered WGSL shader (see `crate::shaders`),
//!   with an explicit bind-group layout reflected from the shader by naga.
//! - [`Launch`]: one dispatch request (kernel, params bytes, buffers, workgroups);
//!   [`Bound`]: the same with its bind group and uniform buffer built, ready to re-encode.

mod buffer;
pub mod choice;
mod device;
mod kernel;
mod memory;
mod run;

pub use buffer::{Buffer, BufferCopy};
pub use choice::{Family, KernelChoice, Precision};
pub use device::{list_adapters, AdapterReport, Backend, GpuOptions};
pub use kernel::{Access, Kernel};
pub use memory::DeviceMemory;
pub use run::{Bound, Launch, Stamps, Submission, SUBMIT_CHUNK};

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

/// Optional features the adapter offers (and that the device enabled).
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Caps {
    pub shader_f16: bool,
    pub subgroup: bool,
    pub timestamp_query: bool,
    pub timestamp_inside_passes: bool,
    pub cooperative_matrix: bool,
}

/// The most bytes wgdit binds as one storage buffer on any backend: 2 GiB − 1. Shaders index
/// with u32 (and WGSL's `arrayLength` is u32), and Vulkan/D3D12 drivers cap bindings at i32::MAX;
/// wgpu applies that cap except on Metal, where it reports `maxBufferLength` (often 16+ GiB) as
/// the binding limit. Under this cap every bound buffer of ≥ 1-byte elements has < 2^31 elements,
/// and of sub-byte block formats (≥ 0.5 byte/element) < 2^32.
pub const MAX_BINDING: u64 = (1 << 31) - 1;

/// The adapter limits wgdit cares about.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct DeviceLimits {
    /// What wgdit binds per storage buffer: the adapter's limit capped at [`MAX_BINDING`].
    pub max_storage_binding: u64,
    /// The adapter's own `max_storage_buffer_binding_size` (before the cap; `wgdit devices`).
    pub adapter_max_storage_binding: u64,
    pub max_buffer: u64,
    pub max_workgroup_storage: u32,
    pub max_invocations_per_workgroup: u32,
    pub max_workgroups_per_dim: u32,
    pub max_storage_buffers_per_stage: u32,
    /// `min_storage_buffer_offset_alignment`: where a bound view may start (256 on most GPUs).
    pub storage_offset_alignment: u32,
}

/// Key of the pipeline cache: shader name, entry point and override constants (as bits).
type PipelineKey = (&'static str, &'static str, Vec<(&'static str, u64)>);

pub struct Gpu {
    #[allow(dead_code)] // kept alive for the device's lifetime
    adapter: wgpu::Adapter,
    device: wgpu::Device,
    queue: wgpu::Queue,
    report: AdapterReport,
    caps: Caps,
    limits: DeviceLimits,
    pipelines: Mutex<HashMap<PipelineKey, Arc<Kernel>>>,
    staging: Mutex<Vec<wgpu::Buffer>>,
    uncaptured: Arc<Mutex<Vec<String>>>,
    memory: DeviceMemory,
    /// Bytes of wgdit's live buffers (see `memory::Allocation`).
    held: Arc<AtomicU64>,
    /// Pipelines are built without wgpu's runtime checks (`GpuOptions::trusted_shaders`).
    trusted_shaders: bool,
    /// Dispatches per submission (`Gpu::submit_chunk`).
    submit_chunk: std::sync::atomic::AtomicUsize,
}

impl Gpu {
    fn assemble(
        adapter: wgpu::Adapter,
        device: wgpu::Device,
        queue: wgpu::Queue,
        report: AdapterReport,
        uncaptured: Arc<Mutex<Vec<String>>>,
        memory: DeviceMemory,
    ) -> Gpu {
        Gpu {
            caps: report.caps,
            limits: report.limits,
            adapter,
            device,
            queue,
            report,
            pipelines: Mutex::new(HashMap::new()),
            staging: Mutex::new(Vec::new()),
            uncaptured,
            memory,
            held: Arc::new(AtomicU64::new(0)),
            trusted_shaders: false,
            submit_chunk: std::sync::atomic::AtomicUsize::new(run::SUBMIT_CHUNK),
        }
    }

    pub fn caps(&self) -> Caps {
        self.caps
    }
    pub fn limits(&self) -> DeviceLimits {
        self.limits
    }
    /// Adapter name, backend, driver.
    pub fn info(&self) -> &AdapterReport {
        &self.report
    }
    /// The kernel family and precision of the GEMMs and attention (`--kernels`, `--precision`).
    pub fn kernel_choice(&self) -> &KernelChoice {
        &self.report.kernels
    }
    /// Whether pipelines are built without wgpu's runtime checks (`GpuOptions::trusted_shaders`).
    pub fn trusted_shaders(&self) -> bool {
        self.trusted_shaders
    }
    /// Whether the adapter is a CPU implementation (lavapipe, WARP, SwiftShader).
    pub fn is_cpu(&self) -> bool {
        self.report.device_type == "Cpu"
    }

    /// Waits for all submitted work.
    pub fn sync(&self) -> crate::Result<()> {
        self.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| gpu_err("waiting for the queue", e))?;
        self.take_uncaptured("running GPU work")
    }

    /// Turns errors that no error scope caught (reported asynchronously) into a `Result`.
    fn take_uncaptured(&self, context: &str) -> crate::Result<()> {
        let mut v = self.uncaptured.lock().unwrap_or_else(|p| p.into_inner());
        if v.is_empty() {
            return Ok(());
        }
        let message = v.join("\n");
        v.clear();
        if message.to_lowercase().contains("out of memory") {
            return Err(crate::Error::OutOfMemory(context.to_string()));
        }
        Err(crate::Error::Gpu { context: context.to_string(), message })
    }
}

fn gpu_err(context: &str, e: impl std::fmt::Display) -> crate::Error {
    crate::Error::Gpu { context: context.to_string(), message: e.to_string() }
}
