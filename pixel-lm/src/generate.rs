//! Decoding with a key/value cache: greedy search and beam search with the semantics of HF
//! `generate` (`do_sample=False`, `length_penalty=1.0`, `early_stopping=False`).
//!
//! Each step runs the decoder on one new token per row: self-attention keys and values are
//! appended to a per-block cache, cross-attention keys and values are computed once from the
//! encoder output. Output heads (PixelLLM's point head) run on the decoder features of each step
//! and are never fed back, so generation also returns, for every generated position of the
//! returned sequences, the decoder's final hidden state that predicted the token there.
use crate::config::T5Config;
use crate::dims::T5Dims;
use crate::host_decoder::{Decoding, Embed};
use crate::host_weights::DecoderWeights;
use crate::t5::T5;
use dfdx::prelude::*;
use pixel_core::nn::{attention_with_bias, merge_heads, padding_bias, split_heads, Heads, Seq};
use std::sync::Arc;

/// How to generate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GenerateOptions {
    /// New tokens after the decoder start token, HF's `max_new_tokens`.
    pub max_new_tokens: usize,
    /// 1 = greedy search.
    pub num_beams: usize,
    /// HF's `length_penalty` (beam search only): a finished hypothesis scores
    /// `sum log p / generated_len^length_penalty`.
    pub length_penalty: f32,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_new_tokens: 20,
            num_beams: 1,
            length_penalty: 1.0,
        }
    }
}

/// Generated sequences and the decoder features that produced them.
#[derive(Debug, Clone)]
pub struct Generation<M: ConstDim, D: Device<f32>> {
    /// `[batch][len]`, each starting with the decoder start token (pad, 0). Greedy pads finished
    /// rows with pad; beam search fills rows shorter than the longest with HF's fill value
    /// (`pad_token_id`, or `eos_token_id` when pad is 0, as HF 4.5x does).
    pub sequences: Vec<Vec<usize>>,
    /// `[batch, len - 1, d_model]`: `hidden[b, i]` is the decoder's final hidden state (after
    /// `final_layer_norm`, before the LM head) that predicted `sequences[b][i + 1]`, i.e.
    /// `decode(sequences[b][..len - 1])[i]`. Beam search leaves zeros past a row's end.
    pub hidden: Seq<M, D>,
}

/// Keys and values of one decoder block.
#[derive(Debug, Clone)]
struct BlockCache<D: Device<f32>> {
    self_k: Option<Heads<D>>,
    self_v: Option<Heads<D>>,
    cross_k: Heads<D>,
    cross_v: Heads<D>,
}

/// The decoder's state between steps: cached keys/values of every block.
#[derive(Debug, Clone)]
pub struct DecoderCache<D: Device<f32>> {
    blocks: Vec<BlockCache<D>>,
    /// Padding bias over encoder tokens, `[rows, heads, 1, source]`.
    cross_bias: Heads<D>,
    /// Tokens decoded so far.
    pub len: usize,
    pub rows: usize,
}

impl<D: Device<f32>> DecoderCache<D> {
    /// Keeps row `rows[i]` as row `i` of the self-attention caches (beam reordering); the
    /// cross-attention caches are left as they are, since beams of one input share them.
    pub fn reorder(&mut self, rows: &[usize]) {
        assert_eq!(
            rows.len(),
            self.rows,
            "reordering needs one source row per row"
        );
        let Some(first) = self.blocks.first().and_then(|b| b.self_k.as_ref()) else {
            return;
        };
        let idx = first.device().tensor_from_vec(rows.to_vec(), (rows.len(),));
        for block in &mut self.blocks {
            block.self_k = block.self_k.take().map(|k| k.gather(idx.clone()));
            block.self_v = block.self_v.take().map(|v| v.gather(idx.clone()));
        }
    }
}

