//! Every parser of user input, fed arbitrary and mutated bytes, gives a value or an error and
//! never panics. Seeds are valid files (ShapesLN exported in the three dataset formats, the
//! refer toolkit's instances and refs, Visual Genome's `image_data.json`, the demo config, an
//! ablation, a checkpoint and a sharded one, a trainer's `trainer_state.json`, a training log,
//! metric inputs, a PNG);
//! mutations flip, insert and delete bytes and cut the file short. CI runs proptest's default
//! number of cases; `tools/fuzz.sh --minutes N` runs them long (`PROPTEST_CASES`). Declared
//! sizes (safetensors header length, RLE mask size, image dimensions) are checked before
//! anything is allocated for them, or a mutation would exhaust memory here.
use dfdx::shapes::Const;
use dfdx::tensor::Cpu;
use pixel_core::checkpoint::{save_params, StoredTensor, TensorStore};
use pixel_core::nn::Linear;
use pixel_data::data_source::export_shapes;
use pixel_data::datasets::{
    load_image, read_mdetr_refexp, read_narratives, read_refer, read_vg_image_data,
    read_vg_regions, SkipMode,
};
use pixel_data::shapes_ln::{ShapesLn, ShapesLnConfig};
use pixel_metrics::boxes::refloc_from_files;
use pixel_metrics::masks::refseg_from_files;
use pixel_run::ablate::Ablation;
use pixel_run::experiment::ExperimentConfig;
use pixel_train::{load_latest_weights, read_log, RunDir};
use proptest::prelude::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Valid files to mutate, made once.
struct Seeds {
    _dir: tempfile::TempDir,
    narratives: Vec<u8>,
    refexp: Vec<u8>,
    regions: Vec<u8>,
    /// The refer toolkit's `instances.json` and refs (`tests/fixtures/datasets/refer/`).
    instances: Vec<u8>,
    refs: Vec<u8>,
    image_data: Vec<u8>,
    config: Vec<u8>,
    ablation: Vec<u8>,
    checkpoint: Vec<u8>,
    /// A sharded checkpoint's index; its one shard is `shard`.
    index: Vec<u8>,
    shard: Vec<u8>,
    log: Vec<u8>,
    image: Vec<u8>,
    /// A checkpoint folder's files: `trainer_state.json` and the weights and optimizer state of
    /// a [`Model`].
    trainer_state: Vec<u8>,
    model: Vec<u8>,
    optimizer: Vec<u8>,
}

/// The model whose checkpoints are fuzzed.
type Model = Linear<Const<2>, Const<3>, Cpu>;

/// Records in the shape of Visual Genome v1.2's `image_data.json`.
const IMAGE_DATA: &str = r#"[
{"width": 800, "url": "https://cs.stanford.edu/people/rak248/VG_100K_2/1.jpg", "height": 600, "image_id": 1, "coco_id": null, "flickr_id": null},
{"width": 500, "url": "https://cs.stanford.edu/people/rak248/VG_100K/51.jpg", "height": 333, "image_id": 51, "coco_id": 1000, "flickr_id": 2404563451}
]"#;

const TRAINER_STATE: &str = r#"{
  "step": 40,
  "elapsed_s": 1.5,
  "smoothed_loss": 0.25,
  "lowest_loss": [0.2, 30]
}"#;

fn model() -> Model {
    Linear::new(&Cpu::default(), true)
}

/// AdamW's state (moments and step) after training a [`Model`]. (A fresh optimizer's state,
/// no tensors and only metadata, is written with a header that does not read back: safetensors
/// 0.3's `serialize` with no tensors.)
fn optimizer_state() -> TensorStore {
    let mut state = TensorStore::default();
    for (name, len) in [("weight", 6), ("bias", 3)] {
        state.insert(
            format!("m.{name}"),
            StoredTensor::f32(vec![len], vec![0.1; len]),
        );
        state.insert(
            format!("v.{name}"),
            StoredTensor::f32(vec![len], vec![0.01; len]),
        );
    }
    state.metadata.insert("step".into(), "40".into());
    state
}

