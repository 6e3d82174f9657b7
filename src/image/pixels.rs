//! Pixels in and out of the pipeline, as diffusers 0.42.1 (`image_processor.py`, `VaeImageProcessor`)
//! and Pillow 13 handle them:
//! - [`load_rgb`]: decode PNG / JPEG / WebP to 8-bit RGB the way `PIL.Image.open(p).convert("RGB")`
//!   does: alpha is dropped (not composited), grey is replicated, palettes are expanded, 16-bit RGB(A)
//!   and grey+alpha keep the **high byte**, and 16-bit grey (Pillow mode `I;16`) is **clamped** to
//!   255 (`I16_RGB` in Pillow's `Convert.c`), not scaled. EXIF orientation is not applied (neither
//!   does `Image.open`). PNG decoding is lossless, so PNG input is bit-exact; JPEG and lossy WebP
//!   come from other decoders than libjpeg-turbo / libwebp and may differ by a few levels.
//! - [`vae_input`]: `preprocess` → `2·(p/255) − 1` in f32, CHW.
//! - [`vae_output_to_unit`] / [`vae_output_to_rgb8`]: `postprocess` with `output_type="pt"` / `"pil"`.
//! - [`write_png`]: atomic PNG output (temporary file in the same folder, then rename) with text chunks;
//!   [`read_png_text`] reads them back.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use ::image::{DynamicImage, ImageDecoder, ImageReader, Limits, RgbImage};

use crate::{Error, Result};

/// Largest accepted image side, checked from the header before any pixel buffer is allocated.
pub const MAX_SIDE: u32 = 16384;
/// Largest accepted pixel count (16384²).
pub const MAX_PIXELS: u64 = 1 << 28;
/// Decoder allocation cap: a [`MAX_PIXELS`] image in the widest format PNG has (16-bit RGBA).
const MAX_DECODE_BYTES: u64 = MAX_PIXELS * 8;

/// Refuses empty images and images over [`MAX_SIDE`] or [`MAX_PIXELS`].
pub(crate) fn check_dimensions(width: u32, height: u32, what: &str) -> Result<()> {
    if width == 0 || height == 0 {
        return Err(Error::input(format!("{what}: {width}x{height} has no pixels")));
    }
    if width > MAX_SIDE || height > MAX_SIDE || width as u64 * height as u64 > MAX_PIXELS {
        return Err(Error::input(format!(
            "{what}: {width}x{height} is too large (at most {MAX_SIDE} per side and {MAX_PIXELS} pixels)"
        )));
    }
    Ok(())
}

/// Reads an image file (PNG, JPEG or WebP, recognised by content) as 8-bit RGB like
/// `PIL.Image.open(path).convert("RGB")`. Unreadable, corrupt, unsupported or oversized files
/// give an error naming the file; the size check happens on the header, before decoding.
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    let len = std::fs::metadata(path).map_err(|e| Error::io(path, e))?.len();
    if len > MAX_FILE_BYTES {
        return Err(Error::file(path, format!("{len} bytes: too large for an image file (at most {MAX_FILE_BYTES})")));
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_rgb(&bytes).map_err(|e| Error::file(path, e.to_string()))
}

/// Largest image file read (a 16384² PNG of noise is about 1 GiB).
pub const MAX_FILE_BYTES: u64 = 2 << 30;

