//! Just enough of the zip format to read a file out of `meteor-1.5.jar` (stored or deflated
//! entries, located through the central directory).

use std::io::Read;
use std::path::Path;

use super::MetricsError;

fn u16_at(b: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(i..i + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], i: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(i..i + 4)?.try_into().ok()?))
}

/// The bytes of entry `name` of the zip/jar archive at `path`.
pub fn read_entry(path: &Path, name: &str) -> Result<Vec<u8>, MetricsError> {
    let bad = |why: String| MetricsError::MeteorData {
        path: path.to_path_buf(),
        line: 0,
        why,
    };
    let data = std::fs::read(path).map_err(|source| MetricsError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    // End of central directory: signature 0x06054b50 within the last 64 KiB + 22 bytes.
    let start = data.len().saturating_sub(65_557);
    let eocd = (start..data.len().saturating_sub(21))
        .rev()
        .find(|&i| u32_at(&data, i) == Some(0x0605_4b50))
        .ok_or_else(|| bad("not a zip/jar archive (no end of central directory)".into()))?;
    let entries = u16_at(&data, eocd + 10).unwrap_or(0) as usize;
    let mut p = u32_at(&data, eocd + 16).unwrap_or(0) as usize;
    for _ in 0..entries {
        if u32_at(&data, p) != Some(0x0201_4b50) {
            return Err(bad(format!("corrupt central directory at byte {p}")));
        }
        let field = |off: usize| u16_at(&data, p + off).unwrap_or(0) as usize;
        let method = field(10);
        let comp_size = u32_at(&data, p + 20).unwrap_or(0) as usize;
        let (name_len, extra_len, comment_len) = (field(28), field(30), field(32));
        let local = u32_at(&data, p + 42).unwrap_or(0) as usize;
        let entry_name = data.get(p + 46..p + 46 + name_len).unwrap_or_default();
        if entry_name == name.as_bytes() {
            let lname = u16_at(&data, local + 26).unwrap_or(0) as usize;
            let lextra = u16_at(&data, local + 28).unwrap_or(0) as usize;
            let body = local + 30 + lname + lextra;
            let raw = data
                .get(body..body + comp_size)
                .ok_or_else(|| bad(format!("entry `{name}` runs past the end of the archive")))?;
            return match method {
                0 => Ok(raw.to_vec()),
                8 => {
                    let mut out = Vec::new();
                    flate2::read::DeflateDecoder::new(raw)
                        .read_to_end(&mut out)
                        .map_err(|e| bad(format!("cannot inflate `{name}`: {e}")))?;
                    Ok(out)
                }
                m => Err(bad(format!(
                    "entry `{name}` uses unsupported compression method {m}"
                ))),
            };
        }
        p += 46 + name_len + extra_len + comment_len;
    }
    Err(bad(format!("no entry `{name}` in the archive")))
}
