"""The pre- and post-processing shared by predict, validation and the exported run.py."""

import pytest
import torch

from facekd.inference import flip_logits, predict_logits
from facekd.labels import CLASS_NAMES, FLIP_PERMUTATION, NUM_CLASSES


def mirror_equivariant_parser() -> torch.nn.Module:
    """A one-conv "parser" that labels a mirrored image as the mirror of its labels with
    left and right swapped, as a perfect face parser would: class c's kernel is the mirror
    of its left/right partner's. Flip TTA must then give back exactly its plain logits."""
    conv = torch.nn.Conv2d(3, NUM_CLASSES, 5, padding=2)
    perm = torch.tensor(FLIP_PERMUTATION)
    with torch.no_grad():
        conv.weight.copy_((conv.weight + conv.weight[perm].flip(-1)) / 2)
        conv.bias.copy_((conv.bias + conv.bias[perm]) / 2)
    return conv.eval()


def test_flip_tta_swaps_left_and_right_channels():
    assert FLIP_PERMUTATION != list(range(NUM_CLASSES))  # there are pairs to swap
    model = mirror_equivariant_parser()
    images = torch.randint(0, 256, (2, 3, 40, 48), dtype=torch.uint8)
    plain = predict_logits(model, images, 32, flip_tta=False)
    assert not torch.allclose(plain, plain[:, FLIP_PERMUTATION].flip(-1), atol=1e-3)  # the image is not symmetric
    torch.testing.assert_close(predict_logits(model, images, 32, flip_tta=True), plain, atol=1e-4, rtol=0)


def test_flip_logits_moves_left_scores_to_the_right_channel():
    logits = torch.randn(1, NUM_CLASSES, 4, 6)
    flipped = flip_logits(logits)
    left, right = CLASS_NAMES.index("l_eye"), CLASS_NAMES.index("r_eye")
    assert torch.equal(flipped[:, right], logits[:, left].flip(-1))
    assert torch.equal(flipped[:, 0], logits[:, 0].flip(-1))  # background has no partner


@pytest.mark.parametrize("value", [0, 1, 100, 200, 255])
def test_resizing_a_flat_uint8_image_keeps_its_value(value):
    from facekd.inference import resize_images
    images = torch.full((1, 3, 100, 90), value, dtype=torch.uint8)
    assert torch.equal(resize_images(images, 64), torch.full((1, 3, 64, 64), value, dtype=torch.uint8))
