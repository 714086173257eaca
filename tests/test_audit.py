import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from facekd.audit import audit_split, save_panel, swap_lut, write_fixed
from facekd.app.cli import main
from facekd.labels import PALETTE

SIZE = 64


def _face(eyes=1, brows=1, ears=1, lone_ear=0) -> np.ndarray:
    """A skin blob with left/right parts. For each pair, +1 puts the l_ region on the
    image-right (the split's majority below), -1 on the image-left, 0 leaves the pair out.
    lone_ear puts a single l_ear (class 8) on the side that convention +1/-1 implies."""
    m = np.zeros((SIZE, SIZE), np.uint8)
    m[8:56, 12:52] = 1
    for sign, (left, right), rows in ((eyes, (4, 5), slice(24, 30)), (brows, (6, 7), slice(16, 20)),
                                      (ears, (8, 9), slice(28, 40))):
        if not sign:
            continue
        inner = left in (4, 6)
        right_cols, left_cols = (slice(36, 46), slice(18, 28)) if inner else (slice(52, 58), slice(6, 12))
        m[rows, right_cols if sign > 0 else left_cols] = left
        m[rows, left_cols if sign > 0 else right_cols] = right
    if lone_ear:
        m[28:40, slice(52, 58) if lone_ear > 0 else slice(6, 12)] = 8
    return m


def _write(root, stem, mask, image_size=SIZE):
    (root / "train" / "images").mkdir(parents=True, exist_ok=True)
    (root / "train" / "masks").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (image_size, image_size), (120, 90, 80)).save(root / "train" / "images" / f"{stem}.jpg")
    im = Image.fromarray(mask, mode="P")
    im.putpalette(PALETTE)
    im.save(root / "train" / "masks" / f"{stem}.png")


@pytest.fixture
def labelled_root(tmp_path):
    root = tmp_path / "data"
    for i in range(5):
        _write(root, f"ok{i}", _face())
    _write(root, "ok_partial", _face(eyes=1, brows=0, ears=0))
    _write(root, "no_pairs", _face(eyes=0, brows=0, ears=0))
    _write(root, "mirrored_all", _face(-1, -1, -1))
    _write(root, "mirrored_lone_ear", _face(-1, -1, 0, lone_ear=-1))
    _write(root, "inconsistent", _face(eyes=1, brows=-1, ears=1))
    _write(root, "empty", np.zeros((SIZE, SIZE), np.uint8))
    bad = _face()
    bad[0, 0] = 40
    _write(root, "out_of_range", bad)
    _write(root, "size_mismatch", _face(), image_size=SIZE * 2)
    (root / "val").mkdir()  # another split: the fixed copy must carry it along
    return root


def _digest(root):
    return {p.relative_to(root): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_audit_flags_exactly_the_planted_problems(labelled_root):
    report = audit_split(labelled_root, "train", show_progress=False)
    assert report["convention"] == "l_ on image-right"
    problems = {a.stem: " ".join(a.problems) for a in report["flagged"]}
    assert set(problems) == {"mirrored_all", "mirrored_lone_ear", "inconsistent", "empty", "out_of_range",
                             "size_mismatch"}
    assert problems["mirrored_all"].startswith("mirrored")
    assert problems["mirrored_lone_ear"].startswith("mirrored")
    assert problems["inconsistent"].startswith("inconsistent: brows")
    assert "out of range" in problems["out_of_range"] and "empty" in problems["empty"]
    assert "size mismatch" in problems["size_mismatch"]
    assert report["mirrored"] == 2 and report["inconsistent"] == 1


def test_fix_swaps_exactly_the_flagged_ids_and_leaves_the_input_alone(labelled_root, tmp_path):
    before = _digest(labelled_root)
    report = audit_split(labelled_root, "train", show_progress=False)
    out = write_fixed(report, tmp_path / "fixed")
    assert _digest(labelled_root) == before
    assert (out / "val").is_dir()

    def read(root, stem):
        return np.asarray(Image.open(root / "train" / "masks" / f"{stem}.png"))

    for mask in sorted((labelled_root / "train" / "masks").glob("*.png")):
        stem, original, fixed = mask.stem, read(labelled_root, mask.stem), read(out, mask.stem)
        if stem.startswith("mirrored"):
            expected = swap_lut(["eyes", "brows", "ears"])[original]
        elif stem == "inconsistent":
            expected = swap_lut(["brows"])[original]
        else:
            expected = original
        np.testing.assert_array_equal(fixed, expected, err_msg=stem)
    # the lone ear of a mirrored mask moves to the other class too
    assert (read(out, "mirrored_lone_ear") == 9).any() and not (read(out, "mirrored_lone_ear") == 8).any()

    record = json.loads((out / "audit.json").read_text())
    assert {c["stem"] for c in record["changed"]} == {"mirrored_all", "mirrored_lone_ear", "inconsistent"}
    # auditing the fixed copy finds no left/right problem left
    again = audit_split(out, "train", show_progress=False)
    assert again["mirrored"] == 0 and again["inconsistent"] == 0
    assert save_panel(report, tmp_path / "panel.png").is_file()


def test_fix_refuses_a_non_empty_folder(labelled_root, tmp_path):
    report = audit_split(labelled_root, "train", show_progress=False)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("")
    with pytest.raises(FileExistsError, match="taken"):
        write_fixed(report, tmp_path / "taken")


def test_audit_cli_on_the_embedded_sample(tmp_path, capsys):
    # the embedded sample holds one of the real train split's mirrored masks
    assert main(["audit", "--fix", str(tmp_path / "fixed")]) == 0
    out = capsys.readouterr().out
    assert "mirrored 1" in out and "01a64ed966194e1baf6b633a108a95eb" in out
    assert (tmp_path / "fixed" / "flagged.png").is_file()
    assert main(["audit", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["mirrored"] == 1
