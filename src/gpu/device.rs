//! Adapter selection and device creation. Requests the adapter's own limits (not the WebGPU
//! defaults) and every optional feature wgdit can use that the adapter has.

use super::choice::{self, CoopConfig, CoopSupport, Family, KernelChoice, Offer, Precision};
use super::{Caps, DeviceLimits, Gpu};
use crate::error::{Error, Result};
use std::sync::{Arc, Mutex};

/// Which graphics API to run on (`--backend`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Vulkan,
    Metal,
    Dx12,
    Gl,
}

impl std::str::FromStr for Backend {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "vulkan" | "vk" => Ok(Backend::Vulkan),
            "metal" | "mtl" => Ok(Backend::Metal),
            "dx12" | "d3d12" => Ok(Backend::Dx12),
            "gl" | "gles" | "opengl" => Ok(Backend::Gl),
            other => Err(Error::input(format!("unknown backend `{other}`: use one of vulkan, metal, dx12, gl"))),
        }
    }
}

impl Backend {
    fn bits(self) -> wgpu::Backends {
        match self {
            Backend::Vulkan => wgpu::Backends::VULKAN,
            Backend::Metal => wgpu::Backends::METAL,
            Backend::Dx12 => wgpu::Backends::DX12,
            Backend::Gl => wgpu::Backends::GL,
        }
    }
}

/// How to pick the adapter. Unset fields fall back to the environment variables
/// `WGDIT_BACKEND` and `WGDIT_ADAPTER`, then to the default high-performance adapter.
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    pub backend: Option<Backend>,
    /// An index into the adapter list of `wgdit devices`, or a case-insensitive name substring.
    pub adapter: Option<String>,
    /// `--kernels` (`None`: auto, or `WGDIT_KERNELS`).
    pub kernels: Option<Family>,
    /// `--precision` (`None`: auto, or `WGDIT_PRECISION`).
    pub precision: Option<Precision>,
    /// Build pipelines without wgpu's injected runtime checks (per-access bounds clamping, loop
    /// bounding, integer-division guards): `--trusted-shaders`, env `WGDIT_TRUSTED_SHADERS=1`.
    /// Off by default; see docs/reliability.md.
    pub trusted_shaders: bool,
}

impl GpuOptions {
    /// Fills unset fields from `WGDIT_BACKEND`, `WGDIT_ADAPTER`, `WGDIT_KERNELS`, `WGDIT_PRECISION`
    /// and `WGDIT_TRUSTED_SHADERS`.
    pub fn with_env(mut self) -> Result<Self> {
        if self.backend.is_none() {
            if let Ok(b) = std::env::var("WGDIT_BACKEND") {
                self.backend = Some(b.parse()?);
            }
        }
        if self.adapter.is_none() {
            self.adapter = std::env::var("WGDIT_ADAPTER").ok().filter(|s| !s.is_empty());
        }
        if self.kernels.is_none() {
            if let Some(k) = std::env::var("WGDIT_KERNELS").ok().filter(|s| !s.is_empty()) {
                self.kernels = choice::parse_kernels(&k).map_err(|e| Error::input(format!("WGDIT_KERNELS: {e}")))?;
            }
        }
        if self.precision.is_none() {
            if let Some(p) = std::env::var("WGDIT_PRECISION").ok().filter(|s| !s.is_empty()) {
                self.precision =
                    choice::parse_precision(&p).map_err(|e| Error::input(format!("WGDIT_PRECISION: {e}")))?;
            }
        }
        if !self.trusted_shaders {
            self.trusted_shaders = std::env::var("WGDIT_TRUSTED_SHADERS").is_ok_and(|v| v == "1");
        }
        Ok(self)
    }
}

/// One line of `wgdit devices`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AdapterReport {
    pub index: usize,
    pub backend: String,
    pub device_type: String,
    pub name: String,
    pub driver: String,
    pub driver_info: String,
    pub caps: Caps,
    pub limits: DeviceLimits,
    /// The largest device-local heap in bytes (Vulkan; `None` where the backend does not say).
    pub device_memory: Option<u64>,
    /// Cooperative-matrix configurations and subgroup sizes.
    pub coop: CoopSupport,
    /// The kernel family `--kernels auto --precision auto` picks here, and why.
    pub kernels: KernelChoice,
}

