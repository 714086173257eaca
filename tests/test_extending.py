"""docs/EXTENDING.md's worked examples run as written, and a plugin's student and loss train
through `facekd distill`, each in a fresh process (their registrations must not leak into the
other tests' registries)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from facekd.files import load_checkpoint

REPO = Path(__file__).resolve().parent.parent


def test_the_extending_guide_runs_as_written(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "docs" / "EXTENDING.md").read_text(), re.S)
    assert len(blocks) >= 6  # a student (class, pruning), a teacher (config, training), a loss, an importance
    script = tmp_path / "extending.py"
    script.write_text("\n".join(blocks))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    for line in ("plainnet:", "teacher_small: val F", "loss terms:", "random importance:"):
        assert line in out.stdout, out.stdout


# A student and a loss from outside the project: a module that registers them, declared in the
# facekd.plugins entry-point group by an installed package's metadata. Nothing in the project
# names them, and nothing imports the module but the registry's first lookup.
TOY_PLUGIN = '''
import torch.nn as nn

from facekd.losses import register_loss
from facekd.registry import register_student, register_student_arch


@register_student_arch("toy_net")
class ToyNet(nn.Module):
    def __init__(self, width=8, num_classes=19, input_size=64):
        super().__init__()
        self.input_size = input_size
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, 4, 1), nn.BatchNorm2d(width), nn.ReLU())
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, x):
        return self.classifier(self.body(x))

    def config_from_weights(self):
        return dict(width=self.body[0].out_channels, num_classes=self.classifier.out_channels,
                    input_size=self.input_size)


@register_student("toy")
def toy_student():
    return dict(arch="toy_net", width=8)


@register_loss("toy", uses="labels")
def toy_loss(logits, labels, cfg):
    return logits.pow(2).mean()
'''

TOY_DISTILL = ["distill", "--arch", "toy", "--teacher", "none", "--set", "toy_weight=1", "--set",
               "resolutions=[[64, 1]]", "--set", "train_limit=4", "--set", "batch_size=4", "--set", "threads=1"]


def install_toy_plugin(folder: Path) -> None:
    """What `pip install` of a plugin package leaves on the path: its module, and metadata
    whose entry_points.txt declares the module in facekd's group (docs/EXTENDING.md)."""
    (folder / "toy_plugin.py").write_text(TOY_PLUGIN)
    metadata = folder / "toy_plugin-0.1.dist-info"
    metadata.mkdir()
    (metadata / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-plugin\nVersion: 0.1\n")
    (metadata / "entry_points.txt").write_text("[facekd.plugins]\ntoy = toy_plugin\n")


def test_a_plugin_student_and_loss_train_through_facekd_distill(tmp_path):
    """Declaring the module is all it takes: no project file names the toy student or its
    loss, and `--set toy_weight=1` turns the loss on though RunConfig has no such field."""
    install_toy_plugin(tmp_path)
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    out = subprocess.run([sys.executable, "-m", "facekd", *TOY_DISTILL, "--out", str(run)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["loss/toy"] > 0 and {"loss/ce", "loss/loss"} <= set(metrics[-1])
    assert json.loads((run / "config.json").read_text())["loss_weights"]["toy"] == 1.0
    assert json.loads((run / "result.json").read_text())["steps"] == 1
    ckpt = load_checkpoint(run / "best.pt")
    assert ckpt["model_cfg"]["arch"] == "toy_net"
