//! A PixelLLM composed from checkpoints its components' reference libraries wrote (HF
//! transformers' `SamModel` folder and segment-anything's names, a timm `Eva` state dict, a HF
//! T5 folder saved sharded in bf16; `tools/make_paper_fixtures.py`) at `pixelllm-test`'s sizes:
//! the loaded values are the files', the report says what starts from scratch, two training
//! steps move what the paper trains and nothing it freezes, and a missing, unexpected or
//! misshapen tensor is an error naming it, its file and the config key.
use dfdx::prelude::*;
use pixel_core::checkpoint::{StoredTensor, TensorStore};
use pixel_core::host_matrix::Dtype;
use pixel_core::optim::{alloc_grads, AdamW};
use pixel_core::params::{
    frozen_on_host, list_params, ParamTensor, ParamVisitor, Params, Trainable,
};
use pixel_lm::tokenizer::T5Tokenizer;
use pixel_model::heads::HeadRegistry;
use pixel_model::model::{ComponentCheckpoints, LoadReport, ModelConfig, PixelLlm};
use pixel_model::presets::PixelLlmTest;
use pixel_model::task_mix::training_examples;
use pixel_model::tasks::{Example, ExampleBuilder};
use pixel_model::testing::demo_section;
use pixel_train::TrainStep;
use std::path::{Path, PathBuf};

type Model = PixelLlm<PixelLlmTest, Cpu>;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pixelllm-test")
}

fn checkpoints(sam: &str) -> ComponentCheckpoints {
    ComponentCheckpoints {
        sam: Some(fixtures().join(sam)),
        eva02: Some(fixtures().join("eva02.safetensors")),
        t5: Some(fixtures().join("t5")),
    }
}

fn compose(checkpoints: ComponentCheckpoints) -> pixel_model::Result<(Model, LoadReport)> {
    compose_keeping(checkpoints, None)
}

/// [`compose`] with `model.frozen_dtype = frozen_dtype`.
fn compose_keeping(
    checkpoints: ComponentCheckpoints,
    frozen_dtype: Option<Dtype>,
) -> pixel_model::Result<(Model, LoadReport)> {
    let mut config = ModelConfig::shipped("pixelllm-test").unwrap().unwrap();
    config.checkpoints = checkpoints;
    config.frozen_dtype = frozen_dtype;
    Model::from_checkpoints(&Cpu::seed_from_u64(0), &config, &HeadRegistry::builtin())
}

/// The first training batch: two examples of the demo's task mix.
fn batch(model: &Model) -> Vec<Example> {
    let tokenizer = T5Tokenizer::bundled().unwrap();
    let builder = ExampleBuilder {
        tokenizer: &tokenizer,
        vocab: &model.vocab,
        max_target_tokens: 12,
    };
    let data = pixel_data::shapes_ln::ShapesLn::new(demo_section("data"), 0).unwrap();
    training_examples(&data, &builder, &demo_section("tasks"), 2, 0, 0).unwrap()
}

/// The losses of `steps` training steps of the paper's recipe on two examples.
fn train(model: &mut Model, steps: usize) -> Vec<f32> {
    let config = model.config.clone();
    let examples = batch(model);
    let trainable = config.trainable();
    let mut optimizer = AdamW::new(Default::default());
    let mut losses = Vec::new();
    for _ in 0..steps {
        let grads = alloc_grads(model, &trainable).unwrap();
        let (loss, _) = model.loss(&examples, grads).unwrap();
        losses.push(loss.array());
        let grads = loss.backward();
        optimizer.update(model, &grads, &trainable, 1e-3).unwrap();
    }
    losses
}

/// Every parameter's values by name.
fn snapshot(model: &mut Model) -> Vec<(String, Vec<f32>)> {
    let mut store = TensorStore::default();
    pixel_core::checkpoint::collect_params(model, &mut store, "").unwrap();
    store
        .tensors
        .into_iter()
        .map(|(name, t)| (name, t.to_f32()))
        .collect()
}