impl AdapterReport {
    /// What this adapter offers `choice::resolve`.
    pub fn offer(&self) -> Offer<'_> {
        offer(&self.caps, &self.device_type, &self.coop)
    }
}

fn instance(backends: wgpu::Backends) -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = backends;
    wgpu::Instance::new(desc)
}

fn backends_for(backend: Option<Backend>) -> wgpu::Backends {
    backend.map_or(wgpu::Backends::all(), Backend::bits)
}

/// The optional features wgdit uses, intersected with what the adapter has.
fn wanted_features(adapter: &wgpu::Adapter) -> wgpu::Features {
    let wanted = wgpu::Features::SHADER_F16
        | wgpu::Features::SUBGROUP
        | wgpu::Features::TIMESTAMP_QUERY
        | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES
        | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS
        | wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX;
    adapter.features() & wanted
}

fn caps_of(features: wgpu::Features) -> Caps {
    Caps {
        shader_f16: features.contains(wgpu::Features::SHADER_F16),
        subgroup: features.contains(wgpu::Features::SUBGROUP),
        timestamp_query: features.contains(wgpu::Features::TIMESTAMP_QUERY),
        timestamp_inside_passes: features.contains(wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES),
        cooperative_matrix: features.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX),
    }
}

fn scalar_name(t: wgpu::CooperativeScalarType) -> String {
    match t {
        wgpu::CooperativeScalarType::F32 => "f32",
        wgpu::CooperativeScalarType::F16 => "f16",
        wgpu::CooperativeScalarType::I32 => "i32",
        wgpu::CooperativeScalarType::U32 => "u32",
    }
    .to_string()
}

fn coop_of(caps: &Caps, a: &wgpu::Adapter) -> CoopSupport {
    let info = a.get_info();
    let configs = if caps.cooperative_matrix {
        a.cooperative_matrix_properties()
            .into_iter()
            .map(|p| CoopConfig {
                m: p.m_size,
                n: p.n_size,
                k: p.k_size,
                ab: scalar_name(p.ab_type),
                c: scalar_name(p.cr_type),
            })
            .collect()
    } else {
        Vec::new()
    };
    CoopSupport {
        feature: caps.cooperative_matrix,
        configs,
        subgroup_sizes: (info.subgroup_min_size, info.subgroup_max_size),
    }
}

fn offer<'a>(caps: &Caps, device_type: &str, coop: &'a CoopSupport) -> Offer<'a> {
    Offer { shader_f16: caps.shader_f16, is_cpu: device_type == "Cpu", coop }
}

fn limits_of(l: &wgpu::Limits) -> DeviceLimits {
    DeviceLimits {
        max_storage_binding: l.max_storage_buffer_binding_size.min(super::MAX_BINDING),
        adapter_max_storage_binding: l.max_storage_buffer_binding_size,
        max_buffer: l.max_buffer_size,
        max_workgroup_storage: l.max_compute_workgroup_storage_size,
        max_invocations_per_workgroup: l.max_compute_invocations_per_workgroup,
        max_workgroups_per_dim: l.max_compute_workgroups_per_dimension,
        max_storage_buffers_per_stage: l.max_storage_buffers_per_shader_stage,
        storage_offset_alignment: l.min_storage_buffer_offset_alignment,
    }
}

fn report(index: usize, a: &wgpu::Adapter) -> AdapterReport {
    let info = a.get_info();
    let caps = caps_of(wanted_features(a));
    let coop = coop_of(&caps, a);
    let device_type = format!("{:?}", info.device_type);
    let kernels = choice::resolve(None, None, &offer(&caps, &device_type, &coop)).expect("auto always resolves");
    AdapterReport {
        index,
        backend: format!("{:?}", info.backend),
        device_type,
        name: info.name,
        driver: info.driver,
        driver_info: info.driver_info,
        caps,
        limits: limits_of(&a.limits()),
        device_memory: super::memory::adapter_memory(a),
        coop,
        kernels,
    }
}

