//! `pixel export-shapes`: ShapesLN written as Localized Narratives, RefCOCO (MDETR) and Visual
//! Genome files, which `[dataset]` in an experiment config reads back.
use pixel_data::data_source::export_shapes;
use pixel_data::shapes_ln::ShapesLn;
use pixel_run::experiment::ExperimentConfig;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
#[command(after_help = "Example:\n  \
    pixel export-shapes --out runs/shapes-ln-files --train 4000 --val 150\n  \
    pixel demo --config configs/demo-files.toml --out runs/demo-files\n\n\
    Writes OUT/images/{train,val}/<index>.png and, per split, OUT/{train,val}/\n\
    localized_narratives.jsonl, refcoco_mdetr.json and region_descriptions.json;\n\
    prints the [dataset] config section that reads them.")]
pub struct ExportArgs {
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
    /// Training images to write (images 0..N of the generator's train split).
    #[arg(long)]
    pub train: u64,
    /// Validation images to write.
    #[arg(long)]
    pub val: u64,
    /// Experiment config whose `seed` and `[data]` set the generator; defaults to the built-in
    /// `configs/demo.toml`.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

pub fn run(args: ExportArgs) -> Result<(), Box<dyn std::error::Error>> {
    let config = match &args.config {
        Some(path) => ExperimentConfig::load(path)?,
        None => ExperimentConfig::builtin()?,
    };
    let data = ShapesLn::new(config.data.clone(), config.seed)?;
    let dataset = export_shapes(&data, &args.out, args.train, args.val)?;
    println!(
        "wrote {} training and {} validation images with their annotations to {}\n\
         to train from them, put this in an experiment config:\n\n{}",
        args.train,
        args.val,
        args.out.display(),
        dataset.to_toml_section()?
    );
    Ok(())
}