impl<P: T5Dims, D: Device<f32>> T5<P, D> {
    /// Computes every block's cross-attention keys and values from the encoder output
    /// `[rows, source, d_model]` and its mask (`[rows * source]`, true = real).
    pub fn start_decoding(
        &self,
        encoder_hidden: &Seq<P::Model, D>,
        encoder_mask: &[bool],
    ) -> DecoderCache<D> {
        let (rows, source, _) = *encoder_hidden.shape();
        let heads = self.decoder.heads();
        let blocks = self
            .decoder
            .block
            .iter()
            .map(|block| {
                let (attn, _) = block
                    .cross_attention
                    .as_ref()
                    .expect("decoder blocks cross-attend");
                BlockCache {
                    self_k: None,
                    self_v: None,
                    cross_k: split_heads(attn.k.forward(encoder_hidden.clone()), heads),
                    cross_v: split_heads(attn.v.forward(encoder_hidden.clone()), heads),
                }
            })
            .collect();
        DecoderCache {
            blocks,
            cross_bias: padding_bias(&self.device(), encoder_mask, rows, heads, 1, source),
            len: 0,
            rows,
        }
    }

    /// Decodes one token per row (`ids.len() == rows`) at position `cache.len`, appending to the
    /// cache: the final hidden state `[rows, 1, d_model]`.
    pub fn decode_step(&self, ids: &[usize], cache: &mut DecoderCache<D>) -> Seq<P::Model, D> {
        assert_eq!(ids.len(), cache.rows, "one token per row");
        let rows = cache.rows;
        let heads = self.decoder.heads();
        let pos = cache.len;
        let mut x: Seq<P::Model, D> = self.embed_tokens(self.ids(ids, rows));
        let bias: Heads<D> = self.decoder.block[0].self_attention.position_bias(
            rows,
            1,
            pos + 1,
            pos,
            false,
            self.decoder.max_distance,
        );
        for (block, c) in self.decoder.block.iter().zip(&mut cache.blocks) {
            let attn = &block.self_attention;
            let h = block.self_attention_norm.forward(x.clone());
            let q = split_heads(attn.q.forward(h.clone()), heads);
            let k_new = split_heads(attn.k.forward(h.clone()), heads);
            let v_new = split_heads(attn.v.forward(h), heads);
            let (k, v) = match (c.self_k.take(), c.self_v.take()) {
                (Some(k), Some(v)) => (
                    (k, k_new).concat_along(Axis::<2>),
                    (v, v_new).concat_along(Axis::<2>),
                ),
                _ => (k_new, v_new),
            };
            let out = attention_with_bias(q, k.clone(), v.clone(), bias.clone(), 1.0);
            c.self_k = Some(k);
            c.self_v = Some(v);
            x = x + attn.o.forward(merge_heads::<P::Inner, D, NoneTape>(out));

            let (cross, norm) = block
                .cross_attention
                .as_ref()
                .expect("decoder blocks cross-attend");
            let h = norm.forward(x.clone());
            let q = split_heads(cross.q.forward(h), heads);
            let out = attention_with_bias(
                q,
                c.cross_k.clone(),
                c.cross_v.clone(),
                cache.cross_bias.clone(),
                1.0,
            );
            x = x + cross.o.forward(merge_heads::<P::Inner, D, NoneTape>(out));

            let h = block.ff_norm.forward(x.clone());
            x = x + block.ff.forward(h);
        }
        cache.len += 1;
        self.decoder.final_layer_norm.forward(x)
    }

    /// Greedy or beam search from precomputed encoder states `[batch, source, d_model]` and
    /// their mask (`[batch * source]`, true = real token): every row of the batch is decoded
    /// at once, each step reading the decoder weights once for all rows (see
    /// [`crate::host_decoder`]). Rows may have different lengths (padding); each row's result
    /// equals that row decoded alone.
    pub fn generate(
        &self,
        encoder_hidden: &Seq<P::Model, D>,
        encoder_mask: &[bool],
        options: &GenerateOptions,
    ) -> Generation<P::Model, D> {
        let batch = encoder_hidden.shape().0;
        let out = search(
            self,
            &self.host_weights(),
            &self.config,
            &encoder_hidden.as_vec(),
            encoder_mask,
            batch,
            options,
        );
        self.to_generation(out)
    }

    fn to_generation(&self, out: HostGeneration) -> Generation<P::Model, D> {
        let batch = out.sequences.len();
        let steps = out.sequences.first().map_or(1, Vec::len) - 1;
        Generation {
            sequences: out.sequences,
            hidden: self
                .device()
                .tensor_from_vec(out.hidden, (batch, steps, P::Model::default())),
        }
    }

