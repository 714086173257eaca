import numpy as np
import pytest
import torch
from PIL import Image

from facekd.data import DataError, find_pairs, load_split
from facekd.labels import FLIP_PERMUTATION
from facekd.transforms import IGNORE_INDEX, AugmentConfig, hflip_with_swap, random_affine, train_batch


def test_sample_split_is_cached_as_uint8(sample_root):
    split = load_split(sample_root, "train", 64, show_progress=False)
    assert split.images.shape == (len(split), 3, 64, 64) and split.images.dtype == torch.uint8
    assert split.masks.shape == (len(split), 64, 64) and split.masks.dtype == torch.uint8
    assert int(split.masks.max()) <= 18


def test_images_without_masks_are_left_out(data_copy):
    extra = data_copy / "val" / "images" / "zzz_unlabelled.jpg"
    Image.new("RGB", (512, 512)).save(extra)
    labelled = find_pairs(data_copy, "val")
    everything = find_pairs(data_copy, "val", require_masks=False)
    assert len(everything) == len(labelled) + 1


def test_missing_folder_names_it(tmp_path):
    with pytest.raises(DataError, match="nowhere"):
        find_pairs(tmp_path / "nowhere", "train")


def test_zero_pairs_is_an_error(tmp_path):
    (tmp_path / "train" / "images").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "train" / "images" / "a.jpg")
    with pytest.raises(DataError, match="no image has a mask"):
        find_pairs(tmp_path, "train")


def test_truncated_image_names_the_file(data_copy):
    path = sorted((data_copy / "train" / "images").glob("*.jpg"))[0]
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(DataError, match=path.name):
        load_split(data_copy, "train", 64, show_progress=False)


def test_mask_size_mismatch_names_the_file(data_copy):
    path = sorted((data_copy / "train" / "masks").glob("*.png"))[0]
    Image.open(path).resize((100, 100)).save(path)
    with pytest.raises(DataError, match=f"{path.name}.*100x100"):
        load_split(data_copy, "train", 64, show_progress=False)


def test_label_above_18_names_the_file(data_copy):
    path = sorted((data_copy / "train" / "masks").glob("*.png"))[0]
    mask = np.array(Image.open(path))
    mask[0, 0] = 42
    Image.fromarray(mask).save(path)
    with pytest.raises(DataError, match=f"{path.name}.*label 42"):
        load_split(data_copy, "train", 64, show_progress=False)


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK"])
def test_non_rgb_images_are_converted(data_copy, mode):
    path = sorted((data_copy / "train" / "images").glob("*.jpg"))[0]
    Image.open(path).convert(mode).save(path.with_suffix(".tmp"), format="TIFF" if mode != "L" else "PNG")
    path.with_suffix(".tmp").replace(path)
    split = load_split(data_copy, "train", 32, limit=2, show_progress=False)
    assert split.images.shape[1] == 3


def test_flip_swaps_left_and_right_labels():
    masks = torch.zeros(2, 4, 4, dtype=torch.uint8)
    masks[:, :, 0] = 4  # l_eye on the image-left column
    masks[:, :, 1] = 6
    images = torch.arange(2 * 3 * 16, dtype=torch.uint8).view(2, 3, 4, 4)
    out_images, out_masks = hflip_with_swap(images, masks, torch.tensor([True, False]))
    assert torch.equal(out_masks[0, :, 3], torch.full((4,), 5, dtype=torch.uint8))  # mirrored and swapped
    assert torch.equal(out_masks[0, :, 2], torch.full((4,), 7, dtype=torch.uint8))
    assert torch.equal(out_masks[1], masks[1])  # untouched sample
    assert torch.equal(out_images[0], images[0].flip(-1))
    assert FLIP_PERMUTATION[8] == 9 and FLIP_PERMUTATION[9] == 8


def test_affine_keeps_labels_valid_and_marks_padding():
    masks = torch.randint(0, 19, (4, 32, 32), dtype=torch.uint8)
    images = torch.rand(4, 3, 32, 32) * 255
    cfg = AugmentConfig(scale=(0.5, 0.5), rotate_deg=0, shift=0)
    _, out, _ = random_affine(images, masks, cfg)
    values = set(out.unique().tolist())
    assert IGNORE_INDEX in values  # zooming out brings in pixels from outside the image
    assert values - {IGNORE_INDEX} <= set(range(19))
    identity = AugmentConfig(scale=(1, 1), rotate_deg=0, shift=0)
    _, same, _ = random_affine(images, masks, identity)
    assert torch.equal(same, masks.long())  # nearest sampling never invents labels


def test_train_batch_is_channels_last_and_normalised():
    images = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    masks = torch.randint(0, 19, (2, 16, 16), dtype=torch.uint8)
    x, y, _ = train_batch(images, masks, AugmentConfig())
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    # with every augmentation off, the batch is exactly the ImageNet-normalised input, the
    # same affine map that inference applies, so training and prediction see alike pixels
    off = AugmentConfig(flip=0, scale=(1, 1), rotate_deg=0, shift=0, brightness=0, contrast=0, saturation=0)
    x, y, _ = train_batch(images, masks, off)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(x, (images / 255 - mean) / std, atol=1e-4, rtol=0)
    assert torch.equal(y, masks.long())


def test_affine_warp_never_blends_labels():
    masks = torch.zeros(4, 32, 32, dtype=torch.uint8)
    masks[:, :, 16:] = 10  # a blend of 0 and 10 at the border would invent ids 1..9
    images = torch.rand(4, 3, 32, 32) * 255
    cfg = AugmentConfig(scale=(0.7, 1.3), rotate_deg=30, shift=0.1)
    _, out, _ = random_affine(images, masks, cfg, torch.Generator().manual_seed(0))
    assert set(out.unique().tolist()) == {0, 10, IGNORE_INDEX}