/// [`load_rgb`] on the bytes of a file (the fuzz entry point): never panics, bounded allocation.
pub fn decode_rgb(bytes: &[u8]) -> Result<RgbImage> {
    let reader = ImageReader::new(std::io::Cursor::new(bytes));
    let mut reader = reader.with_guessed_format().map_err(|e| Error::input(e.to_string()))?;
    if reader.format().is_none() {
        return Err(Error::input("not a PNG, JPEG or WebP image (unrecognised content)"));
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    let decoder = reader.into_decoder().map_err(|e| Error::input(format!("cannot decode: {e}")))?;
    let (width, height) = decoder.dimensions();
    check_dimensions(width, height, "image")?;
    let img = DynamicImage::from_decoder(decoder).map_err(|e| Error::input(format!("cannot decode: {e}")))?;
    to_rgb8_like_pillow(img).map_err(Error::input)
}

/// `Image.convert("RGB")` on the mode Pillow would have opened the file in.
fn to_rgb8_like_pillow(img: DynamicImage) -> std::result::Result<RgbImage, String> {
    let (w, h) = (img.width(), img.height());
    let from =
        |px: Vec<u8>| RgbImage::from_raw(w, h, px).ok_or_else(|| "decoded buffer has the wrong size".to_string());
    let grey = |v: &mut dyn Iterator<Item = u8>| v.flat_map(|g| [g, g, g]).collect::<Vec<u8>>();
    match img {
        DynamicImage::ImageRgb8(rgb) => Ok(rgb),
        DynamicImage::ImageRgba8(p) => from(p.pixels().flat_map(|p| [p[0], p[1], p[2]]).collect()),
        DynamicImage::ImageLuma8(p) => from(grey(&mut p.pixels().map(|p| p[0]))),
        DynamicImage::ImageLumaA8(p) => from(grey(&mut p.pixels().map(|p| p[0]))),
        // "I;16" -> "RGB": values above 255 saturate.
        DynamicImage::ImageLuma16(p) => from(grey(&mut p.pixels().map(|p| p[0].min(255) as u8))),
        // "LA;16B", "RGB;16B", "RGBA;16B" unpack to 8 bits by keeping the high byte.
        DynamicImage::ImageLumaA16(p) => from(grey(&mut p.pixels().map(|p| (p[0] >> 8) as u8))),
        DynamicImage::ImageRgb16(p) => from(p.as_raw().iter().map(|&v| (v >> 8) as u8).collect()),
        DynamicImage::ImageRgba16(p) => {
            from(p.pixels().flat_map(|p| [(p[0] >> 8) as u8, (p[1] >> 8) as u8, (p[2] >> 8) as u8]).collect())
        }
        other => Err(format!("unsupported pixel format {:?}", other.color())),
    }
}

/// `VaeImageProcessor.preprocess` after resizing: `np.array(img).astype(np.float32) / 255.0`, then
/// `2.0 * x - 1.0` in torch f32, laid out CHW (the pipeline adds the batch and frame axes:
/// `[1, 3, 1, H, W]`). Each step rounds to f32, as the reference does.
pub fn vae_input(img: &RgbImage) -> Vec<f32> {
    let plane = img.width() as usize * img.height() as usize;
    let mut out = vec![0.0f32; 3 * plane];
    for (i, px) in img.as_raw().chunks_exact(3).enumerate() {
        for c in 0..3 {
            out[c * plane + i] = 2.0 * (px[c] as f32 / 255.0) - 1.0;
        }
    }
    out
}

/// `postprocess(output_type="pt")` of a float32 decode: `(x * 0.5 + 0.5).clamp(0, 1)` elementwise
/// (NaN stays NaN). A bf16 VAE would run this in bf16.
pub fn vae_output_to_unit(x: &[f32]) -> Vec<f32> {
    x.iter().map(|&v| (v * 0.5 + 0.5).clamp(0.0, 1.0)).collect()
}

/// `postprocess(output_type="pil")`: [`vae_output_to_unit`], then numpy
/// `(x * 255).round().astype("uint8")` (f32 product, round half to even), CHW `[3, height, width]`
/// in, RGB out. NaN maps to 0. Errors if `chw.len() != 3·width·height`.
pub fn vae_output_to_rgb8(chw: &[f32], width: u32, height: u32) -> Result<RgbImage> {
    let plane = width as usize * height as usize;
    if chw.len() != 3 * plane {
        return Err(Error::input(format!(
            "decoded image has {} values, expected 3x{height}x{width} = {}",
            chw.len(),
            3 * plane
        )));
    }
    let unit = vae_output_to_unit(chw);
    let mut px = vec![0u8; 3 * plane];
    for i in 0..plane {
        for c in 0..3 {
            // `as u8` saturates and maps NaN to 0; the value is already in [0, 255].
            px[3 * i + c] = (unit[c * plane + i] * 255.0).round_ties_even() as u8;
        }
    }
    RgbImage::from_raw(width, height, px).ok_or_else(|| Error::input("decoded image buffer has the wrong size"))
}

/// Writes `img` as a PNG at `path` atomically: the bytes go to a temporary file in the same folder,
/// which is synced and then renamed over `path`, so readers never see a partial file. Each
/// `(key, value)` of `text` becomes a `tEXt` chunk (value in Latin-1) or, if the value has characters
/// outside Latin-1, an uncompressed `iTXt` chunk (UTF-8). Keys must be 1–79 Latin-1 characters
/// without NUL, leading/trailing or double spaces (PNG 1.2 §11.3.4.3).
pub fn write_png(path: &Path, img: &RgbImage, text: &[(&str, &str)]) -> Result<()> {
    let mut chunks = Vec::with_capacity(text.len());
    for &(key, value) in text {
        chunks.push(text_chunk(key, value)?);
    }
    let mut png = Vec::new();
    ::image::codecs::png::PngEncoder::new(&mut png)
        .write_image(img.as_raw(), img.width(), img.height(), ::image::ExtendedColorType::Rgb8)
        .map_err(|e| Error::file(path, format!("cannot encode PNG: {e}")))?;
    let ihdr_end = 8 + 12 + 13; // signature, then IHDR: length, type, 13 data bytes, CRC
    if png.get(12..16) != Some(b"IHDR".as_slice()) {
        return Err(Error::file(path, "PNG encoder output does not start with IHDR"));
    }
    let mut bytes = Vec::with_capacity(png.len() + chunks.iter().map(Vec::len).sum::<usize>());
    bytes.extend_from_slice(&png[..ihdr_end]);
    for c in &chunks {
        bytes.extend_from_slice(c);
    }
    bytes.extend_from_slice(&png[ihdr_end..]);
    write_atomic(path, &bytes)
}

use ::image::ImageEncoder as _;

/// JPEG quality of `--output *.jpg` (the `image` crate's encoder; Pillow's default is 75).
pub const JPEG_QUALITY: u8 = 95;

/// Writes `img` as a JPEG (quality [`JPEG_QUALITY`]) or a lossless WebP, atomically like
/// [`write_png`]. Neither carries text metadata here (PNG does).
pub fn write_image(path: &Path, img: &RgbImage, jpeg: bool) -> Result<()> {
    let mut bytes = Vec::new();
    let (w, h, raw) = (img.width(), img.height(), img.as_raw());
    let res = if jpeg {
        ::image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, JPEG_QUALITY).write_image(
            raw,
            w,
            h,
            ::image::ExtendedColorType::Rgb8,
        )
    } else {
        ::image::codecs::webp::WebPEncoder::new_lossless(&mut bytes).write_image(
            raw,
            w,
            h,
            ::image::ExtendedColorType::Rgb8,
        )
    };
    res.map_err(|e| Error::file(path, format!("cannot encode {}: {e}", if jpeg { "JPEG" } else { "WebP" })))?;
    write_atomic(path, &bytes)
}

