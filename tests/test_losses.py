"""The training losses: the supervised Dice term against the challenge's score, and every registered loss."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from facekd.config import RunConfig, apply_overrides
from facekd.losses import dice_loss, training_loss, weight_of
from facekd.labels import NUM_CLASSES
from facekd.metric import read_mask
from facekd.registry import LOSSES
from facekd.transforms import IGNORE_INDEX
from tests.reference import perturb, reference_fscore


def confident_logits(pred: np.ndarray) -> torch.Tensor:
    """Logits whose softmax is the one-hot prediction to float precision."""
    return F.one_hot(torch.from_numpy(pred).long(), NUM_CLASSES).permute(0, 3, 1, 2).float() * 100


def test_per_image_dice_of_hard_predictions_is_one_minus_the_challenge_score(sample_root):
    # On a one-hot prediction, class c's soft Dice is 2TP / (2TP + FP + FN), its F1; averaged
    # per image over the ground truth's classes and then over images, it is the score.
    rng = np.random.default_rng(1)
    gts = np.stack([read_mask(p) for p in sorted((sample_root / "train" / "masks").glob("*.png"))[:4]])
    preds = np.stack([perturb(g, rng) for g in gts])
    labels = torch.from_numpy(gts).long()
    score = np.mean([reference_fscore(g, p) for g, p in zip(gts, preds)])
    per_image = 1 - dice_loss(confident_logits(preds), labels, per_image=True).item()
    pooled = 1 - dice_loss(confident_logits(preds), labels).item()
    assert per_image == pytest.approx(score, abs=1e-3)  # the +1 smoothing of rare classes
    assert abs(pooled - score) > 10 * abs(per_image - score)  # pooling weighs rare classes by their pixels


def test_per_image_dice_skips_ignored_pixels_and_empty_images():
    labels = torch.full((2, 8, 8), IGNORE_INDEX)
    labels[0, :4] = 1
    labels[0, 4:] = 2
    pred = np.zeros((2, 8, 8), dtype=np.int64)
    pred[0, :4], pred[0, 4:] = 1, 2
    loss = dice_loss(confident_logits(pred), labels, per_image=True)
    assert loss.item() == pytest.approx(0.0, abs=1e-5)  # image 1 is all padding and is not scored


def test_config_switches_the_supervised_dice_to_per_image():
    torch.manual_seed(0)
    logits = torch.randn(2, NUM_CLASSES, 8, 8, requires_grad=True)
    labels = torch.randint(0, NUM_CLASSES, (2, 8, 8))
    labels[1] = 0
    per_image = training_loss(RunConfig(loss_weights={"ce": 1.0, "dice": 1.0}, dice_scope="image"))(logits, None, labels)
    pooled = training_loss(RunConfig(loss_weights={"ce": 1.0, "dice": 1.0}))(logits, None, labels)
    assert per_image["dice"].item() == pytest.approx(dice_loss(logits, labels, per_image=True).item())
    assert per_image["dice"].item() != pytest.approx(pooled["dice"].item(), abs=1e-3)
    per_image["loss"].backward()
    assert logits.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="dice_scope"):
        RunConfig(dice_scope="pixel")


@pytest.mark.parametrize("name", LOSSES.names())
def test_every_registered_loss_runs_forward_and_backward_through_training_loss(name):
    """Weighing one loss alone in the config turns it on, and only it; its gradient reaches the
    student's logits, with the teacher's side taken from stored soft targets."""
    loss = LOSSES[name]
    # set as a user sets it: `--set ce_weight=0 --set kd_weight=1`
    weights = {LOSSES[other].setting: 0.0 for other in LOSSES}
    cfg = apply_overrides(RunConfig(), {**weights, loss.setting: 1.0})
    assert weight_of(cfg, loss) == 1.0
    torch.manual_seed(0)
    logits = torch.randn(2, NUM_CLASSES, 8, 8, requires_grad=True)
    labels = torch.randint(0, NUM_CLASSES, (2, 32, 32))
    soft = torch.randn(2, NUM_CLASSES, 8, 8) if loss.uses == "teacher" else None
    terms = training_loss(cfg)(logits, None, labels, soft)
    assert set(terms) == {name, "loss"} and torch.isfinite(terms["loss"])
    terms["loss"].backward()
    assert logits.grad.abs().sum() > 0


def test_a_config_that_weighs_no_loss_is_refused():
    with pytest.raises(ValueError, match="every loss weight is 0"):
        training_loss(RunConfig(loss_weights={}))


def test_teacher_term_size_labels_compares_on_the_labels_grid_and_masks_one_stored_pixel():
    """With teacher_term_size "labels", KD sees the student's and the stored teacher's logits
    both upsampled to the labels' size, and leaves out the padding plus a margin of one stored
    pixel (4 label pixels here); the default compares at the student's own output size."""
    from facekd.losses import pixel_kd_loss
    torch.manual_seed(0)
    logits, soft = torch.randn(2, NUM_CLASSES, 8, 8), torch.randn(2, NUM_CLASSES, 8, 8)
    labels = torch.randint(0, NUM_CLASSES, (2, 32, 32))
    labels[:, :, 24:] = IGNORE_INDEX  # a warp brought in padding on the right
    kd_only = {"ce": 0.0, "kd": 1.0}

    def up(x):
        return F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    valid = torch.ones(2, 32, 32, dtype=torch.bool)
    valid[:, :, 20:] = False
    fine = training_loss(RunConfig(loss_weights=kd_only, temperature=2.0, teacher_term_size="labels"))(
        logits, None, labels, soft)
    assert fine["kd"].item() == pytest.approx(pixel_kd_loss(up(logits), up(soft), 2.0, valid).item(), rel=1e-5)
    coarse_valid = torch.ones(2, 8, 8, dtype=torch.bool)
    coarse_valid[:, :, 5:] = False
    coarse = training_loss(RunConfig(loss_weights=kd_only, temperature=2.0))(logits, None, labels, soft)
    assert coarse["kd"].item() == pytest.approx(pixel_kd_loss(logits, soft, 2.0, coarse_valid).item(), rel=1e-5)
    assert fine["kd"].item() != pytest.approx(coarse["kd"].item(), rel=1e-3)
    with pytest.raises(ValueError, match="teacher_term_size must be 'output' or 'labels'"):
        RunConfig(teacher_term_size="input")
