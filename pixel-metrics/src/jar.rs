//! Reading a file out of `meteor-1.5.jar` (a zip archive) with the `zip` crate.

use std::io::Read;
use std::path::Path;

use super::MetricsError;

/// The bytes of entry `name` of the zip/jar archive at `path`.
pub fn read_entry(path: &Path, name: &str) -> Result<Vec<u8>, MetricsError> {
    let bad = |why: String| MetricsError::MeteorData {
        path: path.to_path_buf(),
        line: 0,
        why,
    };
    let file = std::fs::File::open(path).map_err(|source| MetricsError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut archive = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| bad(format!("not a readable zip/jar archive: {e}")))?;
    let mut entry = archive.by_name(name).map_err(|e| match e {
        zip::result::ZipError::FileNotFound => bad(format!("no entry `{name}` in the archive")),
        e => bad(format!("cannot read entry `{name}`: {e}")),
    })?;
    let mut out = Vec::new();
    entry
        .read_to_end(&mut out)
        .map_err(|e| bad(format!("cannot read entry `{name}`: {e}")))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A jar with a stored and a deflated entry, as `jar` writes them.
    fn jar(path: &Path) {
        let file = std::fs::File::create(path).unwrap_or_else(|e| panic!("{e}"));
        let mut zip = zip::ZipWriter::new(file);
        for (name, method) in [
            ("META-INF/MANIFEST.MF", zip::CompressionMethod::Stored),
            ("synonym/synonyms", zip::CompressionMethod::Deflated),
        ] {
            let options = zip::write::FileOptions::default().compression_method(method);
            zip.start_file(name, options)
                .unwrap_or_else(|e| panic!("{e}"));
            zip.write_all(format!("{name}\n").repeat(50).as_bytes())
                .unwrap_or_else(|e| panic!("{e}"));
        }
        zip.finish().unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn stored_and_deflated_entries_read_back_and_problems_name_the_entry() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("meteor.jar");
        jar(&path);
        for name in ["META-INF/MANIFEST.MF", "synonym/synonyms"] {
            let bytes = read_entry(&path, name).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(bytes, format!("{name}\n").repeat(50).into_bytes());
        }
        let missing = read_entry(&path, "paraphrase/en").map(|_| ());
        assert!(
            matches!(&missing, Err(e) if e.to_string().contains("no entry `paraphrase/en`")),
            "{missing:?}"
        );
        std::fs::write(&path, b"PK not a zip").unwrap_or_else(|e| panic!("{e}"));
        let corrupt = read_entry(&path, "synonym/synonyms").map(|_| ());
        assert!(
            matches!(&corrupt, Err(e) if e.to_string().contains("meteor.jar")),
            "{corrupt:?}"
        );
    }
}
