"""A new user's first run is the README's commands, copied as they are (issue 28): its set-up
block and the data step are extracted from README.md and run by bash in an empty folder."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from facekd.app.cli import build_parser
from facekd.app.export import REPO_ROOT
from facekd.config import resolve_config
from facekd.data import SAMPLE_DATA

README = REPO_ROOT / "README.md"
# Lines run as a test cannot run as written, each for its reason:
SKIPPED = {
    # Installing needs the package index and minutes; .ci/run runs this very line in a fresh
    # venv before the tests, so here it is only checked to be that line.
    'pip install -e ".[dev]"': "run by .ci/run",
    # The suite itself: running it from inside the suite would recurse.
    "python -m pytest": "this suite",
}


def bash_block(heading: str) -> list[str]:
    """The command lines (comments stripped) of the first ```bash block under `heading`."""
    section = README.read_text().split(f"\n## {heading}\n", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


def test_the_install_line_is_the_one_ci_runs():
    assert 'pip install -e ".[dev]"' in bash_block("Set-up")
    assert 'pip install --quiet -e ".[dev]"' in (REPO_ROOT / ".ci" / "run").read_text()


def test_the_readme_set_up_runs_as_written_on_a_fresh_folder(tmp_path):
    """The set-up block, then the data step with the sample standing in for the real data."""
    bin_dir = Path(sys.executable).parent
    if shutil.which("facekd", path=str(bin_dir)) is None:
        pytest.skip("the facekd command is not installed (the README's install line)")
    setup = [line for line in bash_block("Set-up") if line not in SKIPPED]
    # the data step's own pipeline is the cpu preset's hour on the real data; the sample's
    # pipeline above ran the same code, so only the lines that make data/ are run
    data_step = [line.replace("/path/to/celebamask-mini", str(SAMPLE_DATA))
                 for line in bash_block("The real data") if not line.startswith("facekd pipeline")]
    assert setup == ["facekd pipeline"] and data_step[0] == "mkdir -p data", (setup, data_step)
    script = "set -euo pipefail\n" + "\n".join(setup + data_step) + "\nls data/celebamask-mini/train/images\n"
    # PYTHONPATH: the installed command runs this checkout's code, wherever it was installed from
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "made in runs/pipeline/:" in proc.stdout and "shipped val F-score" in proc.stdout
    assert (tmp_path / "runs" / "pipeline" / "submission.zip").is_file()
    assert (tmp_path / "data" / "celebamask-mini").is_symlink()


def readme_commands(tool: str = "facekd") -> list[list[str]]:
    """Every `tool ...` command of the README's bash blocks, continuation lines joined, split
    as bash would split it ($D and comments aside)."""
    text = re.sub(r"\\\n\s*", " ", README.read_text())
    lines = [line.split("  #")[0].strip() for block in re.findall(r"```bash\n(.*?)```", text, re.S)
             for line in block.splitlines()]
    return [shlex.split(line.replace("$D", "data/celebamask-mini"))[1:] for line in lines
            if line.startswith(f"{tool} ")]


def test_every_facekd_command_in_the_readme_parses():
    """A README whose options drift from the CLI fails a new user at the first copy; parsing
    each command (no torch, no work) catches an option renamed or dropped."""
    commands = readme_commands()
    assert len(commands) >= 10 and ["quantize", "--checkpoint"] == commands[[c[0] for c in commands].index(
        "quantize")][:2]
    parser = build_parser()
    for argv in commands:
        args = parser.parse_args(argv)
        assert callable(args.func), argv


def test_the_readme_commands_write_only_under_runs():
    """Issue 34: the worked example exported a 3-minute model over the shipped
    solution/ckpt.pth, and its later lines acted on it. Copied as it stands, the README must
    leave `git status` clean but for ignored folders: whatever its commands write (each
    facekd command's --out, run.py's --output) lies under runs/, which git ignores."""
    assert "runs/" in (REPO_ROOT / ".gitignore").read_text().splitlines()
    parser = build_parser()
    written = [parser.parse_args(argv).out for argv in readme_commands() if hasattr(parser.parse_args(argv), "out")]
    for argv in readme_commands("python3"):  # the exported run.py
        written.append(argv[argv.index("--output") + 1])
    assert len(written) >= 10
    assert [out for out in written if Path(out).parts[0] != "runs"] == []


def results_commands() -> list[list[str]]:
    """Every `facekd ...` command of docs/RESULTS.md's bash blocks, split as bash would split it:
    continuation lines joined, comments dropped, the block's own `VAR=value` assignments
    substituted, and any other `$var` (a loop's counter) standing for 0."""
    text = re.sub(r"\\\n\s*", " ", (REPO_ROOT / "docs" / "RESULTS.md").read_text())
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        env: dict[str, str] = {}
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            line = re.sub(r"\$(\w+)", lambda m: env.get(m.group(1), "0"), line)
            for word in shlex.split(line) if re.match(r"^\w+=", line) else []:
                name, _, value = word.rstrip(";").partition("=")
                env[name] = value
            if line.startswith("facekd "):
                commands.append(shlex.split(line)[1:])
    return commands


def test_every_facekd_command_in_results_parses():
    """Issue 35: docs/RESULTS.md gives each figure's command in today's option names, so each
    must parse as the CLI stands (the archive keeps the commands as they ran)."""
    commands = results_commands()
    assert len(commands) >= 20 and {"pipeline", "distill", "prune", "finetune", "quantize"} <= {c[0] for c in commands}
    parser = build_parser()
    stage = {"train-teacher": "teacher", "distill": "distill", "pipeline": "distill", "prune": "prune",
             "finetune": "prune"}
    for argv in commands:
        args = parser.parse_args(argv)
        assert callable(args.func), argv
        if argv[0] in stage:  # each --set key and --config file as the command would read them
            config = args.config and str(REPO_ROOT / args.config)
            resolve_config(stage[argv[0]], args.preset or "cpu", config, args.set)


def markdown_anchors(path: Path) -> set[str]:
    """The anchors GitHub makes of a markdown file's headings (lowercase, punctuation but '-'
    dropped, spaces to '-'; a repeated heading gets -1, -2, ...)."""
    anchors, seen, fence = set(), {}, False
    for line in path.read_text().splitlines():
        fence ^= line.startswith("```")
        if not fence and re.match(r"#{1,6} ", line):
            slug = re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
            anchors.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
            seen[slug] = seen.get(slug, 0) + 1
    return anchors


def test_the_docs_links_reach_their_files_and_headings():
    """RESULTS.md links each section to its record in RESULTS_ARCHIVE.md by anchor: a renamed
    heading must not leave a link pointing nowhere."""
    broken = []
    for md in [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)\s]+)\)", md.read_text()):
            name, _, anchor = target.partition("#")
            path = (md.parent / name) if name else md
            if target.startswith("http"):
                continue
            if not path.exists() or (anchor and path.suffix == ".md" and anchor not in markdown_anchors(path)):
                broken.append(f"{md.name}: {target}")
    assert broken == []