    /// Greedy search as HF's: argmax each step, rows that emitted EOS continue with pad, stop
    /// when every row has emitted EOS or after `max_new_tokens`.
    pub fn generate_greedy(
        &self,
        encoder_hidden: &Seq<P::Model, D>,
        encoder_mask: &[bool],
        max_new_tokens: usize,
    ) -> Generation<P::Model, D> {
        self.generate(
            encoder_hidden,
            encoder_mask,
            &GenerateOptions {
                max_new_tokens,
                ..Default::default()
            },
        )
    }

    /// Greedy search that re-runs the full decoder on the whole prefix each step (no cache):
    /// the reference the cached path is tested and benchmarked against.
    pub fn generate_greedy_uncached(
        &self,
        encoder_hidden: &Seq<P::Model, D>,
        encoder_mask: &[bool],
        max_new_tokens: usize,
    ) -> Generation<P::Model, D> {
        let batch = encoder_hidden.shape().0;
        let mut prefix: Vec<Vec<usize>> = vec![Vec::new(); batch];
        let out = greedy(&self.config, batch, max_new_tokens, |ids| {
            for (row, &id) in prefix.iter_mut().zip(ids) {
                row.push(id);
            }
            let steps = prefix[0].len();
            let flat: Vec<usize> = prefix.concat();
            let hidden = self.decode::<NoneTape>(
                self.ids(&flat, batch),
                encoder_hidden.clone(),
                encoder_mask,
            );
            let last = hidden
                .slice((.., steps - 1.., ..))
                .realize::<(usize, usize, P::Model)>();
            let logits = self.lm_logits(last.clone()).as_vec();
            (last.as_vec(), logits)
        });
        self.to_generation(out)
    }

    /// Beam search as HF's (see [`beam`]).
    pub fn generate_beam(
        &self,
        encoder_hidden: &Seq<P::Model, D>,
        encoder_mask: &[bool],
        max_new_tokens: usize,
        num_beams: usize,
        length_penalty: f32,
    ) -> Generation<P::Model, D> {
        self.generate(
            encoder_hidden,
            encoder_mask,
            &GenerateOptions {
                max_new_tokens,
                num_beams,
                length_penalty,
            },
        )
    }
}

/// Generated sequences and the decoder features that produced them, on host vectors (what
/// [`Generation`] holds as a tensor).
#[derive(Debug, Clone, PartialEq)]
pub struct HostGeneration {
    /// `[batch][len]`, as [`Generation::sequences`].
    pub sequences: Vec<Vec<usize>>,
    /// `[batch, len - 1, d_model]`, as [`Generation::hidden`].
    pub hidden: Vec<f32>,
}

/// Greedy or beam search over `batch` inputs whose encoder states `[batch * source, d_model]`
/// and mask are given, with `weights` and the token embedding of `model`.
pub(crate) fn search<E: Embed + ?Sized>(
    model: &E,
    weights: &Arc<DecoderWeights>,
    config: &T5Config,
    encoder_hidden: &[f32],
    encoder_mask: &[bool],
    batch: usize,
    options: &GenerateOptions,
) -> HostGeneration {
    let beams = options.num_beams.max(1);
    let mut decoder = weights.start(encoder_hidden, encoder_mask, batch, beams);
    decoder.reserve(options.max_new_tokens + 1);
    let mut decoding = Decoding { model, decoder };
    if beams == 1 {
        greedy(config, batch, options.max_new_tokens, |ids| {
            decoding.step(ids)
        })
    } else {
        beam(
            config,
            &mut decoding,
            batch,
            options.max_new_tokens,
            beams,
            options.length_penalty,
        )
    }
}