fn latin1(s: &str) -> Option<Vec<u8>> {
    s.chars().map(|c| u8::try_from(c as u32).ok()).collect()
}

/// One serialized `tEXt` or `iTXt` chunk (length, type, data, CRC).
fn text_chunk(key: &str, value: &str) -> Result<Vec<u8>> {
    let key_bytes = latin1(key).filter(|k| {
        (1..=79).contains(&k.len())
            && !k.contains(&0)
            && k[0] != b' '
            && k[k.len() - 1] != b' '
            && !k.windows(2).any(|w| w == b"  ")
    });
    let key_bytes = key_bytes.ok_or_else(|| {
        Error::input(format!(
            "PNG text key {key:?} is invalid: use 1-79 Latin-1 characters, no NUL, no leading, trailing or double spaces"
        ))
    })?;
    let (kind, mut data): (&[u8; 4], Vec<u8>) = match latin1(value).filter(|v| !v.contains(&0)) {
        Some(v) => (b"tEXt", [key_bytes.as_slice(), &[0], &v].concat()),
        None if value.contains('\0') => return Err(Error::input(format!("PNG text value for {key:?} contains NUL"))),
        // key, NUL, compression flag 0, method 0, empty language tag + NUL, empty translated key + NUL, UTF-8 text
        None => (b"iTXt", [key_bytes.as_slice(), &[0, 0, 0, 0, 0], value.as_bytes()].concat()),
    };
    let len = u32::try_from(data.len()).map_err(|_| Error::input(format!("PNG text value for {key:?} is too long")))?;
    let mut chunk = Vec::with_capacity(data.len() + 12);
    chunk.extend_from_slice(&len.to_be_bytes());
    let body_start = chunk.len();
    chunk.extend_from_slice(kind);
    chunk.append(&mut data);
    let crc = crc32(&chunk[body_start..]);
    chunk.extend_from_slice(&crc.to_be_bytes());
    Ok(chunk)
}

