//! Every registered shader (composed with its preludes) and every prelude alone parses and
//! validates with naga, without a GPU; every file under shaders/ is registered and every
//! prelude is used.

use wgdit::shaders::{Shader, ALL, PRELUDES};

fn validate(s: &Shader) -> Result<(), String> {
    let module =
        naga::front::wgsl::parse_str(s.source).map_err(|e| format!("{}: {}", s.name, e.emit_to_string(s.source)))?;
    let mut v = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all());
    v.validate(&module).map(|_| ()).map_err(|e| format!("{}: {}", s.name, e.emit_to_string(s.source)))
}

#[test]
fn every_registered_shader_validates_with_naga() {
    let failures: Vec<String> = ALL.iter().filter_map(|s| validate(s).err()).collect();
    assert!(failures.is_empty(), "shader validation failed:\n{}", failures.join("\n"));
}

#[test]
fn every_prelude_validates_alone_and_holds_no_entry_point_or_binding() {
    for p in PRELUDES {
        validate(p).unwrap_or_else(|e| panic!("prelude {e}"));
        let m = naga::front::wgsl::parse_str(p.source).expect("validated above");
        assert!(m.entry_points.is_empty(), "prelude {} has an entry point", p.name);
        assert!(m.overrides.is_empty(), "prelude {} has an override", p.name);
        let bound = m.global_variables.iter().filter(|(_, g)| g.binding.is_some()).count();
        assert_eq!(bound, 0, "prelude {} has a binding", p.name);
    }
}

#[test]
fn every_prelude_is_used_and_every_used_prelude_is_registered() {
    for p in PRELUDES {
        assert!(ALL.iter().any(|s| s.preludes.contains(&p.name)), "prelude {} is used by no shader", p.name);
    }
    for s in ALL {
        for u in s.preludes {
            assert!(PRELUDES.iter().any(|p| p.name == *u), "{} uses unregistered prelude {u}", s.name);
        }
    }
}

#[test]
fn every_shader_file_is_registered() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut seen = 0;
    for family in std::fs::read_dir(&root).expect("shaders/ exists") {
        let family = family.expect("dir entry").path();
        assert!(family.is_dir(), "shaders/ holds family folders only: {}", family.display());
        for e in std::fs::read_dir(&family).expect("family folder") {
            let path = e.expect("dir entry").path();
            let rel = path.strip_prefix(&root).expect("under shaders/").to_string_lossy().replace('\\', "/");
            let stem = rel.strip_suffix(".wgsl").unwrap_or_else(|| panic!("non-WGSL file in shaders/: {rel}"));
            let known = ALL.iter().chain(PRELUDES).any(|s| s.file == stem);
            assert!(known, "shaders/{rel} is not listed in src/shaders.rs");
            seen += 1;
        }
    }
    let files: std::collections::BTreeSet<&str> = ALL.iter().chain(PRELUDES).map(|s| s.file).collect();
    assert_eq!(seen, files.len(), "a registered shader has no file");
}

/// The real cooperative-matrix compositions translate to SPIR-V (what wgpu does on Vulkan) at
/// their override defaults: naga 30.0.2 panics in the SPIR-V writer on coopLoad/coopStore with
/// computed offsets or strides into storage buffers, which the fragment API avoids (it binds
/// them with `let` and goes through workgroup memory). Validation alone does not catch that.
#[test]
fn cooperative_matrix_compositions_translate_to_spirv() {
    use naga::back::spv;
    let coop: Vec<&Shader> = ALL.iter().filter(|s| s.name.ends_with("@coop16") || s.name.ends_with("@coop8")).collect();
    assert!(coop.len() >= 6, "expected the gemm and attention coop compositions, got {}", coop.len());
    for s in coop {
        let module = naga::front::wgsl::parse_str(s.source).unwrap_or_else(|e| panic!("{}: {e}", s.name));
        let mut v = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all());
        let info = v.validate(&module).unwrap_or_else(|e| panic!("{}: {e}", s.name));
        for ep in &module.entry_points {
            let stage = naga::ShaderStage::Compute;
            let (m, i) = naga::back::pipeline_constants::process_overrides(
                &module,
                &info,
                Some((stage, &ep.name)),
                &Default::default(),
            )
            .unwrap_or_else(|e| panic!("{} {}: overrides: {e}", s.name, ep.name));
            let options = spv::Options { lang_version: (1, 6), ..Default::default() };
            let pipeline = spv::PipelineOptions { shader_stage: stage, entry_point: ep.name.clone() };
            let words = std::panic::catch_unwind(|| spv::write_vec(&m, &i, &options, Some(&pipeline)))
                .unwrap_or_else(|_| panic!("{} {}: the SPIR-V writer panicked", s.name, ep.name))
                .unwrap_or_else(|e| panic!("{} {}: SPIR-V: {e}", s.name, ep.name));
            assert!(words.len() > 5, "{} {}: empty SPIR-V", s.name, ep.name);
        }
    }
}
