//! Tensors in, tensors out: the model on named host tensors (a safetensors file's contents),
//! for `pixel lm forward|generate` and for scripts comparing against HF transformers; the f32
//! model ([`AnyT5`]) or the 16-bit one ([`HostT5`], `--dtype bf16|f16`).
//!
//! Inputs (i64): `input_ids` `[B,S]`, `attention_mask` `[B,S]` (optional, 1 = real token),
//! `decoder_input_ids` `[B,T]` (forward only). Outputs: see [`AnyT5::forward_tensors`] and
//! [`AnyT5::generate_tensors`].
use crate::error::{LmError, Result};
use crate::generate::GenerateOptions;
use crate::host_t5::HostT5;
use crate::presets::{AnyT5, T5Dims};
use crate::t5::T5;
use crate::with_t5;
use dfdx::prelude::*;
use pixel_core::checkpoint::{StoredTensor, TensorStore};

impl<D: Device<f32>> AnyT5<D> {
    /// HF's `model(input_ids, attention_mask, decoder_input_ids)`: f32
    /// `encoder_last_hidden_state` `[B,S,D]`, `decoder_hidden` `[B,T,D]` (after the final layer
    /// norm) and `logits` `[B,T,V]`.
    pub fn forward_tensors(&self, inputs: &TensorStore) -> Result<TensorStore> {
        let inputs = Inputs::read(inputs)?;
        with_t5!(self, m => forward(m, &inputs))
    }

    /// HF's `generate(input_ids, attention_mask, ...)`: i64 `sequences` `[B,L]` and f32
    /// `decoder_hidden` `[B,L-1,D]` (see [`crate::Generation`]).
    pub fn generate_tensors(
        &self,
        inputs: &TensorStore,
        options: &GenerateOptions,
    ) -> Result<TensorStore> {
        let inputs = Inputs::read(inputs)?;
        with_t5!(self, m => generate(m, &inputs, options))
    }
}

impl HostT5 {
    /// [`AnyT5::forward_tensors`] with this model's weights (f32, bf16 or f16).
    pub fn forward_tensors(&self, inputs: &TensorStore) -> Result<TensorStore> {
        let inputs = Inputs::read(inputs)?;
        let dec = inputs.decoder_input_ids.as_ref().ok_or_else(|| {
            inputs.invalid("the forward pass needs `decoder_input_ids` [batch, tokens]".into())
        })?;
        let vocab = self.config.vocab_size;
        inputs.check_ids(&inputs.input_ids, "input_ids", vocab)?;
        inputs.check_ids(dec, "decoder_input_ids", vocab)?;
        let out = self.forward(&inputs.input_ids, &inputs.mask, inputs.batch, dec);
        let (b, d) = (inputs.batch, self.config.d_model);
        let (s, t) = (inputs.input_ids.len() / b, dec.len() / b);
        let mut store = TensorStore::default();
        store.insert(
            "encoder_last_hidden_state",
            StoredTensor::f32(vec![b, s, d], out.encoder_hidden),
        );
        store.insert(
            "decoder_hidden",
            StoredTensor::f32(vec![b, t, d], out.decoder_hidden),
        );
        store.insert("logits", StoredTensor::f32(vec![b, t, vocab], out.logits));
        Ok(store)
    }

    /// [`AnyT5::generate_tensors`] with this model's weights (f32, bf16 or f16).
    pub fn generate_tensors(
        &self,
        inputs: &TensorStore,
        options: &GenerateOptions,
    ) -> Result<TensorStore> {
        let inputs = Inputs::read(inputs)?;
        inputs.check_ids(&inputs.input_ids, "input_ids", self.config.vocab_size)?;
        let enc = self.encode_real(&inputs.input_ids, &inputs.mask, inputs.batch);
        let out = self.generate_encoded(&enc, &inputs.mask, inputs.batch, options);
        let b = inputs.batch;
        let len = out.sequences.first().map_or(0, Vec::len);
        let flat: Vec<i64> = out.sequences.iter().flatten().map(|&t| t as i64).collect();
        let mut store = TensorStore::default();
        store.insert("sequences", StoredTensor::i64(vec![b, len], flat));
        store.insert(
            "decoder_hidden",
            StoredTensor::f32(
                vec![b, len.saturating_sub(1), self.config.d_model],
                out.hidden,
            ),
        );
        Ok(store)
    }
}

/// Token ids and masks read from the inputs.
struct Inputs {
    /// The file they came from, for error messages.
    origin: std::path::PathBuf,
    input_ids: Vec<usize>,
    mask: Vec<bool>,
    batch: usize,
    decoder_input_ids: Option<Vec<usize>>,
}

fn invalid(store: &TensorStore, message: String) -> LmError {
    LmError::Invalid(format!("inputs `{}`: {message}", store.origin.display()))
}

