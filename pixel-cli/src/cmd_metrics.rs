//! `pixel metrics captions|refloc|densecap`: benchmark metrics on JSON files, printed as JSON.

use std::error::Error;
use std::path::PathBuf;

use pixel_metrics::{
    boxes, captions,
    densecap::{self, DensecapProtocol},
    masks,
    meteor::{Meteor, MeteorConfig, ParaphraseTable, SynonymDictionary},
    read_json,
};

/// Compute evaluation metrics from JSON files; prints one JSON object on stdout.
#[derive(Debug, clap::Subcommand)]
pub enum MetricsCommand {
    /// Caption metrics as pycocoevalcap: BLEU-1..4, METEOR, ROUGE-L, CIDEr-D.
    #[command(
        after_help = "Examples:\n  pixel metrics captions --refs refs.json --preds preds.json\n  \
        pixel metrics captions --refs refs.json --preds preds.json \\\n      \
        --meteor-jar .../site-packages/pycocoevalcap/meteor/meteor-1.5.jar   (exactly the jar's METEOR)\n\n\
        refs.json:  {\"391895\": [\"A man riding a bike.\", \"...\"], ...}\n\
        preds.json: {\"391895\": \"a man rides a bicycle\", ...}\n\
        Output: {\"bleu\": [b1, b2, b3, b4], \"meteor\": m, \"rouge_l\": r, \"cider\": c}"
    )]
    Captions(CaptionsArgs),
    /// Referring localization: Acc@0.5 and mIoU of boxes, or cIoU/gIoU/Acc@0.5 of masks.
    #[command(
        after_help = "Examples:\n  pixel metrics refloc --gt gt.json --preds preds.json\n  \
        pixel metrics refloc --masks --gt gt_masks.json --preds pred_masks.json\n\n\
        Boxes: {\"<id>\": [x, y, w, h], ...} in pixels -> {\"acc50\": f, \"miou\": f}\n\
        Masks: {\"<id>\": {\"size\": [h, w], \"counts\": \"<COCO RLE>\" | [runs]} | [[x, y, ...]]}\n\
        -> {\"ciou\": f, \"giou\": f, \"acc50\": f}"
    )]
    Refloc(RefLocArgs),
    /// Dense captioning mAP on Visual Genome (densecap protocol).
    #[command(
        after_help = "Example:\n  pixel metrics densecap --gt G.json --preds P.json\n\n\
        G.json: {\"images\": [{\"id\": 1}], \"annotations\": [{\"image_id\": 1, \"bbox\": [x, y, w, h], \"caption\": \"...\"}]}\n\
        P.json: [{\"image_id\": 1, \"bbox\": [x, y, w, h], \"caption\": \"...\", \"score\": 0.9}]\n\
        Output: {\"map\": f, \"map_detection\": f} (fractions in [0, 1])"
    )]
    Densecap(DensecapArgs),
}

/// Where the native METEOR gets the jar's optional data. Without any, METEOR uses exact and stem
/// matching only (within ~0.013 of the jar on captions); with `--meteor-jar` it reproduces
/// `meteor-1.5.jar -l en -norm` exactly.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct MeteorArgs {
    /// pycocoevalcap's meteor-1.5.jar: WordNet synonyms are read from it and the paraphrase
    /// table from data/paraphrase-en.gz beside it (loading takes a few seconds).
    #[arg(long)]
    pub meteor_jar: Option<PathBuf>,
    /// METEOR paraphrase table (e.g. meteor/data/paraphrase-en.gz).
    #[arg(long)]
    pub paraphrase: Option<PathBuf>,
    /// Folder with english.synsets and english.exceptions (the jar's synonym/ folder).
    #[arg(long)]
    pub synonyms: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct CaptionsArgs {
    /// References: {"<id>": ["caption", ...]}.
    #[arg(long)]
    pub refs: PathBuf,
    /// Predictions: {"<id>": "caption"}.
    #[arg(long)]
    pub preds: PathBuf,
    #[command(flatten)]
    pub meteor: MeteorArgs,
    /// Captions are already PTB-tokenized and lower-cased; skip tokenization.
    #[arg(long)]
    pub no_tokenize: bool,
}

