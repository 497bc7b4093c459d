"""YAML loading and validation shared by every configuration in the project.

Errors name the file, the key path and the allowed values, e.g.::

    controller.yaml: policy.K: 12 is out of range (allowed: 2..8)

Use :class:`Section` to walk a mapping: it records the key path and the file,
and refuses unknown keys (a typo must not be silently ignored).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import yaml


class ConfigError(ValueError):
    """A configuration value is wrong. ``str()`` names file, key and what is allowed."""

    def __init__(self, source: str, key: str, message: str):
        self.source, self.key, self.message = source, key, message
        where = f"{source}: {key}" if key else source
        super().__init__(f"{where}: {message}")


class _DuplicateKey(Exception):
    def __init__(self, key: str, line: int, first: int):
        self.key, self.line, self.first = key, line, first


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                continue  # the base class reports unhashable keys
            if key in seen:
                raise _DuplicateKey(str(key), key_node.start_mark.line + 1, seen[key])
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: str | Path) -> Any:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(str(p), "", f"cannot read: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(str(p), "", f"not valid YAML: not UTF-8 text (byte {e.start})") from None
    try:
        return yaml.load(text, Loader=_StrictLoader) if text.strip() else {}
    except _DuplicateKey as e:
        raise ConfigError(str(p), e.key, f"duplicate key at line {e.line} (first given at line {e.first})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        pos = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(str(p), "", f"not valid YAML{pos}: {getattr(e, 'problem', e)}") from None


_MISSING = object()


class Section:
    """A validated view of one YAML mapping."""

    def __init__(self, data: Any, source: str = "<config>", path: str = ""):
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(source, path or "(top level)", f"expected a mapping, got {type(data).__name__}")
        self.data, self.source, self.path = data, source, path
        self._seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def error(self, name: str, message: str) -> ConfigError:
        return ConfigError(self.source, self.key(name), message)

    def _raw(self, name: str, default: Any) -> Any:
        self._seen.add(str(name))  # YAML keys may be ints (level_dscp: {0: 56}); done() compares strings
        if name in self.data:
            return self.data[name]
        if default is _MISSING:
            raise self.error(name, "is required")
        return default

    def get(self, name: str, default: Any = _MISSING) -> Any:
        return self._raw(name, default)

    def integer(self, name: str, default: Any = _MISSING, lo: int | None = None, hi: int | None = None) -> int:
        v = self._raw(name, default)
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.error(name, f"{v!r} is not an integer")
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise self.error(name, f"{v} is out of range (allowed: {_range(lo, hi)})")
        return v

    def number(self, name: str, default: Any = _MISSING, lo: float | None = None, hi: float | None = None,
               lo_open: bool = False) -> float:
        v = self._raw(name, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise self.error(name, f"{v!r} is not a number")
        v = float(v)
        if (lo is not None and (v < lo or (lo_open and v == lo))) or (hi is not None and v > hi):
            raise self.error(name, f"{v} is out of range (allowed: {_range(lo, hi, lo_open)})")
        return v

    def boolean(self, name: str, default: Any = _MISSING) -> bool:
        v = self._raw(name, default)
        if not isinstance(v, bool):
            raise self.error(name, f"{v!r} is not a boolean (allowed: true, false)")
        return v

    def string(self, name: str, default: Any = _MISSING) -> str:
        v = self._raw(name, default)
        if not isinstance(v, str):
            raise self.error(name, f"{v!r} is not a string")
        return v

    def choice(self, name: str, allowed: Iterable[str], default: Any = _MISSING) -> str:
        allowed = list(allowed)
        v = self._raw(name, default)
        if v not in allowed:
            raise self.error(name, f"{v!r} is not allowed (allowed: {', '.join(map(str, allowed))})")
        return v

    def section(self, name: str, required: bool = False) -> "Section":
        v = self._raw(name, _MISSING if required else None)
        return Section(v, self.source, self.key(name))

    def sequence(self, name: str, default: Any = _MISSING) -> list:
        v = self._raw(name, default)
        if not isinstance(v, list):
            raise self.error(name, f"expected a list, got {type(v).__name__}")
        return v

    def done(self) -> None:
        """Raise on keys nobody asked for (typos)."""
        extra = sorted(set(map(str, self.data)) - self._seen)
        if extra:
            known = ", ".join(sorted(self._seen)) or "(none)"
            raise self.error(extra[0], f"unknown key (known keys here: {known})")


def _range(lo, hi, lo_open: bool = False) -> str:
    left = "" if lo is None else (f">{lo}" if lo_open and hi is None else f"{lo}")
    if hi is None:
        return f">={lo}" if not lo_open else f">{lo}"
    if lo is None:
        return f"<={hi}"
    return f"{'(' if lo_open else ''}{left}..{hi}"
