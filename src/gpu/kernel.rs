//! Compute pipelines from registered WGSL shaders. The bind-group layout is reflected from the
//! shader with naga (group 0, every binding the module declares), so a launcher can never bind a
//! buffer with the wrong access mode. Creation runs inside error scopes; a failure names the kernel
//! and carries wgpu's message, which shows the WGSL location.

use super::Gpu;
use crate::error::{Error, Result};
use crate::shaders::Shader;
use std::sync::Arc;

/// How a shader accesses one binding of group 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Uniform,
    Read,
    ReadWrite,
}

/// A built compute pipeline and its layout.
#[derive(Debug)]
pub struct Kernel {
    pub name: &'static str,
    pub entry: &'static str,
    /// (binding index, access), sorted by binding index.
    pub bindings: Vec<(u32, Access)>,
    pub(super) pipeline: wgpu::ComputePipeline,
    pub(super) layout: wgpu::BindGroupLayout,
}

/// The group-0 bindings a WGSL module declares. Parses only (no validation), so it also works for
/// shaders whose features the current device lacks.
pub fn reflect_bindings(shader: &Shader) -> Result<Vec<(u32, Access)>> {
    let module = naga::front::wgsl::parse_str(shader.source)
        .map_err(|e| Error::Shader { kernel: shader.name.to_string(), message: e.emit_to_string(shader.source) })?;
    let mut out = Vec::new();
    for (_, var) in module.global_variables.iter() {
        let Some(rb) = &var.binding else { continue };
        assert_eq!(rb.group, 0, "shader {}: wgdit kernels use bind group 0 only", shader.name);
        let access = match var.space {
            naga::AddressSpace::Uniform => Access::Uniform,
            naga::AddressSpace::Storage { access } => {
                if access.contains(naga::StorageAccess::STORE) {
                    Access::ReadWrite
                } else {
                    Access::Read
                }
            }
            other => panic!("shader {}: unsupported binding space {other:?}", shader.name),
        };
        out.push((rb.binding, access));
    }
    out.sort_by_key(|b| b.0);
    Ok(out)
}

fn layout_entry(binding: u32, access: Access) -> wgpu::BindGroupLayoutEntry {
    let ty = match access {
        Access::Uniform => wgpu::BufferBindingType::Uniform,
        Access::Read => wgpu::BufferBindingType::Storage { read_only: true },
        Access::ReadWrite => wgpu::BufferBindingType::Storage { read_only: false },
    };
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer { ty, has_dynamic_offset: false, min_binding_size: None },
        count: None,
    }
}

impl Gpu {
    /// The pipeline for `shader`'s `entry` specialised with `constants` (WGSL `override`s),
    /// built once and cached.
    pub fn kernel(
        &self,
        shader: &Shader,
        entry: &'static str,
        constants: &[(&'static str, f64)],
    ) -> Result<Arc<Kernel>> {
        let key = (shader.name, entry, constants.iter().map(|(k, v)| (*k, v.to_bits())).collect::<Vec<_>>());
        if let Some(k) = self.pipelines.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(k.clone());
        }
        let k = Arc::new(self.build_kernel(shader, entry, constants)?);
        self.pipelines.lock().unwrap_or_else(|p| p.into_inner()).insert(key, k.clone());
        Ok(k)
    }

    fn build_kernel(&self, shader: &Shader, entry: &'static str, constants: &[(&'static str, f64)]) -> Result<Kernel> {
        let bindings = reflect_bindings(shader)?;
        let entries: Vec<_> = bindings.iter().map(|&(b, a)| layout_entry(b, a)).collect();
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let desc = wgpu::ShaderModuleDescriptor {
            label: Some(shader.name),
            source: wgpu::ShaderSource::Wgsl(shader.source.into()),
        };
        let module = if self.trusted_shaders {
            // SAFETY: `shader` comes from wgdit's own registry (`crate::shaders`, compiled in; no
            // user-supplied WGSL reaches here), every registered shader is validated by naga in
            // tests/shaders.rs and tested against its CPU reference, including on awkward shapes.
            // The checks dropped are (1) bounds clamping: launchers check each buffer's size
            // against the shape they pass and return `Error::TooLarge` past u32 indexing
            // (`kernels::check_index`), and shaders guard their tails (`if (i >= p.n)`);
            // (2) loop bounding: every loop runs to a uniform count or a fixed constant;
            // (3) integer-division guards: divisors are shape values the launchers require ≥ 1.
            unsafe { self.device.create_shader_module_trusted(desc, wgpu::ShaderRuntimeChecks::unchecked()) }
        } else {
            self.device.create_shader_module(desc)
        };
        let layout = self
            .device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: Some(shader.name), entries: &entries });
        let pl = self.device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(shader.name),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipeline = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(entry),
            layout: Some(&pl),
            module: &module,
            entry_point: Some(entry),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants,
                zero_initialize_workgroup_memory: false,
            },
            cache: None,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Shader {
                kernel: format!("{}::{entry} {constants:?}", shader.name),
                message: e.to_string(),
            });
        }
        Ok(Kernel { name: shader.name, entry, bindings, pipeline, layout })
    }
}
