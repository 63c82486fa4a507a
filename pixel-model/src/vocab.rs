//! A sub-vocabulary of T5's: the pieces a corpus uses, renumbered densely.
//!
//! The tiny preset computes its LM head and softmax over these pieces only, which makes a CPU
//! training step several times cheaper than over all 32,128 T5 pieces; token ids stay T5's
//! outside the model, so the real tokenizer encodes and decodes. Full-size presets use the whole
//! vocabulary ([`VocabMap::identity`]).
use crate::error::{ModelError, Result};
use pixel_lm::tokenizer::{T5Tokenizer, EOS_ID, PAD_ID};
use std::collections::BTreeMap;

/// The sentinel pieces LM pretraining's span corruption uses (`crate::pretrain`), in order; the
/// tiny preset's sub-vocabulary holds them (a sequence of the length pretraining uses has at most
/// a few spans). Here, with the model, so that the model's presets need not reach pretraining.
pub const SENTINELS: [&str; 8] = [
    "<extra_id_0>",
    "<extra_id_1>",
    "<extra_id_2>",
    "<extra_id_3>",
    "<extra_id_4>",
    "<extra_id_5>",
    "<extra_id_6>",
    "<extra_id_7>",
];

/// T5's unknown-piece id.
pub const UNK_ID: usize = 2;

#[derive(Debug, Clone, PartialEq)]
pub struct VocabMap {
    /// T5 id of each model id.
    t5_of: Vec<usize>,
    /// Model id of each T5 id in the sub-vocabulary.
    model_of: BTreeMap<usize, usize>,
}

impl VocabMap {
    /// All `size` T5 ids, unchanged.
    pub fn identity(size: usize) -> Self {
        VocabMap {
            t5_of: (0..size).collect(),
            model_of: (0..size).map(|i| (i, i)).collect(),
        }
    }

    /// Pad, EOS and unk keep ids 0, 1, 2; the pieces of `words` follow in id order.
    pub fn from_words(tokenizer: &T5Tokenizer, words: &[&str], capacity: usize) -> Result<Self> {
        let mut ids: Vec<usize> = Vec::new();
        for word in words {
            let piece_ids = tokenizer
                .encode(word)
                .map_err(|e| ModelError::Invalid(e.to_string()))?;
            ids.extend(piece_ids.into_iter().filter(|&id| id != EOS_ID));
        }
        ids.sort_unstable();
        ids.dedup();
        let mut t5_of = vec![PAD_ID, EOS_ID, UNK_ID];
        t5_of.extend(ids.into_iter().filter(|id| *id > UNK_ID));
        if t5_of.len() > capacity {
            return Err(ModelError::Invalid(format!(
                "the corpus uses {} T5 pieces, more than the preset's vocabulary of {capacity}",
                t5_of.len()
            )));
        }
        let model_of = t5_of.iter().enumerate().map(|(m, &t)| (t, m)).collect();
        Ok(VocabMap { t5_of, model_of })
    }

    pub fn len(&self) -> usize {
        self.t5_of.len()
    }

    pub fn is_empty(&self) -> bool {
        self.t5_of.is_empty()
    }

    /// The model id of a T5 id; pieces outside the sub-vocabulary become unk.
    pub fn to_model(&self, t5_id: usize) -> usize {
        self.model_of.get(&t5_id).copied().unwrap_or(UNK_ID)
    }

    /// The T5 id of a model id; ids past the sub-vocabulary (never trained) become unk.
    pub fn to_t5(&self, model_id: usize) -> usize {
        self.t5_of.get(model_id).copied().unwrap_or(UNK_ID)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_vocabulary_round_trips_its_pieces() {
        let tok = T5Tokenizer::bundled().unwrap();
        let words = ["where", "is", "the", "small", "red", "circle"];
        let map = VocabMap::from_words(&tok, &words, 64).unwrap();
        for word in words {
            for id in tok.encode(word).unwrap() {
                assert_eq!(map.to_t5(map.to_model(id)), id);
            }
        }
        assert_eq!(map.to_model(EOS_ID), 1);
        assert_eq!(map.to_model(31000), UNK_ID);
        assert!(VocabMap::from_words(&tok, &words, 4).is_err());
    }
}
