"""Name -> object tables filled by decorators (timm's `@register_model`, torchdistill's
registered losses): a new student, teacher or loss is one decorated definition in one file.

The tables live here, below every stage, and the package fills them, not its callers: the
first lookup in any table (or listing of its names) imports every module declared in the
`facekd.plugins` entry-point group, facekd's own (`students`, `teachers`, the int8 checkpoint
format in `compress.quantize`) and any installed package's alike. `facekd.losses` registers
its losses as it is imported. This module depends on nothing beyond the standard library,
because the exported solution ships it beside `students/`.
"""

from __future__ import annotations

import warnings
from importlib.metadata import entry_points
from typing import Callable, Iterator

# pyproject.toml's [project.entry-points."facekd.plugins"]: name -> a module that registers
PLUGIN_GROUP = "facekd.plugins"
_plugins_loaded = False


def load_plugins() -> None:
    """Import every module of the plugin group, once per process; each registers as it is
    imported. The first lookup in any registry calls this, so no caller imports a stage
    package for its side effect (a merge that dropped one such import once broke
    `facekd quantize` for every checkpoint)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    # Marked loaded before the imports: a plugin whose import reaches a lookup (directly or
    # through a module it imports) then finds what is registered so far, rather than
    # importing the plugins again from inside their own import.
    _plugins_loaded = True
    for plugin in entry_points(group=PLUGIN_GROUP):
        try:
            plugin.load()
        except Exception as e:  # one broken plugin must not take the built-in models down with it
            warnings.warn(f"facekd plugin {plugin.name!r} ({plugin.value}) failed to load: {type(e).__name__}: {e}",
                          stacklevel=2)


def skip_plugins() -> None:
    """Register what this process imports itself and no plugin: for the exported solution's
    run.py, whose shipped modules must win over an installed facekd, and whose folder does not
    hold the modules an installed plugin would import."""
    global _plugins_loaded
    _plugins_loaded = True


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, object] = {}

    def register(self, name: str | None = None) -> Callable:
        """A decorator that files a class or function under `name` (default: its own name)."""
        def add(obj):
            self.add(name or obj.__name__, obj)
            return obj
        return add

    def add(self, name: str, obj) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = obj

    def __getitem__(self, name: str):
        load_plugins()
        if name not in self._entries:
            # an install made before the entry points existed has none, and every table is empty
            hint = "" if self._entries else f" (none registered: no {PLUGIN_GROUP} entry points; reinstall facekd)"
            raise ValueError(f"unknown {self.kind} {name!r}; choose from {self.names()}{hint}")
        return self._entries[name]

    def __contains__(self, name) -> bool:
        load_plugins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        load_plugins()
        return iter(self._entries)

    def names(self) -> list[str]:
        load_plugins()
        return sorted(self._entries)


# architectures: "arch" in a model config -> the nn.Module class it builds
STUDENT_ARCHS = Registry("student architecture")
TEACHER_ARCHS = Registry("teacher architecture")
# named models: a name -> a function returning its plain config (with "arch")
STUDENTS = Registry("student")
TEACHERS = Registry("teacher")
# training losses, each with the config weight that turns it on (facekd/losses.py: weight_of)
LOSSES = Registry("loss")
# checkpoints that do not hold plain fp32 weights are marked by a key, and the stage that
# writes them registers a loader under it (compress/quantize.py: "quantized", int8 models,
# a plugin so that every process that looks a checkpoint's format up knows it)
CHECKPOINT_FORMATS = Registry("checkpoint format")

register_student_arch = STUDENT_ARCHS.register
register_teacher_arch = TEACHER_ARCHS.register
register_student = STUDENTS.register
register_teacher = TEACHERS.register