fn read(path: &Path) -> TensorStore {
    if path.is_dir() {
        let index = path.join("model.safetensors.index.json");
        let file = if index.exists() {
            return TensorStore::read_sharded(&index).unwrap();
        } else {
            path.join("model.safetensors")
        };
        return TensorStore::read(&file).unwrap();
    }
    TensorStore::read(path).unwrap()
}

/// The name a parameter of the composed model has in its component's (HF-named) file.
fn file_name(name: &str) -> Option<(&'static str, String)> {
    if let Some(rest) = name.strip_prefix("image_encoder.sam.") {
        return Some(("sam", format!("vision_encoder.{rest}")));
    }
    if name == "prompt_encoder.shared_embedding.positional_embedding" {
        return Some(("sam", "shared_image_embedding.positional_embedding".into()));
    }
    if name.starts_with("prompt_encoder.") {
        return Some(("sam", name.to_string()));
    }
    if let Some(rest) = name.strip_prefix("image_encoder.eva.") {
        return Some(("eva02", rest.to_string()));
    }
    match name.strip_prefix("language_model.") {
        Some(rest) if !rest.contains(".lora_") => Some(("t5", rest.to_string())),
        _ => None,
    }
}

#[test]
fn a_model_composed_from_reference_checkpoints_holds_their_values_and_trains_what_the_paper_trains()
{
    let (mut model, report) = compose(checkpoints("sam")).unwrap();

    // The loaded parameters are the files' values (the bf16 T5 widened exactly).
    let files = [
        ("sam", read(&fixtures().join("sam"))),
        ("eva02", read(&fixtures().join("eva02.safetensors"))),
        ("t5", read(&fixtures().join("t5"))),
    ];
    let before = snapshot(&mut model);
    let mut loaded = 0;
    for (name, values) in &before {
        let Some((file, stored)) = file_name(name) else {
            continue;
        };
        let (_, store) = files.iter().find(|(f, _)| *f == file).unwrap();
        let tensor = store.get(&stored).unwrap_or_else(|| panic!("{stored}"));
        assert_eq!(&tensor.to_f32(), values, "{name} <- {file}: {stored}");
        loaded += 1;
    }
    let report_tensors: usize = report.loaded.iter().map(|c| c.tensors).sum();
    assert_eq!(loaded, report_tensors);
    let scratch: Vec<&str> = report.from_scratch.iter().map(|p| p.part).collect();
    assert_eq!(
        scratch,
        [
            "prompt feature extractor",
            "visual projection",
            "LoRA",
            "heads"
        ],
        "{report}"
    );
    let sam = &report.loaded[0];
    assert!(
        !sam.unused.is_empty() && sam.unused.iter().all(|n| n.starts_with("mask_decoder.")),
        "{report}"
    );

    // The same SAM under segment-anything's names loads the same values.
    let (mut official, _) = compose(checkpoints("sam-official.safetensors")).unwrap();
    let sam_part = |s: &[(String, Vec<f32>)]| -> Vec<(String, Vec<f32>)> {
        s.iter()
            .filter(|(n, _)| {
                n.starts_with("image_encoder.sam.") || n.starts_with("prompt_encoder.")
            })
            .cloned()
            .collect()
    };
    assert_eq!(sam_part(&snapshot(&mut official)), sam_part(&before));

    // Two steps of the paper's recipe: SAM, its prompt encoder and T5 frozen; EVA02, the
    // prompt feature extractor, the projection, LoRA and the point head train.
    let trainable = model.config.trainable();
    assert!(train(&mut model, 2).iter().all(|l| l.is_finite()));
    let after = snapshot(&mut model);
    for ((name, old), (_, new)) in before.iter().zip(&after) {
        if trainable.is_trainable(name) {
            assert_ne!(old, new, "trainable `{name}` did not move");
        } else {
            assert_eq!(old, new, "frozen `{name}` moved");
        }
    }
    for frozen in [
        "image_encoder.sam.",
        "prompt_encoder.",
        "language_model.encoder.block.0.layer.0.SelfAttention.q.weight",
    ] {
        assert!(before
            .iter()
            .any(|(n, _)| n.starts_with(frozen) && !trainable.is_trainable(n)));
    }
}

