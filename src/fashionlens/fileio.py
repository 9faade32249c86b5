"""File I/O every layer shares: atomic writes, file digests and strict JSON reading (a leaf: it
imports only :mod:`fashionlens.errors`)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from fashionlens.errors import ModelDirError

MAX_JSON_BYTES = 64 * 1024 * 1024
MAX_JSON_DEPTH = 32


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes 0600; a model directory is meant to be shared
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def atomic_write_json(path: Path, payload: Any) -> None:
    atomic_write_bytes(path, (json.dumps(payload, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file, read 1 MiB at a time (a model's weights need not fit in memory twice)."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