/// The i64 tensor `name` as `[batch, tokens]` ids, if present.
fn ids(store: &TensorStore, name: &str) -> Result<Option<(Vec<usize>, [usize; 2])>> {
    let Some(t) = store.get(name) else {
        return Ok(None);
    };
    let values = t.as_i64().ok_or_else(|| {
        invalid(
            store,
            format!("`{name}` must be an integer tensor, it is {}", t.disk_dtype),
        )
    })?;
    let [b, n] = t.shape[..] else {
        return Err(invalid(
            store,
            format!("`{name}` must be [batch, tokens], it is {:?}", t.shape),
        ));
    };
    if b == 0 || n == 0 {
        return Err(invalid(
            store,
            format!(
                "`{name}` must be [batch, tokens] with at least one row and one token, it is {:?}",
                t.shape
            ),
        ));
    }
    if values.iter().any(|&v| v < 0) {
        return Err(invalid(store, format!("`{name}` has negative entries")));
    }
    Ok(Some((values.iter().map(|&v| v as usize).collect(), [b, n])))
}

impl Inputs {
    fn read(store: &TensorStore) -> Result<Self> {
        let (input_ids, shape) = ids(store, "input_ids")?
            .ok_or_else(|| invalid(store, "there is no `input_ids` tensor".into()))?;
        let mask = match ids(store, "attention_mask")? {
            Some((m, s)) if s == shape => m.into_iter().map(|v| v != 0).collect(),
            Some((_, s)) => {
                return Err(invalid(
                    store,
                    format!("`attention_mask` must be {shape:?} (as `input_ids`), it is {s:?}"),
                ))
            }
            None => vec![true; input_ids.len()],
        };
        let decoder_input_ids = match ids(store, "decoder_input_ids")? {
            Some((d, s)) if s[0] == shape[0] => Some(d),
            Some((_, s)) => {
                return Err(invalid(
                    store,
                    format!(
                        "`decoder_input_ids` must be [{}, tokens] (the batch of `input_ids`), it is {s:?}",
                        shape[0]
                    ),
                ))
            }
            None => None,
        };
        Ok(Inputs {
            origin: store.origin.clone(),
            input_ids,
            mask,
            batch: shape[0],
            decoder_input_ids,
        })
    }
}

impl Inputs {
    /// An error about these inputs, naming their file.
    fn invalid(&self, message: String) -> LmError {
        LmError::Invalid(format!("inputs `{}`: {message}", self.origin.display()))
    }

    fn check_vocab<P: T5Dims>(&self, ids: &[usize], name: &str) -> Result<()> {
        self.check_ids(ids, name, P::Vocab::SIZE)
    }

    fn check_ids(&self, ids: &[usize], name: &str, vocab: usize) -> Result<()> {
        match ids.iter().find(|&&i| i >= vocab) {
            Some(i) => {
                Err(self.invalid(format!("`{name}` holds id {i}, the vocabulary has {vocab}")))
            }
            None => Ok(()),
        }
    }
}

fn f32_tensor<S: Shape, D: Device<f32>>(t: &Tensor<S, f32, D>) -> StoredTensor {
    StoredTensor::f32(pixel_core::params::shape_of(t), t.as_vec())
}

fn forward<P: T5Dims, D: Device<f32>>(model: &T5<P, D>, inputs: &Inputs) -> Result<TensorStore> {
    let dec = inputs.decoder_input_ids.as_ref().ok_or_else(|| {
        inputs.invalid("the forward pass needs `decoder_input_ids` [batch, tokens]".into())
    })?;
    inputs.check_vocab::<P>(&inputs.input_ids, "input_ids")?;
    inputs.check_vocab::<P>(dec, "decoder_input_ids")?;
    let enc = model.encode::<NoneTape>(model.ids(&inputs.input_ids, inputs.batch), &inputs.mask);
    let hidden = model.decode::<NoneTape>(model.ids(dec, inputs.batch), enc.clone(), &inputs.mask);
    let logits = model.lm_logits(hidden.clone());
    let mut store = TensorStore::default();
    store.insert("encoder_last_hidden_state", f32_tensor(&enc));
    store.insert("decoder_hidden", f32_tensor(&hidden));
    store.insert("logits", f32_tensor(&logits));
    Ok(store)
}

fn generate<P: T5Dims, D: Device<f32>>(
    model: &T5<P, D>,
    inputs: &Inputs,
    options: &GenerateOptions,
) -> Result<TensorStore> {
    inputs.check_vocab::<P>(&inputs.input_ids, "input_ids")?;
    let enc = model.encode::<NoneTape>(model.ids(&inputs.input_ids, inputs.batch), &inputs.mask);
    let out = model.generate(&enc, &inputs.mask, options);
    let len = out.sequences.first().map_or(0, Vec::len);
    let flat: Vec<i64> = out.sequences.iter().flatten().map(|&t| t as i64).collect();
    let mut store = TensorStore::default();
    store.insert(
        "sequences",
        StoredTensor::i64(vec![inputs.batch, len], flat),
    );
    store.insert("decoder_hidden", f32_tensor(&out.hidden));
    Ok(store)
}
