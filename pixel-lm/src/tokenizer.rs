//! The T5 SentencePiece vocabulary (`assets/t5-tokenizer.json`) through the `tokenizers` crate.
//!
//! Encoding appends EOS (`</s>`, id 1) as T5 does; batches are padded with pad (id 0) on the
//! right, with a mask that is true for real tokens.
use crate::error::{LmError, Result};
use std::path::{Path, PathBuf};

/// T5's pad id, also the decoder start token.
pub const PAD_ID: usize = 0;
/// T5's end-of-sequence id.
pub const EOS_ID: usize = 1;

/// A T5 tokenizer.
pub struct T5Tokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
}

/// Padded token ids of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// `[batch * tokens]`, padded with [`PAD_ID`].
    pub ids: Vec<usize>,
    /// `[batch * tokens]`, true for real tokens.
    pub mask: Vec<bool>,
    pub batch: usize,
    pub tokens: usize,
}

impl T5Tokenizer {
    /// Reads a HF `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| LmError::Tokenizer {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Ok(T5Tokenizer {
            inner,
            path: path.to_path_buf(),
        })
    }

    /// The tokenizer shipped in the repository (`assets/t5-tokenizer.json`).
    pub fn bundled() -> Result<Self> {
        Self::from_file(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/t5-tokenizer.json"))
    }

    fn error(&self, e: impl std::fmt::Display) -> LmError {
        LmError::Tokenizer {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    /// Token ids of `text` followed by EOS.
    pub fn encode(&self, text: &str) -> Result<Vec<usize>> {
        let encoding = self.inner.encode(text, true).map_err(|e| self.error(e))?;
        Ok(encoding.get_ids().iter().map(|&i| i as usize).collect())
    }

    /// Encodes several texts, right-padded to the longest.
    pub fn encode_batch(&self, texts: &[&str]) -> Result<Batch> {
        let rows = texts
            .iter()
            .map(|t| self.encode(t))
            .collect::<Result<Vec<_>>>()?;
        let tokens = rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut batch = Batch {
            ids: Vec::with_capacity(rows.len() * tokens),
            mask: Vec::with_capacity(rows.len() * tokens),
            batch: rows.len(),
            tokens,
        };
        for row in rows {
            batch.mask.extend((0..tokens).map(|i| i < row.len()));
            let n = row.len();
            batch.ids.extend(row);
            batch.ids.extend(std::iter::repeat_n(PAD_ID, tokens - n));
        }
        Ok(batch)
    }

    /// Text of `ids`, without pad, EOS and other special tokens.
    pub fn decode(&self, ids: &[usize]) -> Result<String> {
        let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
        self.inner.decode(&ids, true).map_err(|e| self.error(e))
    }

    /// The id of a token string, e.g. `<extra_id_0>`.
    pub fn token_to_id(&self, token: &str) -> Option<usize> {
        self.inner.token_to_id(token).map(|i| i as usize)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_like_the_reference_t5_tokenizer() {
        let tok = T5Tokenizer::bundled().unwrap();
        assert_eq!(
            tok.encode("a man holding a red umbrella").unwrap(),
            vec![3, 9, 388, 3609, 3, 9, 1131, 18598, 1]
        );
        assert_eq!(
            tok.decode(&[3, 9, 388, 3609, 1, 0]).unwrap(),
            "a man holding"
        );
    }

    #[test]
    fn batches_are_right_padded_with_a_mask() {
        let tok = T5Tokenizer::bundled().unwrap();
        let b = tok
            .encode_batch(&["a man", "a man holding a red umbrella"])
            .unwrap();
        assert_eq!((b.batch, b.tokens), (2, 9));
        assert_eq!(&b.ids[..9], &[3, 9, 388, 1, 0, 0, 0, 0, 0]);
        assert_eq!(b.mask.iter().filter(|&&m| m).count(), 4 + 9);
    }
}
