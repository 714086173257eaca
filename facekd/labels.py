"""The 19 CelebAMask-HQ classes, the challenge palette and the left/right swap."""

NUM_CLASSES = 19
CLASS_NAMES = (
    "background", "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow",
    "l_ear", "r_ear", "mouth", "u_lip", "l_lip", "hair", "hat", "ear_r",
    "neck_l", "neck", "cloth",
)

# The challenge's palette: 16 listed colours, then grey (i, i, i) for every other index.
# Any palette whose first 19 entries are distinct keeps ids intact through the scorer's
# `Image.open(p).convert("P")`; using the challenge's own keeps masks viewable as intended.
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