/// Greedy search as HF's over a step function (ids of the last tokens -> hidden states and
/// logits of every row).
fn greedy(
    config: &T5Config,
    batch: usize,
    max_new_tokens: usize,
    mut step: impl FnMut(&[usize]) -> (Vec<f32>, Vec<f32>),
) -> HostGeneration {
    let (pad, eos, start) = (
        config.pad_token_id,
        config.eos(),
        config.decoder_start_token_id,
    );
    let (vocab, model) = (config.vocab_size, config.d_model);
    let mut sequences = vec![vec![start]; batch];
    let mut unfinished = vec![true; batch];
    let mut states: Vec<Vec<f32>> = Vec::new();
    for _ in 0..max_new_tokens {
        let last: Vec<usize> = sequences.iter().map(|s| s[s.len() - 1]).collect();
        let (hidden, logits) = step(&last);
        states.push(hidden);
        for b in 0..batch {
            let next = if unfinished[b] {
                argmax(&logits[b * vocab..(b + 1) * vocab])
            } else {
                pad
            };
            sequences[b].push(next);
            unfinished[b] &= next != eos;
        }
        if unfinished.iter().all(|u| !u) {
            break;
        }
    }
    let mut hidden = Vec::with_capacity(batch * states.len() * model);
    for b in 0..batch {
        for s in &states {
            hidden.extend_from_slice(&s[b * model..(b + 1) * model]);
        }
    }
    HostGeneration { sequences, hidden }
}

/// Beam search as HF's (`do_sample=False`, `early_stopping=False`) on a decoder started with
/// `num_beams` rows per input: each step keeps the `2 * num_beams` best continuations of all
/// beams; those ending in EOS among the first `num_beams` become finished hypotheses scored
/// `sum log p / len^length_penalty`, the best `num_beams` others continue. An input stops when
/// no running beam can beat its worst finished hypothesis; the result is the best finished
/// hypothesis of each input.
fn beam<E: Embed + ?Sized>(
    config: &T5Config,
    decoding: &mut Decoding<'_, E>,
    batch: usize,
    max_new_tokens: usize,
    num_beams: usize,
    length_penalty: f32,
) -> HostGeneration {
    let k = num_beams;
    let rows = batch * k;
    let (pad, eos, start) = (
        config.pad_token_id,
        config.eos(),
        config.decoder_start_token_id,
    );
    let fill = if pad != 0 { pad } else { eos };
    let (vocab, model) = (config.vocab_size, config.d_model);
    let max_length = 1 + max_new_tokens;

    let fresh = |score: f32| Hyp {
        tokens: vec![start],
        hidden: Vec::new(),
        score,
        finished: false,
    };
    let mut running: Vec<Vec<Hyp>> = (0..batch)
        .map(|_| {
            (0..k)
                .map(|i| fresh(if i == 0 { 0.0 } else { -1e9 }))
                .collect()
        })
        .collect();
    let mut finished: Vec<Vec<Hyp>> = (0..batch)
        .map(|_| (0..k).map(|_| fresh(-1e9)).collect())
        .collect();
    let mut improvable = vec![true; batch];
    if max_new_tokens > 0 {
        loop {
            let cur_len = running[0][0].tokens.len();
            let last: Vec<usize> = running
                .iter()
                .flat_map(|beams| beams.iter().map(|h| h.tokens[h.tokens.len() - 1]))
                .collect();
            let (hidden, logits) = decoding.step(&last);
            let at_max = cur_len + 1 >= max_length;
            let mut all_hit = true;
            let mut parents = Vec::with_capacity(rows);
            for b in 0..batch {
                // Accumulated log-probabilities of all continuations of all beams.
                let mut scores = Vec::with_capacity(k * vocab);
                for (i, hyp) in running[b].iter().enumerate() {
                    let row = &logits[(b * k + i) * vocab..(b * k + i + 1) * vocab];
                    scores.extend(log_softmax(row).into_iter().map(|l| l + hyp.score));
                }
                let top = top_k(&scores, 2 * k);
                let cands: Vec<(usize, usize, f32, bool)> = top
                    .iter()
                    .map(|&idx| {
                        let tok = idx % vocab;
                        (idx / vocab, tok, scores[idx], tok == eos || at_max)
                    })
                    .collect();
                all_hit &= cands.iter().all(|c| c.3);
                let extend = |&(beam, tok, score, _): &(usize, usize, f32, bool)| {
                    let parent = &running[b][beam];
                    let mut tokens = parent.tokens.clone();
                    tokens.push(tok);
                    let mut h = parent.hidden.clone();
                    let row = b * k + beam;
                    h.extend_from_slice(&hidden[row * model..(row + 1) * model]);
                    Hyp {
                        tokens,
                        hidden: h,
                        score,
                        finished: false,
                    }
                };
                // Beams that continue: the best `k` candidates that did not stop.
                let live: Vec<f32> = cands
                    .iter()
                    .map(|c| c.2 + if c.3 { -1e9 } else { 0.0 })
                    .collect();
                let next: Vec<Hyp> = top_k(&live, k)
                    .into_iter()
                    .map(|j| {
                        parents.push(b * k + cands[j].0);
                        Hyp {
                            score: live[j],
                            ..extend(&cands[j])
                        }
                    })
                    .collect();
                // Finished hypotheses: merge the stopped top-`k` candidates into the best `k`.
                let norm = (cur_len as f32).powf(length_penalty);
                let mut merged: Vec<f32> = finished[b].iter().map(|h| h.score).collect();
                for (j, c) in cands.iter().enumerate() {
                    let just_finished = c.3 && j < k;
                    let mut s = c.2 / norm;
                    if !improvable[b] {
                        s += -1e9;
                    }
                    if !just_finished {
                        s += -1e9;
                    }
                    merged.push(s);
                }
                let keep = top_k(&merged, k);
                let old = std::mem::take(&mut finished[b]);
                finished[b] = keep
                    .into_iter()
                    .map(|m| {
                        if m < k {
                            old[m].clone()
                        } else {
                            let j = m - k;
                            Hyp {
                                score: merged[m],
                                finished: cands[j].3 && j < k,
                                ..extend(&cands[j])
                            }
                        }
                    })
                    .collect();
                running[b] = next;
            }
            decoding.decoder.reorder(&parents);
            // Can a running beam still beat the worst finished hypothesis?
            let new_len = cur_len + 1;
            for b in 0..batch {
                let best = running[b][0].score / ((new_len - 1) as f32).powf(length_penalty);
                let min = finished[b]
                    .iter()
                    .map(|h| h.score)
                    .fold(f32::INFINITY, f32::min);
                improvable[b] &= finished[b]
                    .iter()
                    .any(|h| best > if h.finished { min } else { -1e9 });
            }
            if all_hit || !improvable.iter().any(|&i| i) {
                break;
            }
        }
    }
    let best: Vec<&Hyp> = finished.iter().map(|f| &f[0]).collect();
    let len = best.iter().map(|h| h.tokens.len()).max().unwrap_or(1);
    let mut hidden = vec![0.0f32; batch * (len - 1) * model];
    let sequences = best
        .iter()
        .enumerate()
        .map(|(b, h)| {
            let off = b * (len - 1) * model;
            hidden[off..off + h.hidden.len()].copy_from_slice(&h.hidden);
            let mut s = h.tokens.clone();
            s.resize(len, fill);
            s
        })
        .collect();
    HostGeneration { sequences, hidden }
}

