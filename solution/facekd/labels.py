"""The 19 CelebAMask-HQ classes, the challenge palette and the left/right swap."""

NUM_CLASSES = 19
CLASS_NAMES = (
    "background", "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow",
    "l_ear", "r_ear", "mouth", "u_lip", "l_lip", "hair", "hat", "ear_r",
    "neck_l", "neck", "cloth",
)

# Exactly the palette of the challenge's reference snippet: these 16 colours for ids 0..15,
# then (i, i, i) for every index i from 16 to 255.
_LISTED = (
    (0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0),
    (0, 0, 128), (128, 0, 128), (0, 128, 128), (128, 128, 128),
    (64, 0, 0), (191, 0, 0), (64, 128, 0), (191, 128, 0),
    (64, 0, 128), (191, 0, 128), (64, 128, 128), (191, 128, 128),
)
PALETTE = [c for rgb in _LISTED for c in rgb] + [i for i in range(len(_LISTED), 256) for _ in range(3)]

# A horizontal flip turns the subject's left parts into right parts, so the ids must swap
# too; otherwise flip augmentation teaches the model that l_eye and r_eye are the same.
_SWAPS = ((4, 5), (6, 7), (8, 9))
FLIP_PERMUTATION = list(range(NUM_CLASSES))
for _a, _b in _SWAPS:
    FLIP_PERMUTATION[_a], FLIP_PERMUTATION[_b] = _b, _a


def colourise(masks):
    """Bx3xHxW uint8 colour images of a BxHxW tensor of class ids, in the challenge palette."""
    import torch  # here, so that the label facts import without torch (the CLI's --help stays fast)
    palette = torch.tensor(PALETTE, dtype=torch.uint8).view(-1, 3)
    return palette[masks.long()].permute(0, 3, 1, 2)
