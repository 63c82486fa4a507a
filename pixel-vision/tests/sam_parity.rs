//! SAM parity against HF transformers and segment-anything, for the dfdx model and the host
//! image encoder [`HostSamImageEncoder`] (fixtures from
//! `tools/make_vision_fixtures.py`; regenerate with `python tools/make_vision_fixtures.py`).
use dfdx::prelude::*;
use pixel_core::checkpoint::TensorStore;
use pixel_core::host_matrix::Dtype;
use pixel_core::testing::max_abs_diff;
use pixel_vision::sam::image_encoder::get_rel_pos;
use pixel_vision::sam::{HostSamImageEncoder, SamModel, SamPrompts};
use std::path::PathBuf;

type TestSam = SamModel<Const<64>, Const<32>, Cpu>;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn read(name: &str) -> TensorStore {
    TensorStore::read(&fixtures().join(name)).unwrap()
}

fn f32s(store: &TensorStore, name: &str) -> (Vec<usize>, Vec<f32>) {
    let t = store.require(name).unwrap();
    (t.shape.clone(), t.to_f32())
}

fn i64s(store: &TensorStore, name: &str) -> Vec<i64> {
    store.require(name).unwrap().as_i64().unwrap().to_vec()
}

/// Asserts max |got - want| <= rel * max |want| and returns the error.
fn check(what: &str, got: &[f32], want: &[f32], rel: f32) -> f32 {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let err = max_abs_diff(got, want);
    eprintln!("{what}: max abs error {err:.3e} (max |ref| {scale:.3e})");
    assert!(
        err <= rel * scale,
        "{what}: max abs error {err} > {rel} x {scale}"
    );
    err
}

fn pixel_values(dev: &Cpu, io: &TensorStore) -> Tensor<(usize, usize, usize, usize), f32, Cpu> {
    let (shape, values) = f32s(io, "pixel_values");
    dev.tensor_from_vec(values, (shape[0], shape[1], shape[2], shape[3]))
}

#[test]
fn hf_sam_image_embeddings_and_masks_match() {
    let dev: Cpu = Default::default();
    let model = TestSam::load_hf_dir(&dev, &fixtures().join("sam-vit-test")).unwrap();
    let io = read("sam_test_io.safetensors");
    let emb = model.image_embeddings(pixel_values(&dev, &io));
    let (_, want) = f32s(&io, "image_embeddings");
    check(
        "image_embeddings",
        &emb.clone().to_nchw().as_vec(),
        &want,
        1e-4,
    );
    let host = HostSamImageEncoder::new(&model.vision_encoder, Dtype::F32);
    check(
        "image_embeddings by the host encoder",
        &host.forward(pixel_values(&dev, &io)).to_nchw().as_vec(),
        &want,
        1e-4,
    );

    let (_, coords) = f32s(&io, "input_points");
    let prompts = SamPrompts {
        points: Some((coords, i64s(&io, "input_labels"))),
        boxes: None,
        masks: None,
        batch: 2,
        prompts: 1,
    };
    let out = model
        .predict_from_embeddings(emb.clone(), &prompts, true)
        .unwrap();
    check(
        "points pred_masks",
        &out.masks.as_vec(),
        &f32s(&io, "points_pred_masks").1,
        1e-3,
    );
    check(
        "points iou_scores",
        &out.iou_scores.as_vec(),
        &f32s(&io, "points_iou_scores").1,
        1e-3,
    );

    let prompts = SamPrompts {
        points: None,
        boxes: Some(f32s(&io, "input_boxes").1),
        masks: None,
        batch: 2,
        prompts: 1,
    };
    let out = model
        .predict_from_embeddings(emb.clone(), &prompts, false)
        .unwrap();
    assert_eq!(out.masks.shape(), &(2, 1, 32, 32));
    check(
        "boxes pred_masks",
        &out.masks.as_vec(),
        &f32s(&io, "boxes_pred_masks").1,
        1e-3,
    );
    check(
        "boxes iou_scores",
        &out.iou_scores.as_vec(),
        &f32s(&io, "boxes_iou_scores").1,
        1e-3,
    );

    let prompts = SamPrompts {
        points: Some((f32s(&io, "input_points2").1, i64s(&io, "input_labels2"))),
        boxes: None,
        masks: None,
        batch: 2,
        prompts: 2,
    };
    let out = model
        .predict_from_embeddings(emb.clone(), &prompts, true)
        .unwrap();
    check(
        "2 prompts pred_masks",
        &out.masks.as_vec(),
        &f32s(&io, "points2_pred_masks").1,
        1e-3,
    );
    check(
        "2 prompts iou_scores",
        &out.iou_scores.as_vec(),
        &f32s(&io, "points2_iou_scores").1,
        1e-3,
    );

    let prompts = SamPrompts {
        points: Some((f32s(&io, "input_points").1, i64s(&io, "input_labels"))),
        boxes: None,
        masks: Some(f32s(&io, "input_masks").1),
        batch: 2,
        prompts: 1,
    };
    let out = model.predict_from_embeddings(emb, &prompts, false).unwrap();
    check(
        "mask prompt pred_masks",
        &out.masks.as_vec(),
        &f32s(&io, "masks_pred_masks").1,
        1e-3,
    );
    check(
        "mask prompt iou_scores",
        &out.iou_scores.as_vec(),
        &f32s(&io, "masks_iou_scores").1,
        1e-3,
    );
}