/// The gradient of every trainable parameter on the first training batch, by name.
fn gradients(model: &mut Model) -> Vec<(String, Vec<f32>)> {
    struct Collect<'a> {
        grads: &'a Gradients<f32, Cpu>,
        trainable: Trainable,
        out: Vec<(String, Vec<f32>)>,
    }
    impl ParamVisitor<Cpu> for Collect<'_> {
        fn visit(&mut self, name: &str, t: &mut dyn ParamTensor<Cpu>) -> pixel_core::Result<()> {
            if self.trainable.is_trainable(name) {
                self.out.push((name.to_string(), t.grad(self.grads)));
            }
            Ok(())
        }
    }
    let trainable = model.config.trainable();
    let examples = batch(model);
    let grads = alloc_grads(model, &trainable).unwrap();
    let grads = model.loss(&examples, grads).unwrap().0.backward();
    let mut collect = Collect {
        grads: &grads,
        trainable,
        out: Vec::new(),
    };
    model.visit_params("", &mut collect).unwrap();
    collect.out
}

/// `model.frozen_dtype`: the frozen linear weights move to the host. In f32 the model trains
/// as with dfdx tensors; in bf16 T5's bf16 file loads bit for bit, SAM's f32 weights round, and
/// frozen weights stay put while the rest trains.
#[test]
fn frozen_weights_kept_on_the_host_train_as_tensors_do() {
    let (mut tensors, _) = compose(checkpoints("sam")).unwrap();
    let (mut host_f32, _) = compose_keeping(checkpoints("sam"), Some(Dtype::F32)).unwrap();
    let (mut host_bf16, _) = compose_keeping(checkpoints("sam"), Some(Dtype::Bf16)).unwrap();

    // Every frozen linear weight moved: SAM's encoders and T5 outside LoRA.
    let trainable = tensors.config.trainable();
    let moved = frozen_on_host(&mut host_bf16);
    let frozen_matrices: Vec<(String, usize)> = list_params(&mut tensors)
        .into_iter()
        .filter(|p| !trainable.is_trainable(&p.name) && p.shape.len() == 2)
        .map(|p| (p.name.clone(), p.numel()))
        .collect();
    assert!(moved.tensors > 0 && moved.tensors <= frozen_matrices.len());
    assert_eq!(moved.bytes, 2 * moved.scalars);
    assert_eq!(frozen_on_host(&mut host_f32).tensors, moved.tensors);
    assert_eq!(frozen_on_host(&mut tensors).tensors, 0);
    let q = "language_model.encoder.block.0.layer.0.SelfAttention.q.weight";
    assert!(frozen_matrices.iter().any(|(n, _)| n == q));

    // bf16: T5's file is bf16, so its weights load bit for bit; SAM's are f32 and round.
    let (exact, rounded) = (snapshot(&mut tensors), snapshot(&mut host_bf16));
    let value =
        |s: &[(String, Vec<f32>)], name: &str| s.iter().find(|(n, _)| n == name).unwrap().1.clone();
    assert_eq!(value(&rounded, q), value(&exact, q));
    let sam_qkv = "image_encoder.sam.layers.0.attn.qkv.weight";
    let (want, got) = (value(&exact, sam_qkv), value(&rounded, sam_qkv));
    let changed = got.iter().zip(&want).filter(|(g, w)| g != w).count();
    assert!(
        changed > want.len() / 2,
        "{changed} of {} values rounded",
        want.len()
    );
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() <= w.abs() / 256.0, "{g} vs {w}");
    }

    // f32 on the host trains as the tensors do: the same gradients, the same losses.
    let (want, got) = (gradients(&mut tensors), gradients(&mut host_f32));
    assert_eq!(want.len(), got.len());
    for ((name, w), (_, g)) in want.iter().zip(&got) {
        let scale = w.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = w.iter().zip(g).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            diff <= 1e-4 * scale + 1e-7,
            "`{name}`: max diff {diff} of {scale}"
        );
    }
    let (want, got) = (train(&mut tensors, 2), train(&mut host_f32, 2));
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() <= 1e-5 * w.abs(), "loss {g} vs {w}");
    }

    // bf16: frozen weights stay put, trained ones move, losses stay near the f32 ones.
    let got = train(&mut host_bf16, 2);
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() <= 1e-2 * w.abs(), "loss {g} vs {w}");
    }
    for ((name, old), (_, new)) in rounded.iter().zip(&snapshot(&mut host_bf16)) {
        if trainable.is_trainable(name) {
            assert_ne!(old, new, "trainable `{name}` did not move");
        } else {
            assert_eq!(old, new, "frozen `{name}` moved");
        }
    }
}

