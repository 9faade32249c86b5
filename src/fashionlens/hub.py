"""Released models by name: where a name resolves from, the user cache, the Hugging Face Hub, and the
integrity manifest a release writes.

``fashionlens.load(NAME)`` and every command that takes a model directory resolve ``NAME`` in this
order (the first that answers wins):

1. an existing path: a model directory of your own;
2. the models inside the installed package (``fashionlens/released/``: package data of the wheel;
   in a clone, a link to ``models/``), by their short name or their folder name;
3. the user cache (``$FASHIONLENS_CACHE``, else ``~/.cache/fashionlens/models``): model directories
   copied in (by folder name or card name), and Hub snapshots laid out as huggingface_hub writes them
   (``models--ORG--NAME/snapshots/REV/``, ``refs/main``). A name of the package never reads the cache.
   The cache never follows a link out of itself (a link there that leads out is shown by
   ``fashionlens models`` as a problem, never loaded, written to or deleted), and a cache that other
   users can write is a warning: whoever writes it chooses the models you load;
4. the Hugging Face Hub: ``hf://ORG/NAME`` (or ``hf://ORG/NAME@REVISION``), or any name in the org
   ``$FASHIONLENS_HUB_ORG``, through ``huggingface_hub.snapshot_download`` into the same cache.
   ``HF_HUB_OFFLINE=1`` uses the cache only; without a network the cached snapshot is used.

A released model directory holds two more files than ``save_model_dir`` writes: ``card.json`` (its
name, task, outputs and held-out figures, read from the model card README.md at release) and
``manifest.json`` (SHA-256 and size of every file loading reads), both written by
``scripts/release_model.py``. ``modeldir.load_model_dir`` checks the manifest where there is one
(``modeldir.verify_manifest``); a directory without one (your own runs) loads as before.
"""

from __future__ import annotations

import difflib
import os
import re
import shutil
import stat
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fashionlens.errors import ModelDirError
from fashionlens.fileio import is_int, is_number, refuse
from fashionlens.modeldir import read_json

CARD_FILE = "card.json"
CARD_VERSION = 1
# What a Hub download fetches: a model directory's files, not whatever else a repository holds.
HUB_FILES = ["*.json", "*.safetensors", "*.md", "*.txt"]
HUB_ORG_VARIABLE = "FASHIONLENS_HUB_ORG"
CACHE_VARIABLE = "FASHIONLENS_CACHE"
# Hub snapshots link their files to ../../blobs/; a model directory must hold its own files (see
# fileio.check_inside), so a snapshot is loaded from a folder of hard links (or copies) here.
LINKED_SNAPSHOTS = ".snapshots"
# The held-out figures `fashionlens models` shows when a card has them (else its first three).
HEADLINE_METRICS = ("catalogue top-1", "street mAP", "mAP", "CF1", "OF1", "category top-1", "attr mAP")

NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")
HUB_REFERENCE = re.compile(r"hf:/{1,2}(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<revision>[\w./-]+))?")
# A snapshot folder is named by its commit (what refs/main holds); anything else could name a path.
REVISION = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class ReleasedModel:
    """A model that answers to a name: in the installed package, the user cache or the Hub cache."""

    name: str
    aliases: tuple[str, ...]
    path: Path
    source: str  # "package", "cache" or "hub"
    card: dict[str, Any] | None = None
    problem: str | None = None  # why its card could not be read (the row says so; the folder name still resolves)

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


# ------------------------------------------------------------------------------------------------
# Where models are.

def package_models_dir() -> Path:
    """The released models inside the installed package (a link to the clone's models/ in a checkout)."""
    return Path(__file__).resolve().parent / "released"


def cache_dir() -> Path:
    """The user cache: ``$FASHIONLENS_CACHE``, else ``$XDG_CACHE_HOME/fashionlens/models`` (``~/.cache``)."""
    configured = os.environ.get(CACHE_VARIABLE)
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fashionlens" / "models"


