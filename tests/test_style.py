"""Rules of the code's shape that a reader relies on, checked over the whole project."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MAX_FUNCTION_LINES = 50
SOURCES = [p for folder in ("facekd", "students", "teachers", "distill", "compress", "benchmarks", "solution", "tests")
           for p in sorted((REPO / folder).rglob("*.py"))] + [REPO / "solution" / "run.py"]


def test_no_function_is_longer_than_a_screen():
    long = [f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path in SOURCES for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: " + "; ".join(long)
