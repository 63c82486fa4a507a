//! `pixel inspect`: a preset's parameters. An image-encoder preset (`sam-vit-*`, `eva02-*`) is
//! built and its module tree printed; a PixelLLM preset (`pixel-tiny`, `pixelllm-*`) is listed
//! without building it whole (`pixel_model::model::layout`) and counted per part, trainable and
//! frozen, then its tree printed.
use crate::cmd_vision::{group, render_tree, vision_preset_params};
use pixel_core::params::ParamInfo;
#[cfg(test)]
use pixel_core::params::Trainable;
use pixel_core::DefaultDevice;
use pixel_model::heads::HeadRegistry;
use pixel_model::model::{parameter_list, parameters_by_part, ModelConfig, PartCount};
use pixel_model::presets::{with_preset, PixelDims, PresetVisitor, PRESETS};
use pixel_run::experiment::DEFAULT_DEMO_CONFIG;
use std::error::Error;
use std::path::{Path, PathBuf};

type CliResult = Result<(), Box<dyn Error>>;

/// Print a preset's parameters: per part, trainable and frozen (PixelLLM presets), and its
/// module tree.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  pixel inspect --preset pixelllm-paper\n  \
    pixel inspect --preset pixelllm-base --json\n  \
    pixel inspect --preset pixel-tiny --config configs/densecap.toml\n  \
    pixel inspect --preset sam-vit-h\n  pixel inspect --preset eva02-large --depth 2\n\n\
    A PixelLLM preset is counted with the [model] section it ships with (configs/models/, and\n\
    configs/demo.toml for pixel-tiny) or the one of --config. Its big blocks are built once per\n\
    kind and repeated, so pixelllm-paper needs about 2 GB, not 15.")]
pub struct InspectArgs {
    /// pixel-tiny, pixelllm-test|base|paper, sam-vit-b|l|h|test or
    /// eva02-tiny|small|base|large|test.
    #[arg(long)]
    pub preset: String,
    /// How many name levels of the module tree to show.
    #[arg(long, default_value_t = 3)]
    pub depth: usize,
    /// A TOML file whose [model] section to count (an experiment config or a configs/models/
    /// file); PixelLLM presets only.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Print the per-part counts as JSON instead of the tables.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: InspectArgs) -> CliResult {
    if !PRESETS.contains(&args.preset.as_str()) {
        if args.config.is_some() || args.json {
            return Err(format!(
                "--config and --json are for PixelLLM presets ({}), not `{}`",
                PRESETS.join(", "),
                args.preset
            )
            .into());
        }
        let params = vision_preset_params(&args.preset)?;
        print!("{}", render_tree(&args.preset, &params, args.depth));
        return Ok(());
    }
    let config = model_config(&args.preset, args.config.as_deref())?;
    let list = with_preset(&args.preset, ListModel(&config)).ok_or("a listed preset")??;
    let parts = parameters_by_part(&list, &config.trainable());
    if args.json {
        println!("{}", parts_json(&args.preset, &parts));
        return Ok(());
    }
    print!("{}", parts_table(&args.preset, &parts));
    println!();
    print!("{}", render_tree(&args.preset, &list, args.depth));
    Ok(())
}

/// The `[model]` section to count: `--config`'s, else the one the preset ships with.
fn model_config(preset: &str, path: Option<&Path>) -> Result<ModelConfig, Box<dyn Error>> {
    let config = match path {
        Some(path) => {
            let text = pixel_core::text::read_text(path)
                .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
            ModelConfig::from_toml(&text, path)?
        }
        None => match ModelConfig::shipped(preset) {
            Some(config) => config?,
            None => ModelConfig::from_toml(DEFAULT_DEMO_CONFIG, Path::new("configs/demo.toml"))?,
        },
    };
    if config.preset != preset {
        return Err(format!(
            "the config's model.preset is `{}`, not `{preset}`",
            config.preset
        )
        .into());
    }
    Ok(config)
}

struct ListModel<'a>(&'a ModelConfig);

impl PresetVisitor for ListModel<'_> {
    type Output = pixel_model::Result<Vec<ParamInfo>>;
    fn visit<P: PixelDims>(self) -> Self::Output {
        let dev = DefaultDevice::default();
        parameter_list::<P, _>(&dev, self.0, &HeadRegistry::builtin())
    }
}

/// Parts, their parameters, trainable and frozen, and the total.
fn parts_table(preset: &str, parts: &[PartCount]) -> String {
    let total = PartCount {
        part: "total",
        parameters: parts.iter().map(|p| p.parameters).sum(),
        trainable: parts.iter().map(|p| p.trainable).sum(),
    };
    let mut out = format!(
        "{preset}\n{:<26} {:>15} {:>15} {:>15}\n",
        "part", "parameters", "trainable", "frozen"
    );
    for p in parts.iter().chain(std::iter::once(&total)) {
        out.push_str(&format!(
            "{:<26} {:>15} {:>15} {:>15}\n",
            p.part,
            group(p.parameters),
            group(p.trainable),
            group(p.parameters - p.trainable)
        ));
    }
    out
}

fn parts_json(preset: &str, parts: &[PartCount]) -> serde_json::Value {
    let rows: Vec<serde_json::Value> = parts
        .iter()
        .map(|p| {
            serde_json::json!({
                "part": p.part,
                "parameters": p.parameters,
                "trainable": p.trainable,
            })
        })
        .collect();
    serde_json::json!({
        "preset": preset,
        "parameters": parts.iter().map(|p| p.parameters).sum::<usize>(),
        "trainable": parts.iter().map(|p| p.trainable).sum::<usize>(),
        "parts": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shows_frozen_as_parameters_minus_trainable() {
        let list = vec![
            ParamInfo::new("image_encoder.sam.pos_embed", vec![10, 100]),
            ParamInfo::new("heads.point.mlp.layers.0.weight", vec![3]),
        ];
        let parts = parameters_by_part(&list, &Trainable::all().freeze("image_encoder.sam.*"));
        let table = parts_table("x", &parts);
        assert!(table.contains("SAM image encoder"), "{table}");
        let total = table.lines().last().unwrap();
        assert_eq!(
            total.split_whitespace().collect::<Vec<_>>(),
            ["total", "1,003", "3", "1,000"]
        );
        assert_eq!(
            parameters_by_part(&list, &Trainable::all())[0].trainable,
            1000
        );
    }
}
