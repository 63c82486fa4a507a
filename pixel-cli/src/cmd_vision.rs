//! `pixel vision forward`, `pixel sam predict`: the image models on tensors in,
//! tensors out (safetensors), for parity checks against HF transformers / timm and for scripts.
//! On the CPU `vision forward` runs the encoders' host inference paths (`HostSamImageEncoder`,
//! `HostEva02`).
use dfdx::prelude::ConstDim;
use pixel_core::checkpoint::{StoredTensor, TensorStore};
#[cfg(not(feature = "cuda"))]
use pixel_core::host_matrix::Dtype;
use pixel_core::nn::Seq;
use pixel_core::params::{list_params, ParamInfo, Params};
use pixel_core::DefaultDevice;
use pixel_vision::conv::check_images;
use pixel_vision::eva02::Eva02;
use pixel_vision::presets::{
    with_eva02_preset, with_sam_preset, with_sam_widths, Eva02Preset, Eva02PresetVisitor,
    SamPreset, SamPresetVisitor, EVA02_PRESETS, SAM_PRESETS,
};
use pixel_vision::sam::{SamConfig, SamModel, SamPrompts};
#[cfg(not(feature = "cuda"))]
use pixel_vision::{sam::HostSamImageEncoder, HostEva02};
use pixel_vision::{FeatureMap, Images, VisionResult};
use std::collections::BTreeMap;
use std::error::Error;
use std::path::{Path, PathBuf};

type CliResult = Result<(), Box<dyn Error>>;

/// Run an image encoder (SAM or EVA02) on `pixel_values`.
#[derive(Debug, clap::Subcommand)]
pub enum VisionCommand {
    /// Image features, as HF `SamModel.get_image_embeddings` or timm `forward_features`.
    #[command(
        after_help = "Examples:\n  pixel vision forward --model sam-vit-base --inputs in.safetensors --out out.safetensors\n  \
        pixel vision forward --model eva02_large.safetensors --preset eva02-large --inputs in.safetensors --out out.safetensors\n  \
        pixel vision forward --model sam_vit_h.safetensors --preset sam-vit-h --inputs in.safetensors --out out.safetensors\n\n\
        MODEL: a HF SamModel folder (config.json + model.safetensors), a timm EVA02 state dict with\n\
        --preset eva02-* (the preset's widths; classifier or CLIP-tower layout as the file has it), or a segment-anything checkpoint converted by tools/convert_sam_checkpoint.py\n\
        with --preset sam-vit-*.\n\
        IN (f32): pixel_values [B,3,H,W] (preprocessed)\n\
        OUT (f32): image_embeddings [B,C,h,w] (SAM) or features [B,1+h*w,C] (EVA02)"
    )]
    Forward {
        /// HF SAM folder or a safetensors state dict.
        #[arg(long)]
        model: PathBuf,
        /// Preset of a state dict (one of sam-vit-b|l|h|test, eva02-tiny|small|base|large|test).
        #[arg(long)]
        preset: Option<String>,
        /// Inputs, a safetensors file.
        #[arg(long)]
        inputs: PathBuf,
        /// Where to write the outputs (safetensors).
        #[arg(long)]
        out: PathBuf,
    },
}

