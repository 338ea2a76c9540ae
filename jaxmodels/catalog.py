"""What `jaxmodels list` and `jaxmodels show` print: the registries, the experiment files, and a
config with every key, its type and its default."""

from __future__ import annotations

import ast
import dataclasses
import pathlib
import typing

from jaxmodels import config as config_lib
from jaxmodels import registry


def _type_name(tp) -> str:
    if typing.get_origin(tp) is typing.Literal:
        return "|".join(map(str, typing.get_args(tp)))
    text = getattr(tp, "__name__", None) if not typing.get_args(tp) else None
    return text or str(tp).replace("typing.", "")


def _target(target) -> str:
    return target if isinstance(target, str) else f"{target.__module__}:{target.__qualname__}"


def experiment_files(root: pathlib.Path) -> list[tuple[str, str]]:
    """(path, first docstring line) of every experiment or sweep file under root/experiments."""
    out = []
    base = root / "experiments"
    for path in sorted(base.rglob("*.py")) if base.is_dir() else ():
        try:
            doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        except (SyntaxError, OSError, UnicodeDecodeError):
            doc = "(does not parse)"
        out.append((str(path.relative_to(root)), doc.strip().splitlines()[0] if doc.strip() else ""))
    return out


def list_text(root: pathlib.Path | None = None) -> str:
    """The registered models, datasets and objectives, and the experiment files under `root`
    (default: the current folder)."""
    from jaxmodels import models  # noqa: F401 - registers the built-in model families

    lines = ["models (model.kind; register your own with jaxmodels.register_model):"]
    for kind, entry in sorted(registry.MODELS.items()):
        lines.append(f"  {kind:<24} {entry.config_class.__qualname__:<28} {entry.origin}")
    lines.append("datasets (data.dataset; jaxmodels.register_dataset):")
    for name, target in sorted(registry.DATASETS.items()):
        lines.append(f"  {name:<24} {_target(target)}")
    lines.append("objectives (objective.name; jaxmodels.register_objective):")
    for name, target in sorted(registry.OBJECTIVES.items()):
        lines.append(f"  {name:<24} {_target(target)}")
    root = pathlib.Path.cwd() if root is None else root
    files = experiment_files(root)
    lines.append(f"experiment files (jaxmodels train FILE; under {root / 'experiments'}):")
    lines += [f"  {path:<48} {doc}" for path, doc in files] or ["  (none here)"]
    return "\n".join(lines)


_NO_DEFAULT = object()


def rows(obj, prefix: str = "") -> list[tuple[str, str, object, object]]:
    """(key, type, value, default) for every leaf field of a config dataclass, recursively."""
    out = []
    hints = typing.get_type_hints(type(obj))
    defaults = type(obj)() if _constructible(type(obj)) else None
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            if prefix == "" and f.name == "model":
                out.append(("model.kind", "str", value.kind, _NO_DEFAULT))
            out += rows(value, key + ".")
            continue
        default = getattr(defaults, f.name) if defaults is not None else _NO_DEFAULT
        out.append((key, _type_name(hints[f.name]), value, default))
    return out


def _constructible(cls) -> bool:
    try:
        cls()
    except Exception:  # noqa: BLE001 - a config class whose fields have no defaults
        return False
    return True


def show_text(config: config_lib.Config) -> str:
    """Every key of `config` with its type, value and default ("*" marks a changed value)."""
    table = rows(config)
    width = max(len(k) for k, *_ in table)
    twidth = min(40, max(len(t) for _, t, *_ in table))
    lines = [f"{config.name}: {len(table)} keys (* = differs from the default; set any with KEY=VALUE)"]
    for key, tp, value, default in table:
        mark = "*" if default is not _NO_DEFAULT and value != default else " "
        extra = f"  (default {default!r})" if mark == "*" else ""
        lines.append(f"{mark} {key:<{width}}  {tp:<{twidth}}  {value!r}{extra}")
    return "\n".join(lines)
