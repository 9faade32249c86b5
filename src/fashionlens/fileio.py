"""File I/O every layer shares: atomic writes, file digests, strict JSON reading and the checks of
values read from it (a leaf: it imports only :mod:`fashionlens.errors`)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import tempfile
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from fashionlens.errors import ModelDirError

MAX_JSON_BYTES = 64 * 1024 * 1024
MAX_JSON_DEPTH = 32


def atomic_write(path: Path, write: Callable[[BinaryIO], Any], sync: bool = True) -> None:
    """``write(stream)`` into a temporary file in ``path``'s folder, then an atomic rename to ``path``: a
    crash, or two processes writing at once, leave the old file or a whole new one, never a torn one.
    ``sync`` flushes it to disk first (a cache that can be rebuilt does without)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes 0600; a model directory is meant to be shared
            write(stream)
            stream.flush()
            if sync:
                os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through :func:`atomic_write`, synced."""
    atomic_write(path, lambda stream: stream.write(data))


def atomic_write_json(path: Path, payload: Any) -> None:
    atomic_write_bytes(path, (json.dumps(payload, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file, read 1 MiB at a time (a model's weights need not fit in memory twice)."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_sha256(model_dir: str | Path) -> str:
    """SHA-256 of a model directory's ``model.safetensors``: which weights made a vector (or a row)."""
    return file_sha256(Path(model_dir) / "model.safetensors")


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def describe_value(value: Any) -> str:
    """A JSON value as an error message shows it: ``null``, ``'text' (a string)``, ``a list of 3``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, (int, float)):
        return f"{value!r} (a number)"
    if isinstance(value, str):
        return f"{value[:40]!r} (a string)"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    return "an object" if isinstance(value, dict) else type(value).__name__


def refuse(path: Path, key: str | None, expected: str, found: Any) -> ModelDirError:
    """The error for a JSON value that is not what its file needs: ``PATH: 'key': expected X, found Y``."""
    where = f"{path}: " + (f"{key!r}: " if key is not None else "")
    return ModelDirError(f"{where}expected {expected}, found {describe_value(found)}")


def check_inside(directory: Path, path: Path) -> None:
    """Refuse a file whose real location (after symbolic links) is outside its model directory."""
    try:
        real, root = path.resolve(strict=True), directory.resolve(strict=True)
    except (OSError, RuntimeError) as error:  # a link loop, or a dangling link
        raise ModelDirError(f"{path}: cannot resolve the file ({error})") from None
    if real != root and root not in real.parents:
        raise ModelDirError(f"{path}: a symbolic link to {real}, outside the model directory {root}; a model "
                            f"directory must hold its own files (copy the file in instead of linking it)")


def _depth(value: Any) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level)
            if deepest > MAX_JSON_DEPTH:
                return deepest
            stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def _no_constants(name: str) -> Any:
    raise ValueError(f"the non-finite number {name}, which JSON does not have")


def read_json_object(path: Path) -> dict[str, Any]:
    """A model directory's JSON file, strictly: inside its folder, at most MAX_JSON_BYTES, UTF-8, a JSON
    object, finite numbers, nested at most MAX_JSON_DEPTH levels; any problem is a ModelDirError."""
    path = Path(path)
    check_inside(path.parent, path)
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise ModelDirError(f"{path}: {size} bytes, more than the {MAX_JSON_BYTES} a model directory's JSON "
                                f"file may have")
        data = path.read_bytes()
    except OSError as error:
        raise ModelDirError(f"{path}: cannot read it ({error.strerror or error})") from error
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ModelDirError(f"{path}: not UTF-8 text (byte 0x{data[error.start]:02x} at position {error.start}); "
                            f"save_model_dir writes UTF-8 JSON") from None
    try:
        payload = json.loads(text, parse_constant=_no_constants)
    except json.JSONDecodeError as error:
        raise ModelDirError(f"{path}: corrupt JSON ({error.msg} at line {error.lineno})") from error
    except RecursionError:
        raise ModelDirError(f"{path}: JSON nested too deep (more than {MAX_JSON_DEPTH} levels)") from None
    except ValueError as error:
        raise ModelDirError(f"{path}: corrupt JSON ({error})") from None
    if not isinstance(payload, dict):
        raise refuse(path, None, "a JSON object {...}", payload)
    if _depth(payload) > MAX_JSON_DEPTH:
        raise ModelDirError(f"{path}: JSON nested too deep (more than {MAX_JSON_DEPTH} levels)")
    return payload


def check_fields(config: Any, ranges: dict[str, tuple[int, int]], choices: dict[str, tuple[str, ...]]) -> None:
    """Check a frozen dataclass read from JSON against its annotations: ``int`` fields are integers in
    ``ranges``, ``float`` finite numbers, ``bool`` true or false, ``str`` strings (one of ``choices``
    where given); ``X | None`` may also be null. Raises ValueError ``'key': expected ..., found ...``."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        kind = typing.get_type_hints(type(config))[field.name]
        options = typing.get_args(kind) if typing.get_origin(kind) in (typing.Union, types.UnionType) else (kind,)
        nullable = type(None) in options
        if value is None and nullable:
            continue
        kind = next(option for option in options if option is not type(None))
        null = " or null" if nullable else ""
        if kind is int:
            low, high = ranges[field.name]
            if not is_int(value) or not low <= value <= high:
                raise invalid(field.name, f"an integer from {low} to {high}{null}", value)
        elif kind is float and not is_number(value):
            raise invalid(field.name, f"a finite number{null}", value)
        elif kind is bool and not isinstance(value, bool):
            raise invalid(field.name, "true or false", value)
        elif kind is str:
            allowed = choices.get(field.name)
            if not isinstance(value, str) or (allowed is not None and value not in allowed):
                raise invalid(field.name, " or ".join(map(repr, allowed)) if allowed else f"a string{null}", value)


def invalid(key: str, expected: str, found: Any) -> ValueError:
    return ValueError(f"{key!r}: expected {expected}, found {describe_value(found)}")


def dataclass_from_json(cls: type, data: typing.Mapping[str, Any], what: str,
                        renamed: typing.Mapping[str, str] | None = None) -> Any:
    """``cls(**data)`` for a mapping read from JSON: the keys of older versions renamed (``renamed``),
    ``format_version`` left to the file's reader; a missing or unknown key is a ValueError naming it
    and ``what`` (e.g. "a style model's config.json")."""
    values = {(renamed or {}).get(key, key): value for key, value in data.items() if key != "format_version"}
    fields = dataclasses.fields(cls)
    names = [field.name for field in fields]
    unknown = [key for key in values if key not in names]
    if unknown:
        raise ValueError(f"{unknown[0]!r}: not a key of {what} (it has {', '.join(names)})")
    missing = [field.name for field in fields if field.name not in values
               and field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING]
    if missing:
        raise ValueError(f"{missing[0]!r} is missing; {what} holds it")
    return cls(**values)


def is_uri(path: str | Path) -> bool:
    """``s3://...``, ``memory://...``, ``file://...``: read through fsspec, never through ``Path``."""
    return isinstance(path, str) and "://" in path


def resolved_file(path: str | Path) -> str:
    """What a path leads to: the real absolute path of a local file (links and ``..`` resolved), a URI as
    it is. Two paths to one photo give one resolved file, so it is predicted once."""
    return path if is_uri(path) else os.path.realpath(path)
