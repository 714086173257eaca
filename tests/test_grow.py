"""Growing a student into a teacher (teachers/grow.py): the grown model computes the same
function, trains and resumes as a teacher, and is refused where a teacher is."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from facekd.app.cli import main
from facekd.challenge import count_params
from facekd.checkpoint import save_checkpoint
from facekd.data import load_split
from facekd.files import load_checkpoint
from facekd.inference import normalize
from facekd.models import build_model, load_model, named_config
from teachers.grow import GrownResFPN, grow
from teachers.train import train_teacher
from tests.test_engine import tiny_config

SHIPPED = Path(__file__).resolve().parents[1] / "solution" / "ckpt.pth"


@pytest.fixture(scope="module")
def shipped_student():
    return load_model(load_checkpoint(SHIPPED))


@pytest.fixture(scope="module")
def val_images():
    from facekd.data import SAMPLE_DATA
    images = load_split(SAMPLE_DATA, "val", None, show_progress=False).images
    return normalize(F.interpolate(images.float(), size=(256, 256), mode="bilinear") .round().to(torch.uint8))


@pytest.mark.parametrize("extra_depth, width_factor", [(1, 1.0), ([0, 0, 2, 2], 1.0), (0, 1.5), ([0, 0, 2, 2], 1.5)])
def test_the_grown_model_computes_the_students_function(shipped_student, val_images, extra_depth, width_factor):
    grown = grow(shipped_student, extra_depth, width_factor).eval()
    assert count_params(grown) > count_params(shipped_student)
    with torch.no_grad():
        expected, got = shipped_student(val_images), grown(val_images)
    assert (got - expected).abs().max().item() < 1e-4
    assert torch.equal(got.argmax(1), expected.argmax(1))


def test_copied_channels_split_their_weights_unequally(shipped_student):
    """Equal halves would leave the copies with equal gradients, so they would never part."""
    grown = grow(shipped_student, 0, 2.0)
    block = grown.stages[3][0]
    old = shipped_student.stages[3][0].conv2[0].weight.shape[1]
    copy, first = block.conv2[0].weight[:, old:], block.conv2[0].weight[:, :old]
    assert copy.shape[1] == old and not torch.allclose(copy.abs().sum(), first.abs().sum())


def tiny_student_checkpoint(path: Path) -> Path:
    torch.manual_seed(0)
    model_cfg = named_config("tiny", 64)
    save_checkpoint({"model": build_model(model_cfg).state_dict(), "model_cfg": model_cfg, "val_fscore": 0.1}, path)
    return path


def test_a_grown_teacher_trains_resumes_and_is_refused_by_export(tmp_path, sample_root, kill_after_epoch, capsys):
    torch.set_num_threads(1)  # bit-exact comparison needs a fixed reduction order
    student = tiny_student_checkpoint(tmp_path / "student.pt")
    assert main(["grow", "--checkpoint", str(student), "--depth", "1", "--width", "2",
                 "--out", str(tmp_path / "grown.pt")]) == 0
    grown = load_checkpoint(tmp_path / "grown.pt")
    assert grown["model_cfg"]["arch"] == "resfpn_grown" and grown["model_cfg"]["depths"] == [2, 2, 2, 2]
    assert isinstance(load_model(grown), GrownResFPN)

    cfg = tiny_config(resolutions=[[64, 2]], eval_every=2)
    straight = train_teacher(cfg, sample_root, tmp_path / "straight", show_progress=False, init=tmp_path / "grown.pt")
    kill_after_epoch(0)
    with pytest.raises(KeyboardInterrupt):
        train_teacher(cfg, sample_root, tmp_path / "killed", show_progress=False, init=tmp_path / "grown.pt")
    kill_after_epoch(None)
    resumed = train_teacher(cfg, sample_root, tmp_path / "killed", resume=True, show_progress=False,
                            init=tmp_path / "grown.pt")
    assert resumed["val_fscore"] == straight["val_fscore"]
    a, b = (load_checkpoint(tmp_path / run / "last.pt")["model"] for run in ("straight", "killed"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert load_checkpoint(tmp_path / "straight" / "best.pt")["model_cfg"]["arch"] == "resfpn_grown"

    capsys.readouterr()
    assert main(["export", "--checkpoint", str(tmp_path / "straight" / "best.pt"), "--out", str(tmp_path / "sol")]) == 2
    assert "is a teacher (resfpn_grown)" in capsys.readouterr().err


def test_growth_refuses_a_student_as_init_and_a_bad_spec(tmp_path, sample_root, capsys):
    student = tiny_student_checkpoint(tmp_path / "student.pt")
    with pytest.raises(ValueError, match="is a student checkpoint; grow it"):
        train_teacher(tiny_config(), sample_root, tmp_path / "run", show_progress=False, init=student)
    assert main(["grow", "--checkpoint", str(student), "--depth", "1,2", "--out", str(tmp_path / "g.pt")]) == 2
    assert "4 extra depths" in capsys.readouterr().err
    assert not (tmp_path / "g.pt").exists()


def test_the_committed_grown_teacher_loads_as_a_teacher():
    """teachers/weights/grown_teacher_fp16.pt (docs/RESULTS.md): the shipped student grown and
    trained 90 minutes, kept in fp16, loads as a teacher in fp32 and predicts every class."""
    from distill.teacher import frozen_teacher
    path = Path(__file__).resolve().parent.parent / "teachers" / "weights" / "grown_teacher_fp16.pt"
    teacher, info = frozen_teacher(str(path))
    assert info["model_cfg"]["arch"] == "resfpn_grown" and info["stage"] == "teacher"
    assert sum(p.numel() for p in teacher.parameters()) == info["params"] == 3_793_083
    assert all(p.dtype == torch.float32 for p in teacher.parameters())
    with torch.no_grad():
        assert teacher(torch.randn(1, 3, 64, 64)).shape == (1, 19, 16, 16)
