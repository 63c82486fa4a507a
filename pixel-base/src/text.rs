//! Reading user text files (configs, JSON, JSONL) with errors that say what is wrong.
use std::io::{Error, ErrorKind};
use std::path::Path;

/// The file at `path` as UTF-8 text. A file that is not UTF-8 is an `InvalidData` error naming
/// the byte offset of the first invalid byte.
pub fn read_text(path: &Path) -> std::io::Result<String> {
    let bytes = std::fs::read(path)?;
    String::from_utf8(bytes).map_err(|e| {
        let offset = e.utf8_error().valid_up_to();
        Error::new(
            ErrorKind::InvalidData,
            format!(
                "not UTF-8 text: invalid byte 0x{:02x} at byte offset {offset}",
                e.as_bytes()[offset]
            ),
        )
    })
}

/// A hint for a failed read: what to check given the kind of error.
pub fn read_help(error: &Error) -> &'static str {
    match error.kind() {
        ErrorKind::NotFound => "\n  help: check the path; the file does not exist",
        ErrorKind::PermissionDenied => "\n  help: the file is not readable by this user",
        ErrorKind::InvalidData => "\n  help: save the file as UTF-8",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_is_not_utf8_names_the_byte_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.toml");
        std::fs::write(&path, b"seed = 1\n\xff\xfe").unwrap();
        let err = read_text(&path).unwrap_err();
        assert_eq!(
            err.to_string(),
            "not UTF-8 text: invalid byte 0xff at byte offset 9"
        );
        assert_eq!(read_help(&err), "\n  help: save the file as UTF-8");
        let missing = read_text(&dir.path().join("nope")).unwrap_err();
        assert!(read_help(&missing).contains("does not exist"));
        std::fs::write(&path, "seed = 1\n").unwrap();
        assert_eq!(read_text(&path).unwrap(), "seed = 1\n");
    }
}
