//! The channel dims of a T5 model as types ([`T5Dims`]), and the check of a `config.json`
//! against them; the model (`t5`) and the presets (`presets`) both build on this.
use crate::config::T5Config;
use dfdx::shapes::ConstDim;

/// The channel dims of a T5 model, as types.
pub trait T5Dims: 'static + Copy + Clone + Default + std::fmt::Debug + Send + Sync {
    /// The preset's name, e.g. `flan-t5-small`.
    const NAME: &'static str;
    /// `vocab_size`.
    type Vocab: ConstDim;
    /// `d_model`.
    type Model: ConstDim;
    /// `num_heads * d_kv`.
    type Inner: ConstDim;
    /// `d_ff`.
    type Ff: ConstDim;
}

/// `(name, value in the config, value of the preset)` for each channel dim that differs.
pub fn dim_differences<P: T5Dims>(config: &T5Config) -> Vec<(&'static str, usize, usize)> {
    [
        ("vocab_size", config.vocab_size, P::Vocab::SIZE),
        ("d_model", config.d_model, P::Model::SIZE),
        ("num_heads * d_kv", config.inner_dim(), P::Inner::SIZE),
        ("d_ff", config.d_ff, P::Ff::SIZE),
    ]
    .into_iter()
    .filter(|(_, a, b)| a != b)
    .collect()
}

/// Fails, naming every dim that differs, when `config` does not have `P`'s dims.
pub fn check_dims<P: T5Dims>(config: &T5Config) -> std::result::Result<(), String> {
    let diffs = dim_differences::<P>(config);
    if diffs.is_empty() {
        return Ok(());
    }
    Err(format!(
        "the config does not have the dims of preset `{}`: {}",
        P::NAME,
        describe(&diffs)
    ))
}

pub(crate) fn describe(diffs: &[(&str, usize, usize)]) -> String {
    diffs
        .iter()
        .map(|(name, got, want)| format!("{name} is {got}, the preset has {want}"))
        .collect::<Vec<_>>()
        .join("; ")
}
