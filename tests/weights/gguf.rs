//! GGUF files: gguf-py's files read back with the names, shapes, types, offsets, metadata and
//! values gguf-py reads (tests/fixtures/gguf, tools/gen_gguf_fixtures.py); hand-made bad files,
//! each refused with a message naming the problem; the streaming writer's round trip.

use crate::synthetic_checkpoint::tmpdir;
use serde_json::Value as Json;
use std::path::{Path, PathBuf};
use wgdit::tensor::DType;
use wgdit::weights::gguf::{Value, ValueType};
use wgdit::weights::gguf_write::{GgufTensor, GgufWriter};
use wgdit::weights::{Checkpoint, SafeFile};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf").join(name)
}

fn expected(name: &str) -> Json {
    serde_json::from_str(&std::fs::read_to_string(fixture(&format!("{name}.expected.json"))).unwrap()).unwrap()
}

/// gguf-py's `GGUFValueType` name of a value's type(s), nested arrays by their first element.
fn py_types(v: &Value, out: &mut Vec<String>) {
    let name = match v.value_type() {
        ValueType::U8 => "UINT8",
        ValueType::I8 => "INT8",
        ValueType::U16 => "UINT16",
        ValueType::I16 => "INT16",
        ValueType::U32 => "UINT32",
        ValueType::I32 => "INT32",
        ValueType::F32 => "FLOAT32",
        ValueType::Bool => "BOOL",
        ValueType::String => "STRING",
        ValueType::Array => "ARRAY",
        ValueType::U64 => "UINT64",
        ValueType::I64 => "INT64",
        ValueType::F64 => "FLOAT64",
    };
    out.push(name.to_string());
    if let Value::Array(_, items) = v {
        py_types(&items[0], out);
    }
}

/// gguf-py's `ReaderField.contents()`: scalars, or arrays flattened (its reader flattens nested arrays).
fn py_contents(v: &Value) -> Json {
    fn flat(v: &Value, out: &mut Vec<Json>) {
        match v {
            Value::Array(_, items) => items.iter().for_each(|i| flat(i, out)),
            v => out.push(py_contents(v)),
        }
    }
    match v {
        Value::Array(..) => {
            let mut out = Vec::new();
            flat(v, &mut out);
            Json::Array(out)
        }
        Value::String(s) => Json::from(s.as_str()),
        Value::Bool(b) => Json::from(*b),
        Value::F32(x) => Json::from(*x as f64),
        Value::F64(x) => Json::from(*x),
        v => serde_json::from_str(&v.as_i128().unwrap().to_string()).unwrap(),
    }
}