def derived_path(folder: str, name: str) -> Path:
    """Where a file derived from a model lives (an ONNX export, named by the SHA-256 of the weights):
    ``<cache>/.<folder>/<name>``, the folder created. Never a model directory (which may be the
    package's or someone else's), never through a link out of the cache."""
    path = cache_dir() / f".{folder}" / name
    elsewhere = _link_out_of(cache_dir(), path)
    if elsewhere is not None:
        raise ModelDirError(f"{path}: a link to {elsewhere}, outside the model cache {cache_dir()}: not followed "
                            f"(remove it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def hub_offline() -> bool:
    """huggingface_hub's ``HF_HUB_OFFLINE``, read now (the library reads it once, when imported)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _model_folders(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(folder for folder in root.iterdir()
                  if not folder.name.startswith((".", "models--")) and (folder / "config.json").is_file())


def _link_out_of(root: Path, path: Path) -> Path | None:
    """Where ``path`` really is when a symbolic link between ``root`` and it leads elsewhere, else None."""
    real, expected = os.path.realpath(path), os.path.join(os.path.realpath(root), os.path.relpath(path, root))
    return None if real == expected else Path(real)


def _warn_if_shared(root: Path) -> None:
    try:
        info = root.stat()
    except OSError:
        return
    if info.st_mode & stat.S_IWOTH or info.st_uid != os.geteuid():
        warnings.warn(f"{root}: the model cache is writable by other users (mode {stat.filemode(info.st_mode)}, "
                      f"owner uid {info.st_uid}): whoever writes it chooses the models you load; set "
                      f"${CACHE_VARIABLE} to a folder only you can write", UserWarning, stacklevel=3)


def _hub_snapshots(root: Path) -> list[tuple[str, Path]]:
    """(``hf://ORG/NAME``, snapshot folder) for each Hub repository in the cache with a ``main`` ref."""
    found = []
    for repo in sorted(root.glob("models--*--*")) if root.is_dir() else []:
        parts = repo.name.split("--")
        ref = repo / "refs" / "main"
        if len(parts) != 3 or not ref.is_file():
            continue
        revision = ref.read_text(encoding="utf-8", errors="replace")[:100].strip()
        snapshot = repo / "snapshots" / revision
        if REVISION.fullmatch(revision) and (snapshot / "config.json").is_file():
            found.append((f"hf://{parts[1]}/{parts[2]}", snapshot))
    return found


def _entry(path: Path, source: str, name: str) -> ReleasedModel:
    """A model folder as a ReleasedModel: its card's name first, the folder name (or hf:// name) an alias."""
    try:
        card = read_card(path)
    except ModelDirError as error:
        return ReleasedModel(name, (), path, source, None, str(error))
    if card is None:
        return ReleasedModel(name, (), path, source)
    names = [card["name"], *card["aliases"], name]
    unique = tuple(dict.fromkeys(names))
    return ReleasedModel(unique[0], unique[1:], path, source, card)


def _package_models() -> list[ReleasedModel]:
    return [_entry(folder, "package", folder.name) for folder in _model_folders(package_models_dir())]


def _cache_models() -> list[ReleasedModel]:
    cache = cache_dir()
    if not cache.is_dir():
        return []
    _warn_if_shared(cache)
    entries = []
    for folder in _model_folders(cache):
        elsewhere = _link_out_of(cache, folder)
        entries.append(_entry(folder, "cache", folder.name) if elsewhere is None else ReleasedModel(
            folder.name, (), folder, "cache", None, f"{folder}: a link to {elsewhere}, outside the cache: not used"))
    for reference, snapshot in _hub_snapshots(cache):
        try:
            entries.append(_entry(_linked_snapshot(snapshot), "hub", reference))
        except (ModelDirError, OSError) as error:
            entries.append(ReleasedModel(reference, (), snapshot, "hub", None, str(error)))
    return entries


def released_models() -> list[ReleasedModel]:
    """Every model that answers to a name, in resolution order: the package's, the cache's, the Hub cache's."""
    return _package_models() + _cache_models()


def _is_name(text: str) -> bool:
    return bool(NAME.fullmatch(text))


def _unknown(text: str) -> ModelDirError:
    entries = [entry for entry in released_models() if entry.problem is None]
    known = [entry.name + (f" (or {', '.join(entry.aliases)})" if entry.aliases else "") for entry in entries]
    canonical = {name: entry.name for entry in entries for name in entry.names}
    # A path's last part too: `models/clothing-attributes-lite0` typed outside the clone.
    close = difflib.get_close_matches(Path(text).name, list(canonical), n=1, cutoff=0.6)
    what = f"{text!r} is neither a model directory nor a released model's name" if _is_name(text) else \
        f"{text}: no such model directory"
    hint = f" Did you mean {canonical[close[0]]!r}?" if close else ""
    return ModelDirError(f"{what}.{hint} Known names: {'; '.join(known) or 'none'}. Also: hf://ORG/NAME for a "
                         f"Hugging Face Hub model (downloaded into {cache_dir()}); `fashionlens models` lists them.")


def resolve_model_dir(model: str | os.PathLike[str]) -> Path:
    """The model directory a path or a name stands for (see the module docstring for the order).

    Raises ModelDirError for a name nothing answers to; its message lists the known names.
    """
    text = os.fspath(model)
    reference = HUB_REFERENCE.fullmatch(text)  # argparse's Path turns hf://org/name into hf:/org/name
    if reference:
        return download(reference["repo"], reference["revision"])
    if text.startswith("hf:"):
        raise ModelDirError(f"{text!r}: a Hugging Face Hub model is hf://ORG/NAME or hf://ORG/NAME@REVISION")
    path = Path(text).expanduser()
    if path.exists() or path.is_symlink():
        return path
    if _is_name(text):
        for entries in (_package_models, _cache_models):  # a package model never reads the cache
            for entry in entries():
                if text in entry.names:
                    if entry.source != "package" and _link_out_of(cache_dir(), entry.path) is not None:
                        raise ModelDirError(str(entry.problem))
                    return entry.path
        org = os.environ.get(HUB_ORG_VARIABLE)
        if org:
            return download(f"{org}/{text}")
    raise _unknown(text)


# ------------------------------------------------------------------------------------------------
# The Hugging Face Hub.

def download(repo_id: str, revision: str | None = None) -> Path:
    """A Hub repository's model directory, through ``snapshot_download`` into the user cache."""
    reference = f"hf://{repo_id}" + (f"@{revision}" if revision else "")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as error:
        raise ModelDirError(f"{reference}: Hub models need huggingface_hub (pip install huggingface_hub)") from error
    offline = hub_offline()
    _warn_if_shared(cache_dir())
    try:
        snapshot = snapshot_download(repo_id, revision=revision, cache_dir=cache_dir(), local_files_only=offline,
                                     allow_patterns=HUB_FILES, library_name="fashionlens")
    except (OSError, ValueError) as error:  # huggingface_hub's: not found, gated, no network and not cached
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        where = (f"not in the cache {cache_dir()} and HF_HUB_OFFLINE=1 (unset it to download)" if offline
                 else f"cannot download it into {cache_dir()} ({type(error).__name__}: {reason})")
        raise ModelDirError(f"{reference}: {where}") from error
    return _linked_snapshot(Path(snapshot))


def _linked_snapshot(snapshot: Path) -> Path:
    """The snapshot's files in a folder of their own: hard links to its blobs (copies across file systems).

    A snapshot folder holds symbolic links into ``../../blobs/``, which a model directory refuses;
    a snapshot of real files (huggingface_hub on Windows without symbolic links) is used as it is.
    Nothing outside the cache is read, written or deleted: every path is checked for a link out of it.
    """
    root = cache_dir()
    repo = snapshot.parents[1]

    def inside(path: Path) -> Path:
        elsewhere = _link_out_of(root, path)
        if elsewhere is not None:
            raise ModelDirError(f"{path}: a link to {elsewhere}, outside the model cache {root}: not followed "
                                f"(remove it; a cache others can write is not safe to use)")
        return path

    inside(snapshot)
    entries = sorted(item for item in snapshot.iterdir() if not item.is_dir())
    if not any(item.is_symlink() for item in entries):
        return snapshot
    blobs = Path(os.path.realpath(root)) / repo.name
    target = root / LINKED_SNAPSHOTS / repo.name / snapshot.name
    if inside(target).is_dir() and sorted(item.name for item in target.iterdir()) == [item.name for item in entries]:
        return target
    inside(target.parent).mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{snapshot.name}.", dir=inside(target.parent)))
    try:
        for item in entries:
            real = item.resolve(strict=True)
            if blobs not in real.parents:
                raise ModelDirError(f"{item}: a link to {real}, outside the Hub cache folder {repo}")
            try:
                os.link(real, staging / item.name)
            except OSError:
                shutil.copy2(real, staging / item.name)
        if inside(target).exists():
            shutil.rmtree(target)  # built from an older download of the same revision
        os.replace(staging, inside(target))
    except FileNotFoundError as error:  # a dangling link: the blob was deleted
        raise ModelDirError(f"{snapshot}: a file of the snapshot is missing from the Hub cache ({error.filename}); "
                            f"download it again") from error
    except OSError:
        if not target.is_dir():  # another process may have built the same folder meanwhile
            raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


# ------------------------------------------------------------------------------------------------
# Model cards: card.json, written at release from config.json and the figures the releaser gives.

def model_outputs(config: dict[str, Any]) -> dict[str, int]:
    """What a model predicts, counted: ``{"labels": 37}`` or ``{"categories": 7, "attributes": 30, ...}``."""
    if config.get("task") == "style":
        return {"labels": int(config["num_labels"])}
    outputs = {"categories": int(config["num_categories"]), "attributes": int(config["num_attributes"])}
    if config.get("landmarks", "glem") != "none":
        outputs["landmarks"] = int(config.get("num_landmarks", 8))
    return outputs


def card_for_release(directory: str | os.PathLike[str], name: str, summary: str = "",
                     aliases: tuple[str, ...] = (), heldout: dict[str, Any] | None = None) -> dict[str, Any]:
    """The card.json a release writes: ``name``, the folder name as an alias, the task and outputs
    (config.json), and the held-out figures ``heldout`` (``{"images": N, "metrics": {name: number}}``;
    None keeps the directory's card's). card.json is where a released model's figures live: its
    README shows them to people, nothing reads them back from there."""
    directory = Path(directory)
    if not _is_name(name):
        raise ModelDirError(f"{name!r}: a model name is lowercase letters, digits, '.', '_' and '-', starting with a "
                            f"letter or digit")
    config = read_json(directory / "config.json")
    if heldout is None:
        heldout = (read_card(directory) or {}).get("heldout") or {"images": None, "metrics": {}}
    metrics = dict(heldout.get("metrics") or {})
    headline = ([key for key in heldout.get("headline") or [] if key in metrics]
                or [key for key in metrics if key in HEADLINE_METRICS] or list(metrics)[:3])
    folder = directory.resolve().name
    aliases = tuple(dict.fromkeys(alias for alias in (*aliases, folder) if alias != name))
    return {"card_version": CARD_VERSION, "name": name, "aliases": list(aliases), "summary": summary,
            "task": config["task"], "outputs": model_outputs(config),
            "heldout": {"images": heldout.get("images"), "metrics": metrics, "headline": list(headline)}}


def read_card(directory: str | os.PathLike[str]) -> dict[str, Any] | None:
    """A model directory's card.json, checked; None where there is none."""
    path = Path(directory) / CARD_FILE
    if not path.is_file():
        return None
    card = read_json(path)
    if card.get("card_version") != CARD_VERSION:
        raise refuse(path, "card_version", f"{CARD_VERSION} (a newer fashionlens may read others)",
                      card.get("card_version"))
    if not isinstance(card.get("name"), str) or not _is_name(card["name"]):
        raise refuse(path, "name", "a model name (lowercase letters, digits, '.', '_', '-')", card.get("name"))
    aliases = card.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(alias, str) and _is_name(alias) for alias in aliases):
        raise refuse(path, "aliases", "a list of model names", aliases)
    for key in ("summary", "task"):
        if not isinstance(card.get(key, ""), str):
            raise refuse(path, key, "a string", card.get(key))
    outputs = card.get("outputs", {})
    if not isinstance(outputs, dict) or not all(is_int(count) for count in outputs.values()):
        raise refuse(path, "outputs", "an object of output name: count", outputs)
    heldout = card.get("heldout", {})
    metrics = heldout.get("metrics", {}) if isinstance(heldout, dict) else None
    if not isinstance(metrics, dict) or not all(is_number(value) for value in metrics.values()):
        raise refuse(path, "heldout.metrics", "an object of metric name: number", metrics)
    headline = heldout.get("headline", [])
    if not isinstance(headline, list) or not all(key in metrics for key in headline):
        raise refuse(path, "heldout.headline", "a list of names in heldout.metrics", headline)
    if heldout.get("images") is not None and not is_int(heldout["images"]):
        raise refuse(path, "heldout.images", "a number of images or null", heldout["images"])
    return {"aliases": [], "summary": "", "outputs": {}, "heldout": {"images": None, "metrics": {}, "headline": []},
            **card}


# ------------------------------------------------------------------------------------------------
# `fashionlens models`.

def _size_on_disk(directory: Path) -> int:
    return sum(item.stat().st_size for item in directory.iterdir() if item.is_file() and item.suffix != ".onnx")


def describe(entry: ReleasedModel) -> dict[str, Any]:
    """One model of :func:`released_models` as a plain dict (what ``fashionlens models --json`` prints)."""
    card = entry.card or {}
    out: dict[str, Any] = {"name": entry.name, "aliases": list(entry.aliases), "source": entry.source,
                           "path": str(entry.path), "summary": card.get("summary", "")}
    try:
        config = read_json(entry.path / "config.json")
        out.update(task=config["task"], outputs=model_outputs(config), size_bytes=_size_on_disk(entry.path))
    except (ModelDirError, KeyError, ValueError, TypeError) as error:
        out.update(task=card.get("task"), outputs=card.get("outputs", {}), size_bytes=None,
                   problem=entry.problem or f"config.json: {error}")
    out["heldout"] = card.get("heldout") or {"images": None, "metrics": {}, "headline": []}
    if entry.problem:
        out["problem"] = entry.problem
    return out


def _format_outputs(outputs: dict[str, int]) -> str:
    return ", ".join(f"{count} {kind}" for kind, count in outputs.items()) or "-"


def _format_heldout(heldout: dict[str, Any]) -> str:
    metrics = heldout.get("metrics") or {}
    shown = heldout.get("headline") or list(metrics)[:3]
    if not shown:
        return "-"
    text = ", ".join(f"{key} {metrics[key]:.1f}" for key in shown)
    return text + (f" ({heldout['images']} images)" if heldout.get("images") else "")


def format_models(entries: list[ReleasedModel]) -> str:
    """The table ``fashionlens models`` prints: name, task, outputs, size, held-out figures, where from."""
    rows = [("NAME", "TASK", "PREDICTS", "SIZE", "HELD-OUT (%)", "FROM")]
    notes = []
    taken: set[str] = set()
    for entry in entries:
        described = describe(entry)
        size = described["size_bytes"]
        source = entry.source if entry.name not in taken else f"{entry.source} (shadowed: the name is taken above)"
        taken.update(entry.names)
        rows.append((entry.name, described["task"] or "?", _format_outputs(described["outputs"]),
                     f"{size / 1e6:.1f} MB" if size is not None else "?", _format_heldout(described["heldout"]),
                     source))
        if entry.aliases:
            notes.append(f"{entry.name} also answers to {', '.join(entry.aliases)}")
        if described.get("problem"):
            notes.append(f"{entry.name}: {described['problem']}")
    if len(rows) == 1:
        return (f"no released models found (looked in {package_models_dir()} and {cache_dir()}); "
                f"hf://ORG/NAME downloads one from the Hugging Face Hub")
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1] for row in rows]
    lines += ["", *notes, f"cache: {cache_dir()} (${CACHE_VARIABLE}); hf://ORG/NAME loads from the Hugging Face Hub",
              "a name goes wherever a model directory does: fashionlens predict NAME photo.jpg, fashionlens.load(NAME)"]
    return "\n".join(lines)
