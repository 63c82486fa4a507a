//! The checked entry points (`SamModel::try_image_embeddings`, `SamModel::predict`,
//! `Eva02::try_forward_features`) turn image batches of the wrong shape into errors that name
//! the tensor, the expected and the actual shape, instead of panicking inside a layer.
use dfdx::prelude::*;
use pixel_vision::eva02::{Eva02, Eva02Config};
use pixel_vision::sam::{SamConfig, SamModel, SamPrompts};
use pixel_vision::{Images, VisionError};

fn images(dev: &Cpu, shape: (usize, usize, usize, usize)) -> Images<Cpu> {
    dev.zeros_like(&shape)
}

fn assert_shape_error(err: VisionError, size: usize, shape: (usize, usize, usize, usize)) {
    let message = err.to_string();
    let expected = format!("`pixel_values` must be [B, 3, {size}, {size}] with B >= 1");
    let (b, c, h, w) = shape;
    assert!(matches!(err, VisionError::Input(_)), "{message}");
    assert!(message.contains(&expected), "{message}");
    assert!(
        message.contains(&format!("it is [{b}, {c}, {h}, {w}]")),
        "{message}"
    );
}

const WRONG_SAM_SHAPES: [(usize, usize, usize, usize); 5] = [
    (1, 1, 128, 128),
    (1, 4, 128, 128),
    (1, 3, 64, 64),
    (2, 3, 128, 144),
    (0, 3, 128, 128),
];

#[test]
fn sam_image_embeddings_reject_images_of_the_wrong_shape() {
    let dev = Cpu::seed_from_u64(0);
    let sam = SamModel::<Const<64>, Const<32>, Cpu>::new(&dev, &SamConfig::test()).unwrap();
    for shape in WRONG_SAM_SHAPES {
        let err = sam.try_image_embeddings(images(&dev, shape)).unwrap_err();
        assert_shape_error(err, 128, shape);
    }
    let ok = sam
        .try_image_embeddings(images(&dev, (1, 3, 128, 128)))
        .unwrap();
    assert_eq!((ok.height, ok.width), (8, 8));
}

#[test]
fn sam_predict_rejects_images_of_the_wrong_shape() {
    let dev = Cpu::seed_from_u64(0);
    let sam = SamModel::<Const<64>, Const<32>, Cpu>::new(&dev, &SamConfig::test()).unwrap();
    for shape in WRONG_SAM_SHAPES {
        let prompts = SamPrompts {
            points: None,
            boxes: Some([1.0, 2.0, 30.0, 40.0].repeat(shape.0)),
            masks: None,
            batch: shape.0,
            prompts: 1,
        };
        let err = sam
            .predict(images(&dev, shape), &prompts, true)
            .unwrap_err();
        assert_shape_error(err, 128, shape);
    }
}

#[test]
fn eva02_forward_features_rejects_images_of_the_wrong_shape() {
    let dev = Cpu::seed_from_u64(0);
    let mut config = Eva02Config::sized(56, 64, 2, 4, false, true);
    config.ref_feat_shape = 4;
    let eva = Eva02::<Const<64>, Cpu>::new(&dev, &config).unwrap();
    for shape in [
        (1, 1, 56, 56),
        (1, 3, 84, 84),
        (1, 3, 56, 42),
        (0, 3, 56, 56),
    ] {
        let err = eva.try_forward_features(images(&dev, shape)).unwrap_err();
        assert_shape_error(err, 56, shape);
    }
    let (features, grid) = eva
        .try_forward_features(images(&dev, (2, 3, 56, 56)))
        .unwrap();
    assert_eq!(grid, (4, 4));
    assert_eq!(features.shape().1, 17);
}