/// Segment Anything.
#[derive(Debug, clap::Subcommand)]
pub enum SamCommand {
    /// Low-resolution masks and IoU scores from point or box prompts, as HF `SamModel(...)`.
    #[command(
        after_help = "Example:\n  pixel sam predict --model sam-vit-base --inputs in.safetensors --multimask --out out.safetensors\n\n\
        IN: pixel_values (f32) [B,3,S,S]; input_points (f32) [B,P,N,2] with input_labels (i64) [B,P,N]\n\
        (1 foreground, 0 background, -1 padding, -10 ignore) and/or input_boxes (f32) [B,P,4]; pixel\n\
        coordinates in the model-input frame (HF conventions); optional input_masks (f32) [B,1,4h,4w]\n\
        OUT (f32): pred_masks [B,P,M,4h,4w] (M = 3 with --multimask, else 1), iou_scores [B,P,M]"
    )]
    Predict {
        /// HF SamModel folder, or a converted segment-anything checkpoint with --preset.
        #[arg(long)]
        model: PathBuf,
        /// Preset of a segment-anything checkpoint (sam-vit-b|l|h|test).
        #[arg(long)]
        preset: Option<String>,
        #[arg(long)]
        inputs: PathBuf,
        /// Return SAM's three candidate masks instead of one.
        #[arg(long)]
        multimask: bool,
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn run_vision(cmd: VisionCommand) -> CliResult {
    match cmd {
        VisionCommand::Forward {
            model,
            preset,
            inputs,
            out,
        } => {
            let job = Job::read(model, &inputs, out, false)?;
            match preset.as_deref() {
                None => {
                    let config = SamConfig::from_file(&job.model.join("config.json")).map_err(|e| {
                        format!("{e}\n(give --preset for a safetensors state dict; presets: {}, {})", SAM_PRESETS.join(", "), EVA02_PRESETS.join(", "))
                    })?;
                    let v = &config.vision_config;
                    with_sam_widths(v.hidden_size, v.output_channels, SamForward(job))?
                }
                Some(name) if name.starts_with("eva02") => {
                    with_eva02_preset(name, EvaForward(job))?
                }
                Some(name) => with_sam_preset(name, SamForward(job))?,
            }
        }
    }
}

pub fn run_sam(cmd: SamCommand) -> CliResult {
    match cmd {
        SamCommand::Predict {
            model,
            preset,
            inputs,
            multimask,
            out,
        } => {
            let job = Job::read(model, &inputs, out, multimask)?;
            match preset.as_deref() {
                None => {
                    let config = SamConfig::from_file(&job.model.join("config.json"))?;
                    let v = &config.vision_config;
                    with_sam_widths(v.hidden_size, v.output_channels, SamPredict(job))?
                }
                Some(name) => with_sam_preset(name, SamPredict(job))?,
            }
        }
    }
}

/// The parameters of the image-encoder preset `name` (`sam-vit-*`, `eva02-*`), built.
pub fn vision_preset_params(name: &str) -> Result<Vec<ParamInfo>, Box<dyn Error>> {
    Ok(if name.starts_with("eva02") {
        with_eva02_preset(name, ListEva)?
    } else {
        with_sam_preset(name, ListSam)?
    })
}

struct Job {
    model: PathBuf,
    inputs_path: PathBuf,
    inputs: TensorStore,
    pixel_values: (Vec<usize>, Vec<f32>),
    out: PathBuf,
    multimask: bool,
}

impl Job {
    /// Reads the input tensors and their `pixel_values`.
    fn read(
        model: PathBuf,
        inputs: &Path,
        out: PathBuf,
        multimask: bool,
    ) -> Result<Job, Box<dyn Error>> {
        let store = TensorStore::read(inputs)?;
        let t = store.require("pixel_values")?;
        let pixel_values = (t.shape.clone(), t.to_f32());
        Ok(Job {
            model,
            inputs_path: inputs.to_path_buf(),
            inputs: store,
            pixel_values,
            out,
            multimask,
        })
    }
}

impl Job {
    /// An error about the inputs file.
    fn invalid(&self, message: impl std::fmt::Display) -> Box<dyn Error> {
        format!("inputs `{}`: {message}", self.inputs_path.display()).into()
    }

    /// `pixel_values` as a tensor, after checking that it is `[B, channels, size, size]`.
    fn pixel_tensor(
        &self,
        dev: &DefaultDevice,
        channels: usize,
        size: usize,
    ) -> Result<Images<DefaultDevice>, Box<dyn Error>> {
        use dfdx::tensor::TensorFromVec;
        let (shape, values) = &self.pixel_values;
        check_images("pixel_values", shape, channels, size).map_err(|e| self.invalid(e))?;
        Ok(dev.tensor_from_vec(values.clone(), (shape[0], shape[1], shape[2], shape[3])))
    }

    /// The prompts of `pixel sam predict`, each tensor's shape checked against the batch of
    /// `batch` images and masks of `mask_side` pixels.
    fn sam_prompts(&self, batch: usize, mask_side: usize) -> Result<SamPrompts, Box<dyn Error>> {
        let shape_error = |name: &str, expected: String, actual: &[usize]| {
            self.invalid(format!("`{name}` must be {expected}, it is {actual:?}"))
        };
        let points = self.inputs.get("input_points");
        let boxes = self.inputs.get("input_boxes");
        let mut prompts = None;
        let points = match points {
            Some(p) => {
                let &[b, n_prompts, n, 2] = &p.shape[..] else {
                    return Err(shape_error(
                        "input_points",
                        format!("[{batch}, P, N, 2]"),
                        &p.shape,
                    ));
                };
                if b != batch {
                    return Err(shape_error(
                        "input_points",
                        format!("[{batch}, P, N, 2]"),
                        &p.shape,
                    ));
                }
                let labels = self
                    .inputs
                    .get("input_labels")
                    .ok_or_else(|| self.invalid("`input_points` needs `input_labels` [B, P, N]"))?;
                if labels.shape != [batch, n_prompts, n] {
                    let expected = format!("[{batch}, {n_prompts}, {n}] (as input_points)");
                    return Err(shape_error("input_labels", expected, &labels.shape));
                }
                let labels: Vec<i64> = match labels.as_i64() {
                    Some(l) => l.to_vec(),
                    None => labels.to_f32().iter().map(|&v| v as i64).collect(),
                };
                prompts = Some(n_prompts);
                Some((p.to_f32(), labels))
            }
            None => None,
        };
        if let Some(b) = boxes {
            let expected = match prompts {
                Some(n) => format!("[{batch}, {n}, 4] (as input_points)"),
                None => format!("[{batch}, P, 4]"),
            };
            match (&b.shape[..], prompts) {
                (&[bb, p, 4], None) if bb == batch => prompts = Some(p),
                (&[bb, p, 4], Some(n)) if bb == batch && p == n => {}
                _ => return Err(shape_error("input_boxes", expected, &b.shape)),
            }
        }
        let prompts = prompts.ok_or_else(|| {
            self.invalid(
                "give input_points [B,P,N,2] (+ input_labels [B,P,N]) or input_boxes [B,P,4]",
            )
        })?;
        let masks = match self.inputs.get("input_masks") {
            Some(m) if m.shape == [batch, 1, mask_side, mask_side] => Some(m.to_f32()),
            Some(m) => {
                let expected = format!("[{batch}, 1, {mask_side}, {mask_side}]");
                return Err(shape_error("input_masks", expected, &m.shape));
            }
            None => None,
        };
        Ok(SamPrompts {
            points,
            boxes: boxes.map(|b| b.to_f32()),
            masks,
            batch,
            prompts,
        })
    }
}

/// The SAM model of preset `P` on the default device.
type PresetSam<P> = SamModel<<P as SamPreset>::Hidden, <P as SamPreset>::Embed, DefaultDevice>;

fn load_sam<P: SamPreset>(
    dev: &DefaultDevice,
    model: &Path,
) -> Result<PresetSam<P>, Box<dyn Error>> {
    if model.is_dir() {
        Ok(SamModel::load_hf_dir(dev, model)?)
    } else {
        let mut sam = P::build(dev)?;
        sam.load_store(&TensorStore::read(model)?)?;
        Ok(sam)
    }
}

fn write(out: &Path, tensors: Vec<(&str, Vec<usize>, Vec<f32>)>) -> CliResult {
    let mut store = TensorStore {
        origin: out.to_path_buf(),
        ..Default::default()
    };
    for (name, shape, values) in tensors {
        store.insert(name, StoredTensor::f32(shape, values));
    }
    store.write(out)?;
    Ok(())
}

struct SamForward(Job);

impl SamPresetVisitor for SamForward {
    type Output = CliResult;
    fn visit<P: SamPreset>(self) -> CliResult {
        use dfdx::prelude::*;
        let job = self.0;
        let dev = DefaultDevice::default();
        let sam = load_sam::<P>(&dev, &job.model)?;
        let v = &sam.vision_encoder.config;
        let pixels = job.pixel_tensor(&dev, v.num_channels, v.image_size)?;
        let emb = sam_image_embeddings::<P>(sam, pixels)?;
        let (b, h, w) = (emb.batch(), emb.height, emb.width);
        let nchw = emb.to_nchw();
        let c = nchw.shape().1.size();
        write(
            &job.out,
            vec![("image_embeddings", vec![b, c, h, w], nchw.as_vec())],
        )
    }
}

struct EvaForward(Job);

impl Eva02PresetVisitor for EvaForward {
    type Output = CliResult;
    fn visit<P: Eva02Preset>(self) -> CliResult {
        use dfdx::prelude::*;
        let job = self.0;
        let dev = DefaultDevice::default();
        // The preset gives the widths; the file decides the final norm and the attention norm
        // (timm's classifiers or CLIP towers), and shapes that differ are an error.
        let store = TensorStore::read(&job.model)?;
        let eva: Eva02<P::Dim, DefaultDevice> = Eva02::from_store(&dev, &P::config(), &store)?;
        let pixels = job.pixel_tensor(&dev, 3, eva.config.img_size)?;
        let features = eva02_features(eva, pixels)?;
        let (b, n, c) = *features.shape();
        write(
            &job.out,
            vec![("features", vec![b, n, c.size()], features.as_vec())],
        )
    }
}

/// SAM's image embeddings: on the CPU by the host inference path (the model's blocks copied,
/// then the model dropped), elsewhere by the model.
fn sam_image_embeddings<P: SamPreset>(
    sam: SamModel<P::Hidden, P::Embed, DefaultDevice>,
    pixels: Images<DefaultDevice>,
) -> VisionResult<FeatureMap<P::Embed, DefaultDevice>> {
    #[cfg(not(feature = "cuda"))]
    {
        sam.check_pixel_values(&pixels)?;
        let host = HostSamImageEncoder::new(&sam.vision_encoder, Dtype::F32);
        drop(sam);
        Ok(host.forward(pixels))
    }
    #[cfg(feature = "cuda")]
    sam.try_image_embeddings(pixels)
}

/// EVA02's `forward_features`, as [`sam_image_embeddings`] does SAM's.
fn eva02_features<C: ConstDim>(
    eva: Eva02<C, DefaultDevice>,
    pixels: Images<DefaultDevice>,
) -> VisionResult<Seq<C, DefaultDevice>> {
    #[cfg(not(feature = "cuda"))]
    {
        let host = HostEva02::new(&eva, Dtype::F32);
        drop(eva);
        Ok(host.try_forward_features(pixels)?.0)
    }
    #[cfg(feature = "cuda")]
    Ok(eva.try_forward_features(pixels)?.0)
}

struct SamPredict(Job);

impl SamPresetVisitor for SamPredict {
    type Output = CliResult;
    fn visit<P: SamPreset>(self) -> CliResult {
        use dfdx::prelude::*;
        let job = self.0;
        let dev = DefaultDevice::default();
        let sam = load_sam::<P>(&dev, &job.model)?;
        let v = &sam.vision_encoder.config;
        let pixels = job.pixel_tensor(&dev, v.num_channels, v.image_size)?;
        let batch = job.pixel_values.0[0];
        let mask_side = 4 * sam.prompt_encoder.image_embedding_size;
        let prompts = job.sam_prompts(batch, mask_side)?;
        let prompts_per_image = prompts.prompts;
        let out = sam.predict(pixels, &prompts, job.multimask)?;
        let (_, m, h, w) = *out.masks.shape();
        write(
            &job.out,
            vec![
                (
                    "pred_masks",
                    vec![batch, prompts_per_image, m, h, w],
                    out.masks.as_vec(),
                ),
                (
                    "iou_scores",
                    vec![batch, prompts_per_image, m],
                    out.iou_scores.as_vec(),
                ),
            ],
        )
    }
}

struct ListSam;

impl SamPresetVisitor for ListSam {
    type Output = Vec<ParamInfo>;
    fn visit<P: SamPreset>(self) -> Vec<ParamInfo> {
        list(&mut P::build(&DefaultDevice::default()).expect("presets are valid"))
    }
}

struct ListEva;

impl Eva02PresetVisitor for ListEva {
    type Output = Vec<ParamInfo>;
    fn visit<P: Eva02Preset>(self) -> Vec<ParamInfo> {
        list(&mut P::build(&DefaultDevice::default()).expect("presets are valid"))
    }
}

fn list<M: Params<DefaultDevice>>(module: &mut M) -> Vec<ParamInfo> {
    list_params(module)
}

/// The module tree to `depth` name levels; runs of numbered siblings (`layers.0..31`) with the
/// same size are folded into one line.
pub fn render_tree(title: &str, params: &[ParamInfo], depth: usize) -> String {
    #[derive(Default)]
    struct Node {
        count: usize,
        children: BTreeMap<String, Node>,
        order: Vec<String>,
    }
    let mut root = Node::default();
    for p in params {
        let mut node = &mut root;
        node.count += p.numel();
        for part in p.name.split('.') {
            if !node.children.contains_key(part) {
                node.order.push(part.to_string());
            }
            node = node.children.entry(part.to_string()).or_default();
            node.count += p.numel();
        }
    }
    fn render(node: &Node, indent: usize, depth: usize, out: &mut String) {
        if depth == 0 {
            return;
        }
        let mut i = 0;
        while i < node.order.len() {
            let name = &node.order[i];
            let child = &node.children[name];
            // Fold numbered siblings of equal size.
            let mut j = i + 1;
            if name.parse::<usize>().is_ok() {
                while j < node.order.len()
                    && node.order[j].parse::<usize>().is_ok()
                    && node.children[&node.order[j]].count == child.count
                {
                    j += 1;
                }
            }
            let label = if j - i > 1 {
                format!(
                    "{}..{} ({} x {})",
                    name,
                    node.order[j - 1],
                    j - i,
                    group(child.count)
                )
            } else {
                name.clone()
            };
            let total = child.count * (j - i);
            out.push_str(&format!(
                "{:indent$}{label:<w$} {:>15}\n",
                "",
                group(total),
                indent = indent,
                w = 48usize.saturating_sub(indent)
            ));
            render(child, indent + 2, depth - 1, out);
            i = j;
        }
    }
    let mut out = format!("{title}: {} parameters\n", group(root.count));
    render(&root, 2, depth, &mut out);
    out
}

/// `n` with thousands separated by commas.
pub fn group(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../pixel-vision/tests/fixtures/{name}"))
    }

    /// `pixel vision forward --preset eva02-test` on timm CLIP-tower and classifier state dicts
    /// (the preset's layout is the classifier's) writes timm's forward_features, to 1e-4.
    #[test]
    fn vision_forward_loads_eva02_clip_towers_and_classifiers_with_one_preset() {
        let dir = tempfile::tempdir().unwrap();
        for (model, io, name) in [
            ("eva02-test-clip", "eva02_clip_test_io", "eva02-test-clip"),
            ("eva02-test-norm", "eva02_norm_test_io", "eva02-test-norm"),
            ("eva02-test", "eva02_test_io", "eva02-test"),
        ] {
            let io = TensorStore::read(&fixture(&format!("{io}.safetensors"))).unwrap();
            let mut inputs = TensorStore::default();
            let pixels = io.require(&format!("{name}.pixel_values")).unwrap();
            inputs.insert("pixel_values", pixels.clone());
            let (inp, out) = (
                dir.path().join("in.safetensors"),
                dir.path().join("out.safetensors"),
            );
            inputs.write(&inp).unwrap();
            run_vision(VisionCommand::Forward {
                model: fixture(&format!("{model}.safetensors")),
                preset: Some("eva02-test".into()),
                inputs: inp,
                out: out.clone(),
            })
            .unwrap_or_else(|e| panic!("{model}: {e}"));
            let got = TensorStore::read(&out).unwrap();
            let got = got.require("features").unwrap();
            let want = io.require(&format!("{name}.features")).unwrap();
            assert_eq!(got.shape, want.shape, "{model}");
            let err = got
                .to_f32()
                .iter()
                .zip(want.to_f32())
                .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(err <= 1e-4, "{model}: max abs error {err}");
        }
    }

    #[test]
    fn the_tree_folds_numbered_layers_and_groups_digits() {
        let params = vec![
            ParamInfo::new("enc.layers.0.w", vec![1000, 2]),
            ParamInfo::new("enc.layers.1.w", vec![1000, 2]),
            ParamInfo::new("head.w", vec![3]),
        ];
        let tree = render_tree("x", &params, 3);
        assert!(tree.starts_with("x: 4,003 parameters"), "{tree}");
        assert!(tree.contains("0..1 (2 x 2,000)"), "{tree}");
    }
}
