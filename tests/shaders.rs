//! Every registered shader parses and validates with naga, without a GPU.

use wgdit::shaders::ALL;

#[test]
fn every_registered_shader_validates_with_naga() {
    let mut failures = Vec::new();
    for s in ALL {
        let module = match naga::front::wgsl::parse_str(s.source) {
            Ok(m) => m,
            Err(e) => {
                failures.push(format!("{}: {}", s.name, e.emit_to_string(s.source)));
                continue;
            }
        };
        let mut v = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all());
        if let Err(e) = v.validate(&module) {
            failures.push(format!("{}: {}", s.name, e.emit_to_string(s.source)));
        }
    }
    assert!(failures.is_empty(), "shader validation failed:\n{}", failures.join("\n"));
}

#[test]
fn every_shader_file_is_registered() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    for e in std::fs::read_dir(&dir).expect("shaders/ exists") {
        let name = e.expect("dir entry").file_name().to_string_lossy().into_owned();
        let stem = name.strip_suffix(".wgsl").unwrap_or_else(|| panic!("non-WGSL file in shaders/: {name}"));
        assert!(ALL.iter().any(|s| s.name == stem), "shaders/{name} is not listed in src/shaders.rs");
    }
}
