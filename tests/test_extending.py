"""docs/EXTENDING.md's worked examples run as written, in a fresh process (their registrations
must not leak into the other tests' registries)."""

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_the_extending_guide_runs_as_written(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "docs" / "EXTENDING.md").read_text(), re.S)
    assert len(blocks) >= 6  # a student (class, pruning), a teacher (config, training), a loss, an importance
    script = tmp_path / "extending.py"
    script.write_text("import students, teachers\n" + "\n".join(blocks))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    for line in ("plainnet:", "teacher_small: val F", "loss terms:", "random importance:"):
        assert line in out.stdout, out.stdout