/// `pixel metrics refloc --masks` and `refloc` inputs: an RLE, a bare polygon, boxes.
const MASKS: &str = r#"{"a": {"size": [4, 5], "counts": [3, 4, 13]}, "b": {"size": [4, 5], "polygons": [[0, 0, 3, 0, 3, 3]]}, "c": {"size": [4, 5], "counts": "34="}}"#;
const BOXES: &str = r#"{"a": [1, 2, 3, 4], "b": [0.5, 0, 10, 2.5]}"#;

fn seeds() -> &'static Seeds {
    static SEEDS: OnceLock<Seeds> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let generator = ShapesLn::new(ShapesLnConfig::default(), 3).unwrap();
        let dataset = export_shapes(&generator, dir.path(), 2, 1).unwrap();
        let read = |p: &Path| std::fs::read(p).unwrap();
        let mut store = TensorStore::default();
        store.insert("a.weight", StoredTensor::f32(vec![2, 3], vec![0.5; 6]));
        store.insert("b", StoredTensor::i64(vec![2], vec![1, 2]));
        let checkpoint = dir.path().join("c.safetensors");
        store.write(&checkpoint).unwrap();
        let image = std::fs::read_dir(&dataset.train.images)
            .unwrap()
            .map(|e| e.unwrap().path())
            .min()
            .unwrap();
        let index = r#"{"metadata": {"total_size": 32}, "weight_map": {"a.weight": "model-00001-of-00001.safetensors", "b": "model-00001-of-00001.safetensors"}}"#;
        let weights = dir.path().join("model.safetensors");
        save_params(&mut model(), &weights, HashMap::new()).unwrap();
        let optimizer = dir.path().join("optimizer.safetensors");
        optimizer_state().write(&optimizer).unwrap();
        let refer = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pixel-data/tests/fixtures/datasets/refer");
        let log = [
            "{\"step\":1,\"loss\":2.5,\"losses\":[{\"name\":\"text\",\"unweighted\":2.0,\"weight\":1.0,\"weighted\":2.0},{\"name\":\"point\",\"unweighted\":5.0,\"weight\":0.1,\"weighted\":0.5}],\"lr\":0.001,\"grad_norm\":1.5,\"elapsed_s\":0.3}\n",
            "{\"step\":2,\"loss\":2.5,\"text_loss\":2.0,\"location_loss\":5.0,\"lr\":0.001,\"grad_norm\":1.5,\"elapsed_s\":0.3}\n",
        ]
        .concat();
        Seeds {
            narratives: read(&dataset.train.narratives),
            refexp: read(dataset.train.referring.expressions()),
            regions: read(&dataset.train.regions),
            instances: read(&refer.join("instances.json")),
            refs: read(&refer.join("refs.json")),
            image_data: IMAGE_DATA.as_bytes().to_vec(),
            trainer_state: TRAINER_STATE.as_bytes().to_vec(),
            model: read(&weights),
            optimizer: read(&optimizer),
            config: pixel_run::experiment::DEFAULT_DEMO_CONFIG.as_bytes().to_vec(),
            ablation: std::fs::read(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../configs/ablations/localization-representation.toml"),
            )
            .unwrap(),
            shard: read(&checkpoint),
            checkpoint: read(&checkpoint),
            index: index.as_bytes().to_vec(),
            log: log.into_bytes(),
            image: read(&image),
            _dir: dir,
        }
    })
}

/// One edit: flip the byte at a position, insert a byte there, delete it, or cut the file.
#[derive(Debug, Clone)]
enum Edit {
    Set(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Truncate(usize),
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let edit = prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Set(i, b)),
        (
            any::<usize>(),
            prop::sample::select(b"{}[]\",:0-9.e \n\x00\xff".to_vec())
        )
            .prop_map(|(i, b)| Edit::Insert(i, b)),
        any::<usize>().prop_map(Edit::Delete),
        any::<usize>().prop_map(Edit::Truncate),
    ];
    prop::collection::vec(edit, 1..8)
}

