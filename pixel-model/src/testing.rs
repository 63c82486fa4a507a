//! For tests: the demo config (`configs/demo.toml`) by section, as the types that read them, so
//! a test of the model, a head or the tasks sets up what the demo trains without the runners'
//! experiment config, which sits above them. The functions panic on a broken demo config: they
//! read a file of this repository, not user input.
use serde::de::DeserializeOwned;

/// `configs/demo.toml`.
pub const DEMO_CONFIG: &str = include_str!("../../configs/demo.toml");

/// The demo config's section `key` (`data`, `model`, `tasks`).
pub fn demo_section<T: DeserializeOwned>(key: &str) -> T {
    section(DEMO_CONFIG, key)
}

/// The demo config's section `key`, with `heads` (TOML `[[model.heads]]` tables) in place of
/// its heads.
pub fn demo_section_with_heads<T: DeserializeOwned>(key: &str, heads: &str) -> T {
    section(&demo_with_heads(heads), key)
}

/// The demo config's text with `heads` in place of its `[[model.heads]]` tables.
pub fn demo_with_heads(heads: &str) -> String {
    let start = DEMO_CONFIG
        .find("[[model.heads]]")
        .expect("the demo config has heads");
    let end = DEMO_CONFIG
        .find("[model.lm]")
        .expect("the demo config has [model.lm]");
    format!("{}{heads}\n{}", &DEMO_CONFIG[..start], &DEMO_CONFIG[end..])
}

fn section<T: DeserializeOwned>(text: &str, key: &str) -> T {
    let table: toml::Table = toml::from_str(text).unwrap_or_else(|e| panic!("demo config: {e}"));
    let value = table
        .get(key)
        .unwrap_or_else(|| panic!("demo config: no [{key}]"))
        .clone();
    value
        .try_into()
        .unwrap_or_else(|e| panic!("demo config [{key}]: {e}"))
}