fn check_against_gguf_py(name: &str) -> SafeFile {
    let f = SafeFile::open(&fixture(&format!("{name}.gguf"))).unwrap();
    let want = expected(name);
    let meta = f.gguf.as_ref().expect("a GGUF file");
    assert_eq!(meta.version, 3);
    assert_eq!(meta.alignment as u64, want["alignment"].as_u64().unwrap());
    let kvs = want["kvs"].as_object().unwrap();
    let mut keys: Vec<&str> = meta.kvs.iter().map(|(k, _)| k.as_str()).collect();
    keys.sort_unstable();
    assert_eq!(keys, kvs.keys().map(|k| k.as_str()).collect::<Vec<_>>());
    for (k, v) in &meta.kvs {
        let mut types = Vec::new();
        py_types(v, &mut types);
        assert_eq!(Json::from(types), kvs[k]["types"], "types of {k}");
        assert_eq!(py_contents(v), kvs[k]["contents"], "contents of {k}");
    }
    let tensors = want["tensors"].as_array().unwrap();
    assert_eq!(f.tensors.len(), tensors.len());
    for (t, w) in f.tensors.iter().zip(tensors) {
        assert_eq!(t.name, w["name"].as_str().unwrap());
        assert_eq!(t.dtype, w["type"].as_str().unwrap(), "{}", t.name);
        let shape: Vec<usize> = w["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
        assert_eq!(t.shape, shape, "{}", t.name);
        assert_eq!(t.begin as u64, w["offset"].as_u64().unwrap(), "{}", t.name);
        assert_eq!((t.end - t.begin) as u64, w["n_bytes"].as_u64().unwrap(), "{}", t.name);
        let v = f.view(t).unwrap();
        assert_eq!(v.dtype.bytes(v.numel()), v.bytes.len(), "{}", t.name);
    }
    f
}

#[test]
fn gguf_py_files_read_with_gguf_py_names_shapes_types_offsets_and_metadata() {
    let f = check_against_gguf_py("tiny");
    assert_eq!(f.architecture(), Some("qwen_image"));
    let types: Vec<&str> = f.tensors.iter().map(|t| t.dtype.as_str()).collect();
    for t in ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"] {
        assert!(types.contains(&t), "the fixture has no {t} tensor");
    }
    let m = &f.metadata;
    assert_eq!(m["general.architecture"], "qwen_image");
    assert_eq!(m["general.file_type"], "15");
    assert_eq!(m["test.string"], "Qwen-Image 千问 🐈");
    assert_eq!(m["test.array_str"], r#"["a", "b\"c", ""]"#);
    assert_eq!(m["test.array_nested"], "[[1, 2], [3]]");
    assert_eq!((m["test.bool"].as_str(), m["test.f32"].as_str(), m["test.i8"].as_str()), ("true", "0.375", "-7"));
    let nested = f.gguf.as_ref().unwrap().get("test.array_nested").unwrap();
    let inner = |v: Vec<i32>| Value::Array(ValueType::I32, v.into_iter().map(Value::I32).collect());
    assert_eq!(*nested, Value::Array(ValueType::Array, vec![inner(vec![1, 2]), inner(vec![3])]));
    // orig_shape: stored as [2, 256] (ne [256, 2]), read as the original [8, 64]
    let reshaped = f.tensors.iter().find(|t| t.name == "transformer_blocks.0.img_mod.1.weight").unwrap();
    assert_eq!((reshaped.dtype.as_str(), reshaped.shape.as_slice()), ("Q4_K", &[8usize, 64][..]));

    let g = check_against_gguf_py("aligned64");
    assert_eq!((g.architecture(), g.gguf.as_ref().unwrap().alignment), (None, 64));
}

#[test]
fn gguf_values_dequantize_as_gguf_py_does() {
    for name in ["tiny", "aligned64"] {
        let f = SafeFile::open(&fixture(&format!("{name}.gguf"))).unwrap();
        let want = SafeFile::open(&fixture(&format!("{name}.expected.safetensors"))).unwrap();
        for t in &f.tensors {
            let w = want.tensors.iter().find(|w| w.name == t.name).unwrap();
            let v = f.view(t).unwrap();
            assert_eq!(v.shape, &w.shape[..], "{}", t.name);
            let (got, exp) = (v.to_f32(), want.view(w).unwrap().to_f32());
            // gguf-py dequantizes in float32 numpy arithmetic: d * q - m, the same products
            let worst = got.iter().zip(&exp).map(|(a, b)| (a - b).abs() / (1e-6 + b.abs())).fold(0f32, f32::max);
            assert!(worst <= 1e-6, "{name}: {} ({}) differs from gguf-py by {worst:e} relative", t.name, t.dtype);
        }
    }
}

#[test]
fn a_gguf_checkpoint_opens_like_a_safetensors_one_and_is_recognised_by_its_magic() {
    let ck = Checkpoint::open(&fixture("aligned64.gguf")).unwrap();
    assert_eq!(ck.prefix, "model.diffusion_model.");
    let v = ck.view("transformer_blocks.0.attn.to_q.weight").unwrap();
    assert_eq!((v.dtype, v.shape), (DType::Q8_0, &[3usize, 32][..]));
    assert_eq!(ck.architecture(), None);
    let dir = tmpdir("gguf-magic");
    let renamed = dir.join("model.safetensors");
    std::fs::copy(fixture("tiny.gguf"), &renamed).unwrap();
    let ck = Checkpoint::open(&renamed).unwrap();
    assert_eq!(ck.architecture(), Some("qwen_image"));
    assert_eq!(ck.view("transformer_blocks.0.attn.to_q.weight").unwrap().dtype, DType::Q8_0);
    assert_eq!(ck.view("img_in.weight").unwrap().to_f32().len(), 8 * 16);
    let _ = std::fs::remove_dir_all(dir);
}

/// A hand-assembled GGUF file, so that every field can lie.
struct Bad {
    version: u32,
    kvs: Vec<(String, u32, Vec<u8>)>,
    tensors: Vec<(String, Vec<u64>, u32, u64)>,
    data: usize,
}

fn s(x: &str) -> Vec<u8> {
    let mut v = (x.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(x.as_bytes());
    v
}

impl Bad {
    /// One F32 tensor `t` of 16 elements at offset 0.
    fn ok() -> Bad {
        Bad {
            version: 3,
            kvs: vec![("general.architecture".into(), 8, s("qwen_image"))],
            tensors: vec![("t".into(), vec![16], 0, 0)],
            data: 64,
        }
    }
    fn tensor(mut self, name: &str, ne: &[u64], ty: u32, offset: u64) -> Bad {
        self.tensors.push((name.into(), ne.to_vec(), ty, offset));
        self
    }
    fn bytes(&self) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend_from_slice(&self.version.to_le_bytes());
        b.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        b.extend_from_slice(&(self.kvs.len() as u64).to_le_bytes());
        for (k, t, v) in &self.kvs {
            b.extend(s(k));
            b.extend_from_slice(&t.to_le_bytes());
            b.extend_from_slice(v);
        }
        for (name, ne, ty, off) in &self.tensors {
            b.extend(s(name));
            b.extend_from_slice(&(ne.len() as u32).to_le_bytes());
            ne.iter().for_each(|d| b.extend_from_slice(&d.to_le_bytes()));
            b.extend_from_slice(&ty.to_le_bytes());
            b.extend_from_slice(&off.to_le_bytes());
        }
        b.resize(b.len().next_multiple_of(32) + self.data, 0);
        b
    }
}

fn refused(bytes: Vec<u8>, needles: &[&str]) {
    let err = match SafeFile::from_bytes(Path::new("bad.gguf"), bytes) {
        Ok(_) => panic!("accepted; expected an error with {needles:?}"),
        Err(e) => e.to_string(),
    };
    assert!(err.starts_with("bad.gguf: "), "{err}");
    for n in needles {
        assert!(err.contains(n), "{err:?} does not say {n:?}");
    }
}

fn patched(mut b: Vec<u8>, at: usize, v: u64) -> Vec<u8> {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
    b
}

#[test]
fn bad_gguf_headers_are_refused_with_what_is_wrong() {
    assert!(SafeFile::from_bytes(Path::new("ok.gguf"), Bad::ok().bytes()).is_ok());
    refused(patched(Bad::ok().bytes(), 8, 1 << 40), &["declares 1099511627776 tensor(s)", "lying counts"]);
    refused(patched(Bad::ok().bytes(), 16, u64::MAX / 2), &["metadata entries", "lying counts"]);
    let mut b = Bad::ok().bytes();
    b[..4].copy_from_slice(b"GGUX");
    refused(b, &["not a GGUF file", "GGUX"]);
    refused(Bad { version: 1, ..Bad::ok() }.bytes(), &["version 1 is not supported", "versions 2 and 3"]);
    refused(Bad { version: 3 << 24, ..Bad::ok() }.bytes(), &["big-endian"]);
    assert!(SafeFile::from_bytes(Path::new("v2.gguf"), Bad { version: 2, ..Bad::ok() }.bytes()).is_ok());
    // a key whose string length runs past the end of the file
    refused(
        patched(Bad::ok().bytes(), 24, 1 << 50),
        &["the key of metadata entry 0", "string of 1125899906842624 bytes"],
    );
    let mut a = 4u32.to_le_bytes().to_vec();
    a.extend_from_slice(&(1u64 << 50).to_le_bytes());
    let lying_array = Bad { kvs: vec![("test.array".into(), 9, a)], ..Bad::ok() };
    refused(lying_array.bytes(), &["test.array", "array of 1125899906842624 u32 values"]);
    let align48 = Bad { kvs: vec![("general.alignment".into(), 4, 48u32.to_le_bytes().to_vec())], ..Bad::ok() };
    refused(align48.bytes(), &["general.alignment is 48", "power of two"]);
    let dup = Bad { kvs: vec![("k".into(), 0, vec![1]), ("k".into(), 0, vec![2])], ..Bad::ok() };
    refused(dup.bytes(), &["key k appears twice"]);
    let bad_bool = Bad { kvs: vec![("b".into(), 7, vec![2])], ..Bad::ok() };
    refused(bad_bool.bytes(), &["key b is a bool stored as 2"]);
    let deep: Vec<u8> = (0..20).flat_map(|_| [9u8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]).collect();
    refused(Bad { kvs: vec![("deep".into(), 9, deep)], ..Bad::ok() }.bytes(), &["deep nests arrays more than 8 deep"]);
}

#[test]
fn bad_gguf_tensor_infos_are_refused_naming_the_tensor() {
    let b = Bad::ok().bytes();
    refused(b[..b.len() - 8].to_vec(), &["truncated", "tensor t (F32, 64 bytes)", "spans data bytes 0..64"]);
    refused(
        Bad::ok().tensor("transformer_blocks.0.attn.to_q.weight", &[256, 2], 16, 64).bytes(),
        &["tensor transformer_blocks.0.attn.to_q.weight has GGML type IQ2_XXS (16)", "wgdit reads F32, F16, BF16"],
    );
    refused(Bad::ok().tensor("u", &[4], 0, 4).bytes(), &["tensor u starts at data offset 4", "alignment 32"]);
    refused(
        Bad { data: 256, ..Bad::ok() }.tensor("u", &[16], 0, 32).bytes(),
        &["tensors t (data bytes 0..64) and u", "overlap"],
    );
    refused(
        Bad { data: 1024, ..Bad::ok() }.tensor("q", &[100, 2], 12, 64).bytes(),
        &["tensor q (Q4_K", "rows of 100", "blocks of 256"],
    );
    refused(Bad::ok().tensor("five", &[1, 1, 1, 1, 1], 0, 64).bytes(), &["tensor five has n_dims 5", "at most 4"]);
    refused(Bad::ok().tensor("z", &[4, 0], 0, 64).bytes(), &["tensor z has a dimension of 0"]);
    refused(Bad::ok().tensor("big", &[1 << 32, 1 << 32, 1 << 32], 0, 64).bytes(), &["tensor big", "overflows"]);
    refused(Bad::ok().tensor("t", &[16], 0, 0).bytes(), &["tensor t appears twice"]);
    let mut orig = 5u32.to_le_bytes().to_vec(); // an INT32 array [3, 5] for a 16-element tensor
    orig.extend_from_slice(&2u64.to_le_bytes());
    orig.extend([3u32, 5].iter().flat_map(|d| d.to_le_bytes()));
    let bad_orig = Bad { kvs: vec![("comfy.gguf.orig_shape.t".into(), 9, orig)], ..Bad::ok() };
    refused(bad_orig.bytes(), &["comfy.gguf.orig_shape.t is [3, 5]", "holds 16 elements"]);
    // and through the file system, as `wgdit forward --model x.gguf` opens it
    let dir = tmpdir("gguf-bad");
    let p = dir.join("m.gguf");
    std::fs::write(&p, Bad::ok().tensor("five", &[1, 1, 1, 1, 1], 0, 64).bytes()).unwrap();
    let err = Checkpoint::open(&p).err().unwrap().to_string();
    assert!(err.contains("m.gguf") && err.contains("n_dims 5"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_gguf_writer_round_trips_tensors_and_every_metadata_type() {
    let dir = tmpdir("gguf-write");
    let dest = dir.join("out.gguf");
    let inner = |v: Vec<u8>| Value::Array(ValueType::U8, v.into_iter().map(Value::U8).collect());
    let kvs: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String("qwen_image".into())),
        ("a.u8".into(), Value::U8(1)),
        ("a.i8".into(), Value::I8(-1)),
        ("a.u16".into(), Value::U16(2)),
        ("a.i16".into(), Value::I16(-2)),
        ("a.u32".into(), Value::U32(3)),
        ("a.i32".into(), Value::I32(-3)),
        ("a.f32".into(), Value::F32(0.5)),
        ("a.bool".into(), Value::Bool(false)),
        ("a.u64".into(), Value::U64(u64::MAX)),
        ("a.i64".into(), Value::I64(i64::MIN)),
        ("a.f64".into(), Value::F64(1e300)),
        ("a.strings".into(), Value::Array(ValueType::String, vec![Value::String("x".into())])),
        ("a.empty".into(), Value::Array(ValueType::F32, vec![])),
        ("a.nested".into(), Value::Array(ValueType::Array, vec![inner(vec![1]), inner(vec![])])),
    ];
    let tensors =
        [(DType::F32, vec![3usize, 5]), (DType::F16, vec![7]), (DType::BF16, vec![2, 3, 4]), (DType::F32, vec![])];
    let infos: Vec<GgufTensor> = tensors
        .iter()
        .enumerate()
        .map(|(i, (d, s))| GgufTensor { name: format!("t{i}"), dtype: *d, shape: s.clone() })
        .collect();
    let data: Vec<Vec<u8>> =
        infos.iter().map(|t| t.dtype.encode(&(0..t.numel()).map(|i| i as f32 - 2.5).collect::<Vec<_>>())).collect();
    // dropped before finish: nothing at the destination, no temporary left
    let mut w = GgufWriter::create(&dest, &kvs, infos.clone()).unwrap();
    w.write_tensor(&data[0]).unwrap();
    drop(w);
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "an unfinished GGUF left files behind");
    let mut w = GgufWriter::create(&dest, &kvs, infos.clone()).unwrap();
    data.iter().for_each(|d| w.write_tensor(d).unwrap());
    let n = w.finish().unwrap();
    assert_eq!(n, std::fs::metadata(&dest).unwrap().len());
    assert_eq!(n, wgdit::weights::gguf_write::file_size(&kvs, &infos));
    let f = SafeFile::open(&dest).unwrap();
    assert_eq!(f.gguf.as_ref().unwrap().kvs, kvs);
    for (t, (info, bytes)) in f.tensors.iter().zip(infos.iter().zip(&data)) {
        let want_shape = if info.shape.is_empty() { vec![1] } else { info.shape.clone() };
        assert_eq!((t.name.as_str(), &t.shape, t.begin % 32), (info.name.as_str(), &want_shape, 0));
        assert_eq!(f.bytes(t), &bytes[..]);
    }
    let bad = GgufTensor { name: "q".into(), dtype: DType::Q4K, shape: vec![2, 100] };
    let err = GgufWriter::create(&dir.join("bad.gguf"), &kvs, vec![bad]).err().unwrap().to_string();
    assert!(err.contains("tensor q") && err.contains("rows of 100"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn convert_dequantizes_a_gguf_file_with_dtype_and_refuses_block_formats_without() {
    use wgdit::convert::{convert, DtypeChoice, Target};
    let dir = tmpdir("gguf-convert");
    let out = dir.join("tiny.safetensors");
    let mut o = crate::synthetic_checkpoint::opts(&fixture("tiny.gguf"), &out, Target::Standard);
    let err = convert(&o).err().unwrap().to_string();
    assert!(err.contains("block format safetensors cannot hold") && err.contains("--dtype"), "{err}");
    assert!(!out.exists());
    o.dtype = DtypeChoice::To(DType::F32);
    convert(&o).unwrap();
    let got = crate::synthetic_checkpoint::read_st(&out);
    let want = crate::synthetic_checkpoint::read_st(&fixture("tiny.expected.safetensors"));
    assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
    for (k, w) in &want {
        assert_eq!((got[k].shape.clone(), got[k].f32s()), (w.shape.clone(), w.f32s()), "{k}");
    }
    let _ = std::fs::remove_dir_all(dir);
}
