import numpy as np
import pytest
import torch
from PIL import Image

from facekd.inference import mask_image, save_mask
from facekd.metric import FScoreMeter, evaluate_folders, read_mask
from tests.reference import perturb, reference_fscore


def test_vectorised_fscore_matches_reference_on_real_masks(sample_root):
    rng = np.random.default_rng(0)
    gts = [read_mask(p) for p in sorted((sample_root / "train" / "masks").glob("*.png"))[:8]]
    preds = [perturb(g, rng) for g in gts]
    preds[0] = gts[0]  # a perfect prediction scores exactly (1 - eps effects)
    meter = FScoreMeter()
    for g, p in zip(gts, preds):
        meter.update(torch.from_numpy(p)[None], torch.from_numpy(g)[None])
    per_image = [reference_fscore(g, p) for g, p in zip(gts, preds)]
    expected = np.mean(per_image)
    assert meter.summary()["fscore"] == pytest.approx(expected, abs=1e-9)
    assert meter.summary()["image_fscores"] == pytest.approx(per_image, abs=1e-6)  # in the order given
    assert 0.3 < expected < 0.99


def test_score_is_mean_over_images_not_pooled():
    gt = torch.zeros(2, 4, 4, dtype=torch.uint8)
    gt[0, :2] = 1
    pred = gt.clone()
    pred[1] = 1  # image 1 is all wrong
    meter = FScoreMeter()
    meter.update(pred, gt)
    summary = meter.summary()
    assert summary["images"] == 2
    assert summary["fscore"] == pytest.approx(0.5, abs=1e-6)


def test_left_right_swap_rate_counts_only_mirrored_predictions():
    gt = torch.zeros(1, 4, 4, dtype=torch.uint8)
    gt[0, 0] = 4   # 4 l_eye pixels
    gt[0, 1] = 9   # 4 r_ear pixels
    pred = gt.clone()
    pred[0, 0, :2] = 5  # two l_eye pixels called r_eye: swaps
    pred[0, 1, :1] = 1  # one r_ear pixel called skin: wrong, but not a swap
    meter = FScoreMeter()
    meter.update(pred, gt)
    assert meter.summary()["left_right_swap_rate"] == pytest.approx(2 / 8)


def test_palette_mask_survives_scorer_conversion(tmp_path):
    mask = (np.arange(512 * 512).reshape(512, 512) % 19).astype(np.uint8)
    save_mask(mask, tmp_path / "m.png")
    im = Image.open(tmp_path / "m.png")
    assert im.mode == "P"
    assert np.array_equal(np.array(im.convert("P")), mask)


def test_colour_mask_would_be_requantised(tmp_path):
    """Why masks are written as palette ids: the scorer's convert('P') quantises a colour
    image to a web palette, destroying the ids. (On Pillow 13 a mode-L mask happens to keep
    its values through convert('P'), but the challenge asks for mode P, and check-submission
    flags L.)"""
    mask = (np.arange(64 * 64).reshape(64, 64) % 19).astype(np.uint8)
    mask_image(mask).convert("RGB").save(tmp_path / "rgb.png")
    assert not np.array_equal(read_mask(tmp_path / "rgb.png"), mask)
    mask_image(mask).save(tmp_path / "p.png")
    assert np.array_equal(read_mask(tmp_path / "p.png"), mask)


def test_evaluate_folders_and_missing_prediction(tmp_path, sample_root):
    gt_dir = sample_root / "val" / "masks"
    pred_dir = tmp_path / "pred"
    for p in gt_dir.glob("*.png"):
        save_mask(read_mask(p), pred_dir / p.name)
    summary = evaluate_folders(pred_dir, gt_dir, show_progress=False)
    assert summary["images"] == len(list(gt_dir.glob("*.png")))
    assert summary["fscore"] == pytest.approx(1.0, abs=1e-6)
    spoiled = sorted(pred_dir.glob("*.png"))[1]
    save_mask(np.zeros_like(read_mask(spoiled)), spoiled)  # all background: that one image scores low
    summary = evaluate_folders(pred_dir, gt_dir, show_progress=False)
    by_name = dict(zip(summary["image_names"], summary["image_fscores"], strict=True))
    assert by_name.pop(spoiled.name) < 0.5 and all(f == pytest.approx(1.0, abs=1e-6) for f in by_name.values())
    next(pred_dir.glob("*.png")).unlink()
    with pytest.raises(FileNotFoundError, match="predictions missing"):
        evaluate_folders(pred_dir, gt_dir, show_progress=False)


def test_out_of_range_predicted_ids_are_misses_as_the_reference_scores_them():
    rng = np.random.default_rng(1)
    gt = rng.integers(0, 19, (2, 16, 16)).astype(np.uint8)
    gt[:, :4] = 18  # the last class is present, so clamping 19..255 onto it would score hits
    pred = gt.copy()
    pred[:, :8] = rng.choice([19, 200, 255], (2, 8, 16))
    meter = FScoreMeter()
    meter.update(torch.from_numpy(pred), torch.from_numpy(gt))
    expected = np.mean([reference_fscore(g, p) for g, p in zip(gt, pred)])
    assert meter.summary()["fscore"] == pytest.approx(expected, abs=1e-9)
    assert meter.summary()["invalid_pixels"] == 2 * 8 * 16


def test_mask_image_holds_ids_up_to_18_and_refuses_19():
    assert np.asarray(mask_image(np.full((4, 4), 18, np.uint8))).max() == 18
    with pytest.raises(ValueError, match="ids < 19"):
        mask_image(np.full((4, 4), 19, np.uint8))