#[derive(Debug, clap::Args)]
pub struct RefLocArgs {
    /// Ground truth: {"<id>": [x, y, w, h]} (or masks with --masks).
    #[arg(long)]
    pub gt: PathBuf,
    /// Predictions, same layout as --gt.
    #[arg(long)]
    pub preds: PathBuf,
    /// Inputs are segmentation masks (COCO RLE or polygons): report cIoU and gIoU.
    #[arg(long)]
    pub masks: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProtocolArg {
    /// scenic's PixelLLM evaluator (30 threshold pairs, continuous boxes).
    PixelLlm,
    /// densecap's original Lua evaluator (25 pairs, "+1" pixel boxes).
    DensecapLua,
}

#[derive(Debug, clap::Args)]
pub struct DensecapArgs {
    /// Ground truth (COCO-style images + annotations with captions).
    #[arg(long)]
    pub gt: PathBuf,
    /// Detections with captions and scores.
    #[arg(long)]
    pub preds: PathBuf,
    #[command(flatten)]
    pub meteor: MeteorArgs,
    /// Which reference evaluator to reproduce.
    #[arg(long, value_enum, default_value = "pixel-llm")]
    pub protocol: ProtocolArg,
    /// Also print the AP of every threshold pair.
    #[arg(long)]
    pub breakdown: bool,
}

fn meteor(a: &MeteorArgs) -> Result<Meteor, Box<dyn Error>> {
    let mut m = match &a.meteor_jar {
        Some(jar) => Meteor::from_jar(jar)?,
        None => Meteor::new(MeteorConfig::default()),
    };
    if let Some(p) = &a.paraphrase {
        m = m.with_paraphrase(ParaphraseTable::from_file(p)?);
    }
    if let Some(d) = &a.synonyms {
        m = m.with_synonyms(SynonymDictionary::from_dir(d)?);
    }
    Ok(m)
}

fn print_json(v: &serde_json::Value) -> Result<(), Box<dyn Error>> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Runs one `pixel metrics` subcommand.
pub fn run(cmd: MetricsCommand) -> Result<(), Box<dyn Error>> {
    match cmd {
        MetricsCommand::Captions(a) => {
            let m = meteor(&a.meteor)?;
            let scores = if a.no_tokenize {
                let refs: captions::References =
                    read_json(&a.refs, "an object {\"<id>\": [\"caption\", ...], ...}")?;
                let preds: captions::Predictions =
                    read_json(&a.preds, "an object {\"<id>\": \"caption\", ...}")?;
                captions::score_pairs(&captions::pair_up(&refs, &preds, false)?, &m)
            } else {
                captions::captions_from_files(&a.refs, &a.preds, &m)?
            };
            print_json(&serde_json::to_value(scores)?)
        }
        MetricsCommand::Refloc(a) => {
            if a.masks {
                let s = masks::refseg_from_files(&a.gt, &a.preds)?;
                print_json(&serde_json::to_value(s)?)
            } else {
                let s = boxes::refloc_from_files(&a.gt, &a.preds)?;
                print_json(&serde_json::to_value(s)?)
            }
        }
        MetricsCommand::Densecap(a) => {
            let m = meteor(&a.meteor)?;
            let protocol = match a.protocol {
                ProtocolArg::PixelLlm => DensecapProtocol::pixel_llm(),
                ProtocolArg::DensecapLua => DensecapProtocol::densecap_lua(),
            };
            let s = densecap::densecap_from_files(&a.gt, &a.preds, &m, &protocol)?;
            let v = if a.breakdown {
                serde_json::to_value(&s)?
            } else {
                serde_json::json!({"map": s.map, "map_detection": s.map_detection})
            };
            print_json(&v)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Parser, Subcommand};

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: Top,
    }

    #[derive(Subcommand)]
    enum Top {
        #[command(subcommand)]
        Metrics(MetricsCommand),
    }

    #[test]
    fn parses_documented_invocations() {
        for args in [
            vec![
                "pixel", "metrics", "captions", "--refs", "r.json", "--preds", "p.json",
            ],
            vec![
                "pixel", "metrics", "refloc", "--gt", "g.json", "--preds", "p.json", "--masks",
            ],
            vec![
                "pixel",
                "metrics",
                "densecap",
                "--gt",
                "g.json",
                "--preds",
                "p.json",
                "--protocol",
                "densecap-lua",
            ],
        ] {
            assert!(Cli::try_parse_from(&args).is_ok(), "{args:?}");
        }
    }

    #[test]
    fn refloc_prints_scores_for_files() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let g = dir.path().join("g.json");
        std::fs::write(&g, r#"{"a": [0, 0, 10, 10]}"#).unwrap_or_else(|e| panic!("{e}"));
        let cmd = MetricsCommand::Refloc(RefLocArgs {
            gt: g.clone(),
            preds: g,
            masks: false,
        });
        assert!(run(cmd).is_ok());
    }
}
