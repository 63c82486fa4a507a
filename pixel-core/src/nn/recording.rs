//! Recording attention probabilities, to see what a query reads (diagnostics).
//!
//! [`record_attention`] runs a closure and collects the probabilities of every attention call
//! made inside it on the same thread, in call order. Outside a recording the attention functions
//! record nothing and the models' code paths are unchanged.
use crate::nn::Heads;
use dfdx::prelude::*;
use std::cell::RefCell;

/// The probabilities of one attention call, `[batch, heads, queries, keys]`, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionMap {
    pub shape: (usize, usize, usize, usize),
    pub probs: Vec<f32>,
}

impl AttentionMap {
    /// What query `query` of head `head` of example `batch` gives each key.
    pub fn row(&self, batch: usize, head: usize, query: usize) -> &[f32] {
        let (_, heads, queries, keys) = self.shape;
        let start = ((batch * heads + head) * queries + query) * keys;
        &self.probs[start..start + keys]
    }
}

thread_local! {
    /// The maps of the innermost recording on this thread; `None` outside one.
    static RECORDED: RefCell<Option<Vec<AttentionMap>>> = const { RefCell::new(None) };
}

/// Runs `f`; returns its result and the attention maps computed inside it on this thread, in
/// call order. A recording inside `f` keeps its own calls: they do not reach this one.
pub fn record_attention<R>(f: impl FnOnce() -> R) -> (R, Vec<AttentionMap>) {
    /// Puts the enclosing recording back, also when `f` panics.
    struct Restore(Option<Vec<AttentionMap>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let outer = self.0.take();
            RECORDED.with(|r| *r.borrow_mut() = outer);
        }
    }
    let _restore = Restore(RECORDED.with(|r| r.replace(Some(Vec::new()))));
    let out = f();
    let maps = RECORDED.with(|r| r.borrow_mut().take()).unwrap_or_default();
    (out, maps)
}

/// Whether a recording is running on this thread: attention that bypasses
/// [`crate::nn::attention_with_bias`] (a fused kernel) must not run then, or its maps are lost.
pub fn is_recording() -> bool {
    RECORDED.with(|r| r.borrow().is_some())
}

/// Adds `probs` to the current recording, if any.
pub(crate) fn note_attention<D: Device<f32>, T: Tape<f32, D>>(probs: &Heads<D, T>) {
    RECORDED.with(|r| {
        if let Some(maps) = r.borrow_mut().as_mut() {
            let (b, h, q, k) = *probs.shape();
            maps.push(AttentionMap {
                shape: (b, h, q, k),
                probs: probs.retaped::<NoneTape>().as_vec(),
            });
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{attention, attention_with_bias};
    use crate::testing::assert_close;

    fn inputs(dev: &Cpu, queries: usize, keys: usize) -> [Heads<Cpu>; 3] {
        [
            dev.sample_normal_like(&(2, 3, queries, 4)),
            dev.sample_normal_like(&(2, 3, keys, 4)),
            dev.sample_normal_like(&(2, 3, keys, 4)),
        ]
    }

    #[test]
    fn records_each_call_in_order_with_its_softmax() {
        let dev: Cpu = Cpu::seed_from_u64(5);
        let [q, k, v] = inputs(&dev, 2, 5);
        let [q2, k2, v2] = inputs(&dev, 1, 3);
        let bias: Heads<Cpu> = dev.sample_normal_like(&(2, 3, 1, 3));
        let (recorded, maps) = record_attention(|| {
            attention(q.clone(), k.clone(), v.clone(), 0.5);
            attention_with_bias(q2.clone(), k2.clone(), v2.clone(), bias.clone(), 1.0)
        });
        let plain = attention_with_bias(q2.clone(), k2.clone(), v2.clone(), bias.clone(), 1.0);
        assert_eq!(recorded.as_vec(), plain.as_vec());
        assert_eq!(maps.len(), 2);
        assert_eq!(maps[0].shape, (2, 3, 2, 5));
        assert_eq!(maps[1].shape, (2, 3, 1, 3));
        let expected = (q.matmul(k.permute::<_, Axes4<0, 1, 3, 2>>()) * 0.5)
            .softmax::<Axis<3>>()
            .as_vec();
        assert_close(&maps[0].probs, &expected, 1e-6);
        let scores = q2.matmul(k2.permute::<_, Axes4<0, 1, 3, 2>>()) + bias;
        let expected = scores.softmax::<Axis<3>>().as_vec();
        assert_close(&maps[1].probs, &expected, 1e-6);
        // Example 1, head 2, query 1 of `[2, 3, 2, 5]`: the last row.
        let row = maps[0].row(1, 2, 1);
        assert_eq!(row, &maps[0].probs[55..60]);
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }

    #[test]
    fn records_nothing_outside_a_recording_and_nested_ones_keep_their_calls() {
        let dev: Cpu = Cpu::seed_from_u64(6);
        let [q, k, v] = inputs(&dev, 2, 3);
        attention(q.clone(), k.clone(), v.clone(), 1.0);
        let ((_, inner), outer) = record_attention(|| {
            attention(q.clone(), k.clone(), v.clone(), 1.0);
            let inner = record_attention(|| attention(q.clone(), k.clone(), v.clone(), 2.0));
            attention(q.clone(), k.clone(), v.clone(), 3.0);
            inner
        });
        assert_eq!(inner.len(), 1);
        assert_eq!(outer.len(), 2);
        assert_ne!(outer[0].probs, outer[1].probs);
    }

    #[test]
    fn a_panic_inside_a_recording_ends_it() {
        let dev: Cpu = Cpu::seed_from_u64(7);
        let [q, k, v] = inputs(&dev, 2, 3);
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            record_attention(|| panic!("inside"))
        }));
        assert!(caught.is_err());
        let (_, maps) = record_attention(|| attention(q.clone(), k.clone(), v.clone(), 1.0));
        assert_eq!(maps.len(), 1);
        attention(q, k, v, 1.0);
        assert!(RECORDED.with(|r| r.borrow().is_none()));
    }
}
