"""The settings' dataclasses (models/config.py, pipeline/configs.py, components/gate.py) by dotted path: built from a
JSON-like dict with every key checked (:func:`from_dict`), a ``--set`` string read as the field's type
(:func:`parse_value`), every leaf's path and type (:func:`leaf_paths`), and a field read or replaced by its path.
Pure Python: imports neither Keras nor TensorFlow.
"""

from __future__ import annotations

import dataclasses
import types
import typing


def _optional_inner(tp):
    """(inner type, True) for ``X | None``; (tp, False) otherwise."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def from_dict(cls, d: dict | None, path: str = ""):
    """``cls`` (a config dataclass) from a JSON-like dict: nested sections from nested dicts, every key
    checked (an unknown one names its dotted path and the known ones), ints accepted for floats."""
    d = dict(d or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise ValueError(f"unknown settings {[path + k for k in unknown]}; {path or cls.__name__ + ' '}has "
                         f"{sorted(fields)}")
    kwargs = {}
    for name, value in d.items():
        tp, _ = _optional_inner(hints[name])
        if dataclasses.is_dataclass(tp):
            kwargs[name] = value if isinstance(value, tp) else from_dict(tp, value, f"{path}{name}.")
        elif tp is float and isinstance(value, int) and not isinstance(value, bool):
            kwargs[name] = float(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


def parse_value(text: str, tp):
    """One ``--set`` string as the field's type (int, float, bool, str and their ``| None`` forms)."""
    tp, optional = _optional_inner(tp)
    if optional and text.lower() in ("none", "null"):
        return None
    if tp is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"not a boolean: {text!r}")
    if tp in (int, float, str):
        return tp(text)
    raise ValueError(f"cannot set a value of type {tp} from the command line")


def leaf_paths(cls, prefix: str = "") -> dict[str, typing.Any]:
    """{dotted path: type} of every non-section field of ``cls``, nested sections flattened."""
    out = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, _ = _optional_inner(hints[f.name])
        if dataclasses.is_dataclass(tp):
            out.update(leaf_paths(tp, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = hints[f.name]
    return out


def get_path(cfg, path: str):
    for part in path.split("."):
        cfg = getattr(cfg, part)
    return cfg


def replace_path(cfg, path: str, value):
    """A copy of ``cfg`` with the field at the dotted ``path`` set (frozen sections rebuilt)."""
    head, _, rest = path.partition(".")
    if not rest:
        return dataclasses.replace(cfg, **{head: value})
    return dataclasses.replace(cfg, **{head: replace_path(getattr(cfg, head), rest, value)})