fn mutate(seed: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut bytes = seed.to_vec();
    for edit in edits {
        let at = |i: usize, n: usize| if n == 0 { 0 } else { i % n };
        match *edit {
            Edit::Set(i, b) if !bytes.is_empty() => {
                let i = at(i, bytes.len());
                bytes[i] = b;
            }
            Edit::Insert(i, b) => {
                let i = at(i, bytes.len() + 1);
                bytes.insert(i, b);
            }
            Edit::Delete(i) if !bytes.is_empty() => {
                let i = at(i, bytes.len());
                bytes.remove(i);
            }
            Edit::Truncate(i) => {
                let i = at(i, bytes.len() + 1);
                bytes.truncate(i);
            }
            _ => {}
        }
    }
    bytes
}

/// A run folder whose latest checkpoint has `state` as its `trainer_state.json`.
fn run_with_state(state: &[u8]) -> tempfile::TempDir {
    let s = seeds();
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("checkpoints/step-0000040");
    std::fs::create_dir_all(&checkpoint).unwrap();
    std::fs::write(dir.path().join("checkpoints/latest"), "step-0000040").unwrap();
    std::fs::write(checkpoint.join("trainer_state.json"), state).unwrap();
    std::fs::write(checkpoint.join("model.safetensors"), &s.model).unwrap();
    std::fs::write(checkpoint.join("optimizer.safetensors"), &s.optimizer).unwrap();
    dir
}

/// Writes `bytes` to a fresh file named `name` and returns its folder and path.
fn file(name: &str, bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    (dir, path)
}

proptest! {
    #[test]
    fn dataset_readers_never_panic(edits in edits(), strict in any::<bool>()) {
        let mode = if strict { SkipMode::Strict } else { SkipMode::SkipAndCount };
        let s = seeds();
        let (_d, p) = file("n.jsonl", &mutate(&s.narratives, &edits));
        let _ = read_narratives(&p, mode);
        let (_d, p) = file("r.json", &mutate(&s.refexp, &edits));
        let _ = read_mdetr_refexp(&p, mode);
        let (_d, p) = file("v.json", &mutate(&s.regions, &edits));
        let _ = read_vg_regions(&p, mode);
        let (_d, p) = file("image_data.json", &mutate(&s.image_data, &edits));
        let _ = read_vg_image_data(&p, mode);
    }

    #[test]
    fn refer_toolkit_reader_never_panics(edits in edits(), strict in any::<bool>(), split in prop::option::of(prop::sample::select(vec!["testA", "train", "val"]))) {
        let mode = if strict { SkipMode::Strict } else { SkipMode::SkipAndCount };
        let s = seeds();
        let (dir, instances) = file("instances.json", &mutate(&s.instances, &edits));
        let refs = dir.path().join("refs.json");
        std::fs::write(&refs, &s.refs).unwrap();
        let _ = read_refer(&instances, &refs, split, mode);
        std::fs::write(&instances, &s.instances).unwrap();
        std::fs::write(&refs, mutate(&s.refs, &edits)).unwrap();
        let _ = read_refer(&instances, &refs, split, mode);
    }

    #[test]
    fn trainer_state_never_panics(edits in edits(), raw in prop::collection::vec(any::<u8>(), 0..64)) {
        let s = seeds();
        for state in [mutate(&s.trainer_state, &edits), raw] {
            let dir = run_with_state(&state);
            let _ = load_latest_weights(&mut model(), &RunDir::new(dir.path()));
        }
    }

    #[test]
    fn configs_and_ablations_never_panic(edits in edits()) {
        let s = seeds();
        let (_d, p) = file("exp.toml", &mutate(&s.config, &edits));
        let _ = ExperimentConfig::load(&p);
        let text = String::from_utf8_lossy(&mutate(&s.ablation, &edits)).into_owned();
        let _ = Ablation::parse(&text, Path::new("abl.toml"));
    }

    #[test]
    fn checkpoints_logs_and_pointers_never_panic(edits in edits(), raw in prop::collection::vec(any::<u8>(), 0..64)) {
        let s = seeds();
        let (_d, p) = file("c.safetensors", &mutate(&s.checkpoint, &edits));
        let _ = TensorStore::read(&p);
        let (_d, p) = file("c.safetensors", &raw);
        let _ = TensorStore::read(&p);
        let (_d, p) = file("metrics.jsonl", &mutate(&s.log, &edits));
        let _ = read_log(&p);
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("checkpoints")).unwrap();
        std::fs::write(dir.path().join("checkpoints/latest"), &raw).unwrap();
        let _ = RunDir::new(dir.path()).latest_checkpoint();
    }

    #[test]
    fn metric_inputs_never_panic(edits in edits()) {
        let dir = tempfile::tempdir().unwrap();
        let (gt, preds) = (dir.path().join("gt.json"), dir.path().join("preds.json"));
        std::fs::write(&gt, MASKS).unwrap();
        std::fs::write(&preds, mutate(MASKS.as_bytes(), &edits)).unwrap();
        let _ = refseg_from_files(&gt, &preds);
        let _ = refseg_from_files(&preds, &gt);
        std::fs::write(&gt, BOXES).unwrap();
        std::fs::write(&preds, mutate(BOXES.as_bytes(), &edits)).unwrap();
        let _ = refloc_from_files(&gt, &preds);
        let _ = refloc_from_files(&preds, &gt);
    }

    #[test]
    fn images_and_sharded_checkpoints_never_panic(edits in edits()) {
        let s = seeds();
        let (dir, _) = file("x.png", &mutate(&s.image, &edits));
        let _ = load_image(dir.path(), "x.png");
        let (dir, index) = file("model.safetensors.index.json", &mutate(&s.index, &edits));
        std::fs::write(dir.path().join("model-00001-of-00001.safetensors"), &s.shard).unwrap();
        let _ = TensorStore::read(&index);
    }
}

