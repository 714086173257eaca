"""The registries are filled by the package (facekd.plugins entry points), not by its callers:
importing facekd.models is enough to load any built-in checkpoint, int8 ones included."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from importlib.metadata import EntryPoint

import pytest

import facekd.registry as registry
from compress.quantize import quantize_checkpoint
from facekd.data import SAMPLE_DATA
from facekd.models import named_config
from tests.test_export import REPO_ROOT, make_checkpoint

# What the fresh process runs: it imports the core alone, then loads each checkpoint it is given.
LOAD_EACH = textwrap.dedent("""
    import sys
    from facekd.files import load_checkpoint
    from facekd.models import load_model
    stages = ("students", "teachers", "distill", "compress")
    print(sorted(name for name in sys.modules if name.split(".")[0] in stages))
    for path in sys.argv[1:]:
        print(type(load_model(load_checkpoint(path), path)).__name__)
""")


def test_facekd_models_alone_loads_int8_teacher_and_student_checkpoints(tmp_path):
    """Issue 35: without `import compress.quantize` in the caller, load_model read an int8
    checkpoint as mismatched fp32 weights, and a merge that dropped that one import broke
    `facekd quantize`. A fresh process that imports facekd.models and nothing of a stage
    now loads all three kinds."""
    student = make_checkpoint(tmp_path / "student.pt", named_config("tiny", 64))
    teacher = make_checkpoint(tmp_path / "teacher.pt", named_config("teacher_tiny", 64))
    quantize_checkpoint(student, tmp_path / "int8.pt", SAMPLE_DATA, n_images=4, flip_tta=False)
    done = subprocess.run([sys.executable, "-c", LOAD_EACH, str(student), str(teacher), str(tmp_path / "int8.pt")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[]", "ResFPN", "TimmFPN", "Int8Student"]


@pytest.fixture
def fresh_plugins(monkeypatch, tmp_path):
    """plugins(**modules): the plugin group holds these modules (name -> source) and nothing
    else, none of them loaded yet; the registries are restored when the test ends."""
    for table in (registry.STUDENTS, registry.STUDENT_ARCHS):
        monkeypatch.setattr(table, "_entries", dict(table._entries))
    monkeypatch.syspath_prepend(str(tmp_path))

    def plugins(**modules):
        for name, source in modules.items():
            (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
            monkeypatch.delitem(sys.modules, name, raising=False)
        found = [EntryPoint(name, name, registry.PLUGIN_GROUP) for name in modules]
        monkeypatch.setattr(registry, "entry_points", lambda group: found if group == registry.PLUGIN_GROUP else [])
        monkeypatch.setattr(registry, "_plugins_loaded", False)
    return plugins


def test_a_lookup_inside_a_plugins_import_finds_what_is_registered_so_far(fresh_plugins):
    """A plugin whose import looks a name up (here at module level) must not set off the
    plugins' loading again from inside it: that lookup sees the tables as they stand."""
    fresh_plugins(first="""
        from facekd.registry import STUDENTS, register_student
        SEEN = STUDENTS.names()
        register_student("first_probe")(lambda: {"arch": "resfpn"})
    """, second="""
        from facekd.registry import STUDENTS, register_student
        import first
        SEEN = STUDENTS.names()
        register_student("second_probe")(lambda: {"arch": "resfpn"})
    """)
    assert {"first_probe", "second_probe"} <= set(registry.STUDENTS.names())
    assert "first_probe" not in sys.modules["first"].SEEN and "first_probe" in sys.modules["second"].SEEN


def test_a_broken_plugin_is_named_and_the_others_still_register(fresh_plugins):
    fresh_plugins(broken="raise RuntimeError('no such backend')", working="""
        from facekd.registry import register_student
        register_student("working_probe")(lambda: {"arch": "resfpn"})
    """)
    with pytest.warns(UserWarning, match=r"facekd plugin 'broken' \(broken\) failed to load: RuntimeError: no such backend"):
        assert "working_probe" in registry.STUDENTS
