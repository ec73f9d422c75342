"""Configuration: one YAML per environment, explicit overrides, strict checking.

An environment file names the file it extends (``extends: base.yaml``, relative
to itself); ``base.yaml`` holds every known key with its default. Files are
local paths or ``s3://`` URIs (as the jobs get them on EMR); an S3 file's
``extends`` is resolved under the same prefix. Overrides come
from ``--set section.key=value`` (values parsed as YAML). A key that base does not
know, or a value whose type differs from the default's, is refused with a
one-line message naming the key.
"""

from __future__ import annotations

import argparse
import copy
import posixpath
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from amazon_recs.errors import ConfigError

EXTENDS_KEY = "extends"
DEFAULT_CONFIG = "conf/local.yaml"


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


def load_config(path: str | Path, overrides: Iterable[str] = (), *, s3_endpoint: str | None = None) -> Config:
    """Load an environment file, the files it extends, and overrides.

    Args:
        path: the environment YAML, e.g. ``conf/local.yaml``, or an ``s3://``
            URI (read with boto3 and the default credential chain).
        overrides: ``section.key=value`` strings applied last.
        s3_endpoint: where to read ``s3://`` files from; None means AWS's own,
            or ``AWS_ENDPOINT_URL_S3`` when that is set.

    Returns:
        The merged, checked configuration.

    Raises:
        ConfigError: a file is missing, unreadable or malformed, a key is
            unknown, or a value has the wrong type.
    """
    read = _reader(s3_endpoint)
    location: Location = str(path) if is_s3_uri(path) else Path(path)
    chain = _extends_chain(location, read)
    base_path, env_paths = chain[0], chain[1:]
    data = read(base_path)
    data.pop(EXTENDS_KEY, None)
    for env_path in env_paths:
        env = read(env_path)
        env.pop(EXTENDS_KEY, None)
        for key, value in _flatten(env):
            _set_checked(data, key, value, where=str(env_path))
    return Config(data, str(location)).with_overrides(overrides)


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


# A config file: a local path, or an s3:// URI kept as a string.
Location = Path | str
S3_SCHEME = "s3://"


def is_s3_uri(path: str | Path) -> bool:
    return isinstance(path, str) and path.startswith(S3_SCHEME)


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b.yaml`` -> ``("bucket", "a/b.yaml")``."""
    bucket, _, key = uri[len(S3_SCHEME) :].partition("/")
    if not bucket or not key or key.endswith("/"):
        raise ConfigError(f"config file {uri} is not an s3://bucket/key URI of a file")
    return bucket, key


def _extends_chain(path: Location, read: Callable[[Location], dict[str, Any]]) -> list[Location]:
    chain = [path]
    seen = {_identity(path)}
    current = path
    while True:
        parent = read(current).get(EXTENDS_KEY)
        if parent is None:
            return list(reversed(chain))
        current = _resolve_extends(current, str(parent))
        if _identity(current) in seen:
            raise ConfigError(f"config {path}: 'extends' makes a cycle at {current}")
        seen.add(_identity(current))
        chain.append(current)


def _identity(location: Location) -> Location:
    return location if isinstance(location, str) else location.resolve()


def _resolve_extends(current: Location, parent: str) -> Location:
    """The file ``parent`` names, relative to the file ``current`` that extends it."""
    if is_s3_uri(parent):
        bucket, key = split_s3_uri(parent)
        return f"{S3_SCHEME}{bucket}/{posixpath.normpath(key)}"
    if not isinstance(current, str):
        return (current.parent / parent).resolve()
    if parent.startswith("/"):
        raise ConfigError(
            f"config {current}: 'extends: {parent}' is a local path; "
            "an S3 config extends a file relative to itself or an s3:// URI"
        )
    bucket, key = split_s3_uri(current)
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(key), parent))
    if resolved == ".." or resolved.startswith("../"):
        raise ConfigError(f"config {current}: 'extends: {parent}' leads outside bucket {bucket}")
    return f"{S3_SCHEME}{bucket}/{resolved}"


def _reader(s3_endpoint: str | None) -> Callable[[Location], dict[str, Any]]:
    """A function reading one config file, each at most once; S3 files share one
    client, made when the first one is read."""
    clients: list = []
    texts: dict[Location, str] = {}

    def text(location: Location) -> str:
        if isinstance(location, Path):
            if not location.is_file():
                raise ConfigError(f"config file {location} does not exist")
            return location.read_text(encoding="utf-8")
        if not clients:
            clients.append(_s3_client(s3_endpoint))
        return _read_s3_text(clients[0], location)

    def read(location: Location) -> dict[str, Any]:
        key = _identity(location)
        if key not in texts:
            texts[key] = text(location)
        return _parse_yaml(texts[key], location)

    return read


def _s3_client(endpoint: str | None):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint or None)


def _read_s3_text(client, uri: str) -> str:
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    bucket, key = split_s3_uri(uri)
    try:
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchKey", "404", "NotFound"):
            raise ConfigError(f"config file {uri} does not exist") from None
        if code == "NoSuchBucket":
            raise ConfigError(f"config file {uri}: bucket {bucket} does not exist") from None
        if code in ("AccessDenied", "403", "Forbidden"):
            raise ConfigError(
                f"config file {uri}: access denied (the role needs s3:GetObject on it)"
            ) from None
        raise ConfigError(f"config file {uri} could not be read: {code or exc}") from None
    except NoCredentialsError:
        raise ConfigError(
            f"config file {uri} could not be read: no AWS credentials (environment, profile or instance role)"
        ) from None
    except BotoCoreError as exc:
        raise ConfigError(f"config file {uri} could not be read: {exc}") from None
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"config file {uri} is not UTF-8 text") from None


def _parse_yaml(text: str, location: Location) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {location} is not valid YAML: {exc}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {location} must hold a mapping at the top level")
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


def add_config_arguments(
    parser: argparse.ArgumentParser, default: str = DEFAULT_CONFIG, what: str = ""
) -> None:
    """``--config``, repeatable ``--set KEY=VALUE`` and ``--debug``, as every command takes them."""
    what = what or "environment YAML, a path or an s3:// URI"
    parser.add_argument("--config", default=default, help=f"{what} (default {default})")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a setting, e.g. --set als.rank=64 (repeatable)",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
