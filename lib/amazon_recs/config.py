"""Configuration: one YAML per environment, explicit overrides, strict checking.

An environment file names the file it extends (``extends: base.yaml``, relative
to itself); ``base.yaml`` holds every known key with its default. Overrides come
from ``--set section.key=value`` (values parsed as YAML). A key that base does not
know, or a value whose type differs from the default's, is refused with a
one-line message naming the key.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from amazon_recs.errors import ConfigError

EXTENDS_KEY = "extends"


class Config(Mapping):
    """Read-only nested settings with dotted-path access: ``cfg.get("als.rank")``."""

    def __init__(self, data: Mapping[str, Any], source: str = "<dict>"):
        self._data = copy.deepcopy(dict(data))
        self.source = source

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self):
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def get(self, dotted: str, default: Any = None) -> Any:
        """The value at ``dotted``, with ``${section.key}`` references filled in."""
        node = self._raw(dotted, default)
        return node if node is default else self._interpolate(copy.deepcopy(node), dotted)

    def _raw(self, dotted: str, default: Any) -> Any:
        node: Any = self._data
        for part in dotted.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return default
            node = node[part]
        return node

    def _interpolate(self, value: Any, where: str, depth: int = 0) -> Any:
        if isinstance(value, dict):
            return {k: self._interpolate(v, where, depth) for k, v in value.items()}
        if isinstance(value, list):
            return [self._interpolate(v, where, depth) for v in value]
        if not isinstance(value, str) or "${" not in value:
            return value
        if depth > 10:
            raise ConfigError(f"setting '{where}': references nest too deeply (a cycle?)")

        def fill(match: re.Match) -> str:
            ref = match.group(1)
            target = self._raw(ref, _MISSING)
            if target is _MISSING or isinstance(target, (dict, list)):
                raise ConfigError(f"setting '{where}' refers to '${{{ref}}}', which is not a plain setting")
            return str(self._interpolate(target, ref, depth + 1))

        return _REFERENCE.sub(fill, value)

    def require(self, dotted: str) -> Any:
        value = self.get(dotted, _MISSING)
        if value is _MISSING:
            raise ConfigError(f"setting '{dotted}' is missing from {self.source}")
        return value

    def to_dict(self) -> dict[str, Any]:
        """The settings as written, references not filled in."""
        return copy.deepcopy(self._data)

    def with_overrides(self, overrides: Iterable[str]) -> Config:
        """A copy with ``key=value`` overrides applied and checked."""
        data = self.to_dict()
        for item in overrides:
            key, value = parse_override(item)
            _set_checked(data, key, value)
        return Config(data, self.source)


_MISSING = object()
_REFERENCE = re.compile(r"\$\{([A-Za-z0-9_.]+)\}")


def load_config(path: str | Path, overrides: Iterable[str] = ()) -> Config:
    """Load an environment file, the files it extends, and overrides.

    Args:
        path: the environment YAML, e.g. ``conf/local.yaml``.
        overrides: ``section.key=value`` strings applied last.

    Returns:
        The merged, checked configuration.

    Raises:
        ConfigError: a file is missing or malformed, a key is unknown, or a
            value has the wrong type.
    """
    path = Path(path)
    chain = _extends_chain(path)
    base_path, env_paths = chain[0], chain[1:]
    data = _read_yaml(base_path)
    data.pop(EXTENDS_KEY, None)
    for env_path in env_paths:
        env = _read_yaml(env_path)
        env.pop(EXTENDS_KEY, None)
        for key, value in _flatten(env):
            _set_checked(data, key, value, where=str(env_path))
    return Config(data, str(path)).with_overrides(overrides)


def parse_override(item: str) -> tuple[str, Any]:
    """Split ``a.b=value`` into the dotted key and the YAML-parsed value."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override '{item}' is not of the form section.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{item}': value is not valid YAML ({exc.problem})") from None
    return key.strip(), value


def _extends_chain(path: Path) -> list[Path]:
    chain = [path]
    seen = {path.resolve()}
    current = path
    while True:
        parent = _read_yaml(current).get(EXTENDS_KEY)
        if parent is None:
            return list(reversed(chain))
        current = (current.parent / str(parent)).resolve()
        if current in seen:
            raise ConfigError(f"config {path}: 'extends' makes a cycle at {current}")
        seen.add(current)
        chain.append(current)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return loaded


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            yield from _flatten(value, dotted + ".")
        else:
            yield dotted, value


def _set_checked(data: dict[str, Any], dotted: str, value: Any, where: str = "--set") -> None:
    parts = dotted.split(".")
    node: Any = data
    for i, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            known = ", ".join(sorted(node)) if isinstance(node, dict) else ""
            raise ConfigError(
                f"unknown setting '{dotted}' in {where}"
                + (f" (known under '{'.'.join(parts[:i]) or 'top level'}': {known})" if known else "")
            )
        if i < len(parts) - 1:
            node = node[part]
    default = node[parts[-1]]
    if isinstance(default, dict) and isinstance(value, dict):
        for key, sub in _flatten(value):
            _set_checked(data, f"{dotted}.{key}", sub, where)
        return
    node[parts[-1]] = _coerce(dotted, default, value, where)


def _coerce(dotted: str, default: Any, value: Any, where: str) -> Any:
    expected = type(default)
    if isinstance(default, bool) or isinstance(value, bool):
        ok = isinstance(default, bool) and isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float))
        value = float(value) if ok else value
    else:
        ok = isinstance(value, expected)
    if not ok:
        raise ConfigError(
            f"setting '{dotted}' in {where} must be {expected.__name__}, got {type(value).__name__} {value!r}"
        )
    return value