/// Every adapter the compiled backends expose (or only `backend`'s), in a stable order.
pub fn list_adapters(backend: Option<Backend>) -> Vec<AdapterReport> {
    let inst = instance(backends_for(backend));
    let adapters = pollster::block_on(inst.enumerate_adapters(backends_for(backend)));
    adapters.iter().enumerate().map(|(i, a)| report(i, a)).collect()
}

fn pick_adapter(inst: &wgpu::Instance, opts: &GpuOptions) -> Result<wgpu::Adapter> {
    let backends = backends_for(opts.backend);
    let Some(sel) = &opts.adapter else {
        let req = wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            force_fallback_adapter: false,
            compatible_surface: None,
            apply_limit_buckets: false,
        };
        return pollster::block_on(inst.request_adapter(&req)).map_err(|e| {
            Error::NoAdapter(format!(
                "{e} (requested backends {backends:?}). Install a GPU driver, or Mesa's lavapipe for a CPU Vulkan device: apt-get install mesa-vulkan-drivers libvulkan1"
            ))
        });
    };
    let mut all = pollster::block_on(inst.enumerate_adapters(backends));
    let names: Vec<String> = all.iter().map(|a| a.get_info().name).collect();
    let pos = match sel.parse::<usize>() {
        Ok(i) if i < all.len() => Some(i),
        Ok(_) => None,
        Err(_) => {
            let s = sel.to_lowercase();
            names.iter().position(|n| n.to_lowercase().contains(&s))
        }
    };
    match pos {
        Some(i) => Ok(all.swap_remove(i)),
        None => Err(Error::NoAdapter(format!(
            "no adapter matches `{sel}`; available: [{}] (see `wgdit devices`)",
            names.join(", ")
        ))),
    }
}

impl Gpu {
    /// Opens the adapter chosen by `opts` (after applying the environment overrides).
    pub fn new(opts: &GpuOptions) -> Result<Arc<Gpu>> {
        let opts = opts.clone().with_env()?;
        let inst = instance(backends_for(opts.backend));
        let adapter = pick_adapter(&inst, &opts)?;
        let features = wanted_features(&adapter);
        let mut report = report(0, &adapter);
        report.kernels = choice::resolve(opts.kernels, opts.precision, &report.offer())?;
        let experimental = if features.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX) {
            // SAFETY: the opt-in only unlocks EXPERIMENTAL_COOPERATIVE_MATRIX, requested above only
            // where the adapter reports it. wgdit uses it in the coop tile programs alone, built
            // only when the resolved family is `coop`, with the configurations the adapter lists
            // (`CoopSupport::frag`); those programs pass the same tests through the emulation.
            unsafe { wgpu::ExperimentalFeatures::enabled() }
        } else {
            wgpu::ExperimentalFeatures::disabled()
        };
        let desc = wgpu::DeviceDescriptor {
            label: Some("wgdit"),
            required_features: features,
            required_limits: adapter.limits(),
            experimental_features: experimental,
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&desc))
            .map_err(|e| Error::Device(format!("{e} on {}", adapter.get_info().name)))?;
        let uncaptured = Arc::new(Mutex::new(Vec::<String>::new()));
        let sink = uncaptured.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            if let Ok(mut v) = sink.lock() {
                v.push(e.to_string());
            }
        }));
        let memory = super::memory::device_memory(&adapter)?;
        let mut gpu = Gpu::assemble(adapter, device, queue, report, uncaptured, memory);
        gpu.trusted_shaders = opts.trusted_shaders;
        Ok(Arc::new(gpu))
    }

    /// The default adapter, honouring `WGDIT_BACKEND` / `WGDIT_ADAPTER`.
    pub fn default_adapter() -> Result<Arc<Gpu>> {
        Gpu::new(&GpuOptions::default())
    }
}
