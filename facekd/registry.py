"""Name -> object tables filled by decorators (timm's `@register_model`, torchdistill's
registered losses): a new student, teacher or loss is one decorated definition in one file.

The tables live here, below every stage, and hold nothing until the packages that define
models and losses are imported: `students` and `teachers` register their architectures and
named configs, `facekd.losses` its losses. The application layer imports them all; a stage
imports the ones it builds. This module depends on nothing, because the exported solution
ships it beside `students/`.
"""

from __future__ import annotations

from typing import Callable, Iterator


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
        if name not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; choose from {self.names()}")
        return self._entries[name]

    def __contains__(self, name) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def names(self) -> list[str]:
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
# writes them registers a loader under it (compress/quantize.py: "quantized", int8 models)
CHECKPOINT_FORMATS = Registry("checkpoint format")

register_student_arch = STUDENT_ARCHS.register
register_teacher_arch = TEACHER_ARCHS.register
register_student = STUDENTS.register
register_teacher = TEACHERS.register
