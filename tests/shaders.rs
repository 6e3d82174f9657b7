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

/// The compute entry points of a module.
fn entry_points(m: &naga::Module) -> Vec<String> {
    m.entry_points.iter().map(|e| e.name.clone()).collect()
}

/// Translates one entry point of a composition (overrides at their defaults) to SPIR-V and MSL;
/// returns the MSL text. A panic inside naga (30.0.2 panics on coopStoreT to a storage buffer
/// with a computed offset) is a failure naming the shader.
fn translate(s: &Shader, entry: &str) -> Result<String, String> {
    let module =
        naga::front::wgsl::parse_str(s.source).map_err(|e| format!("{}: {}", s.name, e.emit_to_string(s.source)))?;
    let mut v = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all());
    let info = v.validate(&module).map_err(|e| format!("{}: {}", s.name, e.emit_to_string(s.source)))?;
    let (module, info) = naga::back::pipeline_constants::process_overrides(
        &module,
        &info,
        Some((naga::ShaderStage::Compute, entry)),
        &Default::default(),
    )
    .map_err(|e| format!("{}::{entry}: overrides: {e}", s.name))?;
    let spv = std::panic::catch_unwind(|| {
        let opts = naga::back::spv::Options { lang_version: (1, 3), ..Default::default() };
        let pipeline = naga::back::spv::PipelineOptions {
            shader_stage: naga::ShaderStage::Compute,
            entry_point: entry.to_string(),
        };
        naga::back::spv::write_vec(&module, &info, &opts, Some(&pipeline)).map(|w| w.len())
    });
    match spv {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(format!("{}::{entry}: SPIR-V: {e}", s.name)),
        Err(_) => return Err(format!("{}::{entry}: naga panicked writing SPIR-V", s.name)),
    }
    let msl = std::panic::catch_unwind(|| {
        let opts = naga::back::msl::Options { lang_version: (2, 3), ..Default::default() };
        let pipeline = naga::back::msl::PipelineOptions {
            entry_point: Some((naga::ShaderStage::Compute, entry.to_string())),
            ..Default::default()
        };
        naga::back::msl::write_string(&module, &info, &opts, &pipeline).map(|(s, _)| s)
    });
    match msl {
        Ok(Ok(text)) => Ok(text),
        Ok(Err(e)) => Err(format!("{}::{entry}: MSL: {e}", s.name)),
        Err(_) => Err(format!("{}::{entry}: naga panicked writing MSL", s.name)),
    }
}

#[test]
fn every_tile_program_composition_translates_to_spirv_and_msl() {
    // Every composition with a fragment backend (name `file@backend`, or the default
    // emulated one of a file that has such compositions), every entry point.
    let tiled: Vec<&Shader> =
        ALL.iter().filter(|s| ALL.iter().any(|o| o.file == s.file && o.name.contains('@'))).collect();
    assert!(tiled.len() >= 5, "the gemm compositions are registered");
    let mut failures = Vec::new();
    for s in &tiled {
        let m = naga::front::wgsl::parse_str(s.source).expect("validated by the test above");
        for e in entry_points(&m) {
            if let Err(err) = translate(s, &e) {
                failures.push(err);
            }
        }
    }
    assert!(failures.is_empty(), "translation failed:\n{}", failures.join("\n"));
}

/// The simdgroup matrix type names in an MSL text (`simdgroup_half8x8`, `simdgroup_float16x16`, ..).
fn simdgroup_types(msl: &str) -> Vec<&str> {
    let mut out = Vec::new();
    for prefix in ["simdgroup_half", "simdgroup_float"] {
        for (i, _) in msl.match_indices(prefix) {
            let rest = &msl[i + prefix.len()..];
            let len = rest.find(|c: char| !(c.is_ascii_digit() || c == 'x')).unwrap_or(rest.len());
            out.push(&msl[i..i + prefix.len() + len]);
        }
    }
    out
}

#[test]
fn metal_compositions_use_only_metals_8x8_simdgroup_matrices() {
    // Metal has 8x8 simdgroup matrices only; naga 30.0.2 writes a non-existent
    // `simdgroup_half16x16` for WGSL's coop_mat16x16. The coop8 compositions (what wgdit builds on
    // Metal) must name 8x8 types only, and the 16x16 ones are Vulkan-only.
    let coop8: Vec<&Shader> = ALL.iter().filter(|s| s.name.ends_with("@coop8")).collect();
    assert!(!coop8.is_empty());
    for s in coop8 {
        let m = naga::front::wgsl::parse_str(s.source).expect("parses");
        for e in entry_points(&m) {
            let msl = translate(s, &e).unwrap_or_else(|err| panic!("{err}"));
            let bad: Vec<&str> = simdgroup_types(&msl).into_iter().filter(|t| !t.ends_with("8x8")).collect();
            assert!(bad.is_empty(), "{}::{e} uses non-8x8 simdgroup types: {bad:?}", s.name);
            if e.contains("coop") {
                assert!(msl.contains("simdgroup_float8x8"), "{}::{e} does not use simdgroup matrices", s.name);
            }
        }
    }
    let coop16 = ALL.iter().find(|s| s.name == "gemm/gemm@coop16").expect("the gemm coop16 composition");
    let m = naga::front::wgsl::parse_str(coop16.source).expect("parses");
    let e = entry_points(&m).into_iter().find(|e| e.contains("coop")).expect("a coop entry point");
    let msl = translate(coop16, &e).expect("translates");
    assert!(
        msl.contains("simdgroup_half16x16"),
        "naga's MSL for 16x16 changed: revisit which fragment size Metal gets (docs/kernels.md)"
    );
}

#[test]
fn a_coop_store_to_storage_with_a_computed_offset_is_caught_by_the_translation_check() {
    // The naga 30.0.2 bug the fragment API avoids (offsets bound with `let` first): the check
    // above must report it as a failure, not crash the test binary.
    let src = r#"
enable f16;
enable wgpu_cooperative_matrix;
struct P { base: u32, ld: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read_write> c: array<f32>;
@compute @workgroup_size(32)
fn store_direct() {
    let acc = coop_mat16x16<f32, C>();
    coopStoreT(acc, &c[p.base + 16u], p.ld * 1u);
}
"#;
    let s = Shader { name: "probe/coop_store", file: "probe/coop_store", preludes: &[], source: src };
    let got = translate(&s, "store_direct");
    assert!(got.is_err(), "naga 30.0.2 no longer fails here: the `let` workaround may be dropped");
}
