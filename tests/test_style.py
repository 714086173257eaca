"""Rules of the code's shape that a reader relies on, checked over the whole project."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MAX_FUNCTION_LINES = 50
# The training loop's functions may run longer: its step is written out in full in
# train_one_epoch, as torchvision's is, rather than split to satisfy a counter (issue 35).
MAX_LOOP_FUNCTION_LINES = 70
LOOP_MODULES = {"facekd/engine.py"}
MAX_ENGINE_DATACLASS_FIELDS = 12
PACKAGES = ("facekd", "teachers", "students", "distill", "compress")
SOURCES = [p for folder in ("facekd", "students", "teachers", "distill", "compress", "benchmarks", "solution", "tests")
           for p in sorted((REPO / folder).rglob("*.py"))] + [REPO / "solution" / "run.py"]


def _limit(path: Path) -> int:
    return MAX_LOOP_FUNCTION_LINES if path.relative_to(REPO).as_posix() in LOOP_MODULES else MAX_FUNCTION_LINES


def test_no_function_is_longer_than_a_screen():
    long = [f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path in SOURCES for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > _limit(path)]
    assert not long, (f"functions over {MAX_FUNCTION_LINES} lines ({MAX_LOOP_FUNCTION_LINES} in the training "
                      "loop): " + "; ".join(long))


def test_no_dataclass_in_the_engine_has_more_than_twelve_fields():
    """Issue 35: the loop's state was one 32-field object passed whole to 13 functions."""
    for path in (REPO / "facekd" / "engine.py", REPO / "facekd" / "schedule.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any("dataclass" in ast.unparse(d) for d in node.decorator_list):
                fields = [item for item in node.body if isinstance(item, ast.AnnAssign)]
                assert len(fields) <= MAX_ENGINE_DATACLASS_FIELDS, f"{path.name}: {node.name} has {len(fields)} fields"


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_imports(path: Path, modules: set) -> set:
    """The project modules a file imports when it is imported, or when a type checker reads
    it (`if TYPE_CHECKING:` blocks too), but not those its functions import when called."""
    found, nodes = set(), list(ast.parse(path.read_text()).body)
    while nodes:
        node = nodes.pop()
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            nodes.extend(ast.iter_child_nodes(node))
    return found & modules


def import_circle(graph: dict) -> list | None:
    """One circle in a {module: imported modules} graph, as a list of names, or None."""
    state = {}

    def visit(name, trail):
        if state.get(name) == "open":
            return trail[trail.index(name):] + [name]
        if state.get(name) == "done":
            return None
        state[name] = "open"
        for imported in sorted(graph[name]):
            circle = visit(imported, trail + [name])
            if circle:
                return circle
        state[name] = "done"
        return None
    return next(filter(None, (visit(name, []) for name in sorted(graph))), None)


def test_no_import_circle_in_the_package():
    """Issue 35: engine and budget_check imported each other."""
    paths = {_module_name(p): p for package in PACKAGES for p in (REPO / package).rglob("*.py")}
    graph = {name: module_imports(path, set(paths)) - {name} for name, path in paths.items()}
    circle = import_circle(graph)
    assert circle is None, "import circle: " + " -> ".join(circle)


def test_the_circle_check_finds_a_circle(tmp_path):
    """The check above, on modules that import each other, one for the type checker alone."""
    (tmp_path / "a.py").write_text("import b\n\ndef f():\n    import c\n")
    (tmp_path / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from a import thing\n")
    (tmp_path / "c.py").write_text("")
    graph = {name: module_imports(tmp_path / f"{name}.py", {"a", "b", "c"}) for name in "abc"}
    assert graph == {"a": {"b"}, "b": {"a"}, "c": set()}
    assert import_circle(graph) == ["a", "b", "a"]
    assert import_circle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