/// The seeds are valid, so mutations explore inputs close to real ones.
#[test]
fn the_seeds_parse() {
    let s = seeds();
    let dir = tempfile::tempdir().unwrap();
    let (masks, boxes) = (dir.path().join("m.json"), dir.path().join("b.json"));
    std::fs::write(&masks, MASKS).unwrap();
    std::fs::write(&boxes, BOXES).unwrap();
    refseg_from_files(&masks, &masks).unwrap();
    refloc_from_files(&boxes, &boxes).unwrap();
    let (dir, _) = file("x.png", &s.image);
    load_image(dir.path(), "x.png").unwrap();
    let (dir, index) = file("model.safetensors.index.json", &s.index);
    std::fs::write(
        dir.path().join("model-00001-of-00001.safetensors"),
        &s.shard,
    )
    .unwrap();
    assert_eq!(TensorStore::read(&index).unwrap().tensors.len(), 2);
    let (_d, p) = file("exp.toml", &s.config);
    ExperimentConfig::load(&p).unwrap();
    let (_d, p) = file("metrics.jsonl", &s.log);
    assert_eq!(read_log(&p).unwrap().len(), 2);
    let run = run_with_state(&s.trainer_state);
    assert_eq!(
        load_latest_weights(&mut model(), &RunDir::new(run.path())).unwrap(),
        40
    );
    // A state whose step is not its folder's is refused, naming both.
    let edited = String::from_utf8(s.trainer_state.clone())
        .unwrap()
        .replacen("40", "41", 1);
    let run = run_with_state(edited.as_bytes());
    let err = load_latest_weights(&mut model(), &RunDir::new(run.path()))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("says step 41") && err.contains("step-0000040"),
        "{err}"
    );
    let (dir, instances) = file("instances.json", &s.instances);
    let refs = dir.path().join("refs.json");
    std::fs::write(&refs, &s.refs).unwrap();
    let (refer, _) = read_refer(&instances, &refs, None, SkipMode::SkipAndCount).unwrap();
    assert_eq!(refer.len(), 3);
    let (_d, p) = file("image_data.json", &s.image_data);
    assert_eq!(read_vg_image_data(&p, SkipMode::Strict).unwrap().0.len(), 2);
    for (name, bytes) in [
        ("n.jsonl", &s.narratives),
        ("r.json", &s.refexp),
        ("v.json", &s.regions),
    ] {
        let (_d, p) = file(name, bytes);
        let ok = match name {
            "n.jsonl" => read_narratives(&p, SkipMode::Strict).is_ok(),
            "r.json" => read_mdetr_refexp(&p, SkipMode::Strict).is_ok(),
            _ => read_vg_regions(&p, SkipMode::Strict).is_ok(),
        };
        assert!(ok, "{name}");
    }
}
