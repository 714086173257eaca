"""The GPU first-run script's CPU dry run: both stages train, the summary is written and
every weights file comes back in pieces that join to a loadable checkpoint."""

import importlib.util
import json
from pathlib import Path

from facekd.files import load_checkpoint

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_first_run.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_first_run", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_dry_run_trains_both_stages_and_writes_pieces(tmp_path):
    script = load_script()
    summary = script.main(["--dry-run", "--out", str(tmp_path)])
    assert summary == json.loads((tmp_path / "gpu_first_run.json").read_text())
    assert summary["preset"] == "smoke"
    for name in ("teacher", "student"):
        stage = summary[name]
        assert 0 <= stage["val_fscore"] <= 1 and stage["images_seen"] > 0 and stage["images_per_s"] > 0
        joined = b"".join((tmp_path / piece).read_bytes() for piece in stage["pieces"])
        (tmp_path / f"{name}_joined.pt").write_bytes(joined)
        assert load_checkpoint(tmp_path / f"{name}_joined.pt")["val_fscore"] == stage["val_fscore"]


def test_pieces_are_at_most_the_limit_and_join_to_the_original(tmp_path):
    script = load_script()
    original = bytes(range(256)) * 41  # 10,496 bytes
    (tmp_path / "w.pt").write_bytes(original)
    pieces = script.split_file(tmp_path / "w.pt", piece_bytes=4096)
    assert [p.name for p in pieces] == ["w.pt.part000", "w.pt.part001", "w.pt.part002"]
    assert all(p.stat().st_size <= 4096 for p in pieces) and not (tmp_path / "w.pt").exists()
    assert b"".join(p.read_bytes() for p in pieces) == original