/// The `tEXt` and uncompressed `iTXt` key/value pairs of a PNG file, in file order (compressed
/// `zTXt`/`iTXt` chunks are skipped). Errors on a file that is not a well-formed PNG chunk stream
/// (bad signature, truncated chunk, CRC mismatch).
pub fn read_png_text(path: &Path) -> Result<Vec<(String, String)>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_png_text(&bytes).map_err(|msg| Error::file(path, msg))
}

fn parse_png_text(bytes: &[u8]) -> std::result::Result<Vec<(String, String)>, String> {
    const SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
    if !bytes.starts_with(SIGNATURE) {
        return Err("not a PNG file (bad signature)".into());
    }
    let mut out = Vec::new();
    let mut pos = SIGNATURE.len();
    while pos < bytes.len() {
        let header = bytes.get(pos..pos + 8).ok_or("truncated chunk header")?;
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let body = bytes.get(pos + 4..pos + 8 + len).ok_or("truncated chunk")?;
        let crc = bytes.get(pos + 8 + len..pos + 12 + len).ok_or("truncated chunk CRC")?;
        if crc32(body) != u32::from_be_bytes([crc[0], crc[1], crc[2], crc[3]]) {
            return Err(format!("CRC mismatch in chunk {:?}", String::from_utf8_lossy(&body[..4])));
        }
        let (kind, data) = body.split_at(4);
        match kind {
            b"tEXt" => {
                let nul = data.iter().position(|&b| b == 0).ok_or("tEXt chunk without NUL separator")?;
                let decode = |b: &[u8]| b.iter().map(|&c| c as char).collect::<String>();
                out.push((decode(&data[..nul]), decode(&data[nul + 1..])));
            }
            b"iTXt" => {
                if let Some(pair) = parse_itxt(data)? {
                    out.push(pair);
                }
            }
            b"IEND" => break,
            _ => {}
        }
        pos += 12 + len;
    }
    Ok(out)
}

/// An uncompressed `iTXt` chunk's (key, text); `None` when compressed.
fn parse_itxt(data: &[u8]) -> std::result::Result<Option<(String, String)>, String> {
    let bad = || "malformed iTXt chunk".to_string();
    let nul = data.iter().position(|&b| b == 0).ok_or_else(bad)?;
    let key: String = data[..nul].iter().map(|&c| c as char).collect();
    let rest = data.get(nul + 1..).ok_or_else(bad)?;
    let (&flag, rest) = rest.split_first().ok_or_else(bad)?;
    let rest = rest.get(1..).ok_or_else(bad)?; // compression method
    let lang_end = rest.iter().position(|&b| b == 0).ok_or_else(bad)?;
    let rest = &rest[lang_end + 1..];
    let tkey_end = rest.iter().position(|&b| b == 0).ok_or_else(bad)?;
    if flag != 0 {
        return Ok(None);
    }
    let text = std::str::from_utf8(&rest[tkey_end + 1..]).map_err(|_| "iTXt text is not UTF-8".to_string())?;
    Ok(Some((key, text.to_string())))
}

/// CRC-32 (ISO 3309, as PNG uses), bitwise.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// Writes `bytes` to a fresh temporary file next to `path`, syncs it, then renames it over `path`.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name =
        path.file_name().ok_or_else(|| Error::input(format!("output path {} has no file name", path.display())))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    crate::outputs::remove_stale_temps(path);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{}.{}-{n}.tmp", name.to_string_lossy(), std::process::id()));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(&tmp, e));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_iend_chunk_crc() {
        // Every PNG ends with IEND, whose CRC is the well-known AE 42 60 82.
        assert_eq!(crc32(b"IEND"), 0xae42_6082);
    }
}