#[test]
fn official_sam_checkpoint_names_load_and_match_segment_anything() {
    let dev: Cpu = Default::default();
    let mut model = TestSam::new(&dev, &pixel_vision::sam::SamConfig::test()).unwrap();
    model
        .load_store(&read("sam-vit-test-official.safetensors"))
        .unwrap();
    let io = read("sam_test_io.safetensors");
    let official = read("sam_official_io.safetensors");
    let emb = model.image_embeddings(pixel_values(&dev, &io));
    check(
        "official image_embeddings",
        &emb.clone().to_nchw().as_vec(),
        &f32s(&official, "image_embeddings").1,
        1e-4,
    );
    let prompts = SamPrompts {
        points: Some((f32s(&io, "input_points").1, i64s(&io, "input_labels"))),
        boxes: None,
        masks: None,
        batch: 2,
        prompts: 1,
    };
    let out = model.predict_from_embeddings(emb, &prompts, true).unwrap();
    check(
        "official masks",
        &out.masks.as_vec(),
        &f32s(&official, "points_pred_masks").1,
        1e-3,
    );
    check(
        "official iou",
        &out.iou_scores.as_vec(),
        &f32s(&official, "points_iou_scores").1,
        1e-3,
    );
}

#[test]
fn rel_pos_tables_are_interpolated_like_segment_anything() {
    let dev: Cpu = Default::default();
    let store = read("rel_pos.safetensors");
    for (q, k, len) in [(5, 7, 9), (7, 7, 9), (3, 3, 5), (4, 2, 11)] {
        let (shape, table) = f32s(&store, &format!("table_{q}_{k}_{len}"));
        let table = dev.tensor_from_vec(table, (shape[0], shape[1]));
        let got = get_rel_pos::<Cpu, NoneTape>(q, k, &table).as_vec();
        let (_, want) = f32s(&store, &format!("rel_{q}_{k}_{len}"));
        check(
            &format!("get_rel_pos({q}, {k}) from {len}"),
            &got,
            &want,
            1e-5,
        );
    }
}

#[test]
fn a_mismatched_checkpoint_lists_every_problem() {
    let dev: Cpu = Default::default();
    let mut model = TestSam::new(&dev, &pixel_vision::sam::SamConfig::test()).unwrap();
    let mut store = read("sam-vit-test/model.safetensors");
    store.tensors.remove("vision_encoder.pos_embed");
    store.tensors.remove("mask_decoder.iou_token.weight");
    store.insert(
        "vision_encoder.extra",
        pixel_core::checkpoint::StoredTensor::f32(vec![1], vec![0.0]),
    );
    let err = model.load_store(&store).unwrap_err().to_string();
    assert!(
        err.contains("missing tensor `vision_encoder.pos_embed`"),
        "{err}"
    );
    assert!(
        err.contains("missing tensor `mask_decoder.iou_token.weight`"),
        "{err}"
    );
    assert!(
        err.contains("unexpected tensor `vision_encoder.extra`"),
        "{err}"
    );
}