/// The error of composing with `checkpoints`, as text.
fn error(checkpoints: ComponentCheckpoints) -> String {
    match compose(checkpoints) {
        Ok(_) => panic!("composed"),
        Err(e) => e.to_string(),
    }
}

/// `eva02.safetensors` with `edit` applied, in `dir`.
fn edited_eva(dir: &Path, edit: impl Fn(&mut TensorStore)) -> PathBuf {
    let mut store = read(&fixtures().join("eva02.safetensors"));
    edit(&mut store);
    let path = dir.join("eva02.safetensors");
    store.write(&path).unwrap();
    path
}

/// What the error must say, and the edit of the EVA02 file that causes it.
type EvaCase = (&'static str, fn(&mut TensorStore));

#[test]
fn a_missing_unexpected_or_misshapen_tensor_is_named_with_its_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [EvaCase; 3] = [
        (
            "missing tensor `blocks.1.attn.q_proj.weight`",
            |s: &mut TensorStore| {
                s.tensors.remove("blocks.1.attn.q_proj.weight");
            },
        ),
        (
            "unexpected tensor `blocks.1.attn.extra.weight`",
            |s: &mut TensorStore| {
                s.insert(
                    "blocks.1.attn.extra.weight",
                    StoredTensor::f32(vec![1], vec![0.0]),
                );
            },
        ),
        (
            "tensor `pos_embed` has shape [1, 5, 32]",
            |s: &mut TensorStore| {
                s.insert(
                    "pos_embed",
                    StoredTensor::f32(vec![1, 5, 32], vec![0.0; 160]),
                );
            },
        ),
    ];
    for (says, edit) in cases {
        let path = edited_eva(dir.path(), edit);
        let err = error(ComponentCheckpoints {
            eva02: Some(path.clone()),
            ..Default::default()
        });
        assert!(
            err.contains(says)
                && err.contains("model.checkpoints.eva02")
                && err.contains(&path.display().to_string()),
            "{err}"
        );
    }

    // A T5 folder with a misshapen embedding, and a SAM folder whose config differs from the
    // preset in what no tensor shows.
    let t5 = dir.path().join("t5");
    std::fs::create_dir(&t5).unwrap();
    std::fs::copy(fixtures().join("t5/config.json"), t5.join("config.json")).unwrap();
    let mut store = read(&fixtures().join("t5"));
    store.insert(
        "shared.weight",
        StoredTensor::f32(vec![255, 32], vec![0.0; 255 * 32]),
    );
    store.write(&t5.join("model.safetensors")).unwrap();
    let err = error(ComponentCheckpoints {
        t5: Some(t5),
        ..Default::default()
    });
    assert!(
        err.contains("model.checkpoints.t5")
            && err.contains("tensor `shared.weight` has shape [255, 32]"),
        "{err}"
    );

    let sam = dir.path().join("sam");
    std::fs::create_dir(&sam).unwrap();
    std::fs::copy(
        fixtures().join("sam/model.safetensors"),
        sam.join("model.safetensors"),
    )
    .unwrap();
    let config = std::fs::read_to_string(fixtures().join("sam/config.json")).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&config).unwrap();
    config["vision_config"]["layer_norm_eps"] = serde_json::json!(1e-5);
    std::fs::write(sam.join("config.json"), config.to_string()).unwrap();
    let err = error(ComponentCheckpoints {
        sam: Some(sam),
        ..Default::default()
    });
    assert!(
        err.contains("model.checkpoints.sam")
            && err.contains("vision_config.layer_norm_eps is 0.00001"),
        "{err}"
    );
}