#[derive(Debug, Clone)]
struct Hyp {
    tokens: Vec<usize>,
    /// `(tokens.len() - 1) * d_model` decoder states.
    hidden: Vec<f32>,
    score: f32,
    finished: bool,
}

/// The index of the first largest value (torch.argmax's choice).
fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best
}

/// `log_softmax` of one row, in f32 as HF computes it.
fn log_softmax(row: &[f32]) -> Vec<f32> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = row.iter().map(|&x| (x - max).exp()).sum();
    let lse = max + sum.ln();
    row.iter().map(|&x| x - lse).collect()
}

/// Indices of the `k` largest values, largest first; ties go to the lower index.
fn top_k(values: &[f32], k: usize) -> Vec<usize> {
    let order = |a: &usize, b: &usize| {
        values[*b]
            .partial_cmp(&values[*a])
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.cmp(b))
    };
    let mut idx: Vec<usize> = (0..values.len()).collect();
    let k = k.min(idx.len());
    if k < idx.len() && k > 0 {
        idx.select_nth_unstable_by(k - 1, order);
        idx.truncate(k);
    }
    idx.sort_by(order);
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_is_sorted_and_breaks_ties_by_index() {
        assert_eq!(top_k(&[1.0, 3.0, 3.0, 2.0, -1.0], 3), vec![1, 2, 3]);
        assert_eq!(top_k(&[0.5], 4), vec![0]);
    }

    #[test]
    fn log_softmax_exponentiates_to_one() {
        let l = log_softmax(&[1.0, 2.0, 3.0, -50.0]);
        let total: f32 = l.iter().map(|v| v.exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
    }
}
