//! Every parser of user input, fed arbitrary and mutated bytes, gives a value or an error and
//! never panics. Seeds are valid files (ShapesLN exported in the three dataset formats, the demo
//! config, an ablation, a checkpoint, a training log); mutations flip, insert and delete bytes
//! and cut the file short. CI runs proptest's default number of cases;
//! `tools/fuzz.sh --minutes N` runs them long (`PROPTEST_CASES`).
use pixel_core::checkpoint::{StoredTensor, TensorStore};
use pixel_tasks::ablate::Ablation;
use pixel_tasks::data_source::export_shapes;
use pixel_tasks::datasets::{read_mdetr_refexp, read_narratives, read_vg_regions, SkipMode};
use pixel_tasks::demo::DemoConfig;
use pixel_tasks::shapes_ln::{ShapesLn, ShapesLnConfig};
use pixel_tasks::train::{read_log, RunDir};
use proptest::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Valid files to mutate, made once.
struct Seeds {
    _dir: tempfile::TempDir,
    narratives: Vec<u8>,
    refexp: Vec<u8>,
    regions: Vec<u8>,
    config: Vec<u8>,
    ablation: Vec<u8>,
    checkpoint: Vec<u8>,
    log: Vec<u8>,
}

fn seeds() -> &'static Seeds {
    static SEEDS: OnceLock<Seeds> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let generator = ShapesLn::new(ShapesLnConfig::default(), 3).unwrap();
        let dataset = export_shapes(&generator, dir.path(), 2, 1).unwrap();
        let read = |p: &PathBuf| std::fs::read(p).unwrap();
        let mut store = TensorStore::default();
        store.insert("a.weight", StoredTensor::f32(vec![2, 3], vec![0.5; 6]));
        store.insert("b", StoredTensor::i64(vec![2], vec![1, 2]));
        let checkpoint = dir.path().join("c.safetensors");
        store.write(&checkpoint).unwrap();
        let log = "{\"step\":1,\"loss\":2.5,\"text_loss\":2.0,\"location_loss\":5.0,\"lr\":0.001,\"grad_norm\":1.5,\"elapsed_s\":0.3}\n".repeat(2);
        Seeds {
            narratives: read(&dataset.train.narratives),
            refexp: read(&dataset.train.refexp),
            regions: read(&dataset.train.regions),
            config: pixel_tasks::demo::DEFAULT_DEMO_CONFIG.as_bytes().to_vec(),
            ablation: std::fs::read(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../configs/ablations/localization-representation.toml"),
            )
            .unwrap(),
            checkpoint: read(&checkpoint),
            log: log.into_bytes(),
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
    }

    #[test]
    fn configs_and_ablations_never_panic(edits in edits()) {
        let s = seeds();
        let (_d, p) = file("exp.toml", &mutate(&s.config, &edits));
        let _ = DemoConfig::load(&p);
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
}
