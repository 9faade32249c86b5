"""The photos a batch command (``predict``, ``embed``) was given: files, folders, globs and lists.

A door-side module: it turns what the user typed into a list of paths, and says what it skipped and
why. The library (:mod:`fashionlens.predictions`, :mod:`fashionlens.search`) takes that list.
"""

from __future__ import annotations

import errno
import glob
import os
import stat
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Self

from fashionlens.errors import FashionlensError
from fashionlens.fileio import is_uri, resolved_file
from fashionlens.vocabulary import IMAGE_EXTENSIONS

# --files-from CSV/Parquet: the column of paths when --path-column is not given, first found.
PATH_COLUMNS = ("image", "path")


class SkippedInput(str):
    """One input that `predict` did not predict, and why: the line it prints (a ``str``).

    ``failed`` is True for an input that was lost (a dangling link, a link loop, a FIFO, an
    unreadable folder, a pattern matching nothing): ``predict`` then exits 1. It is False for what
    is reported but lost nothing: copies of a file that is predicted once, and files without an
    image extension in a folder.
    """

    failed: bool

    def __new__(cls, text: str, failed: bool = True) -> Self:
        skipped = super().__new__(cls, text)
        skipped.failed = failed
        return skipped


_FILE_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
               (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


def collect_image_paths(patterns: Sequence[str | Path]) -> tuple[list[Path], list[SkippedInput]]:
    """Expand files, folders (recursive, image extensions) and globs; returns (paths, skipped).

    Every input not returned is listed in ``skipped`` with its reason (see :class:`SkippedInput`):
    paths that lead to a file already listed (symbolic or hard links, a folder given twice) are
    predicted once and reported as duplicates of that file; dangling links, link loops, FIFOs,
    sockets and devices are never opened. Symbolic links to folders are followed, once each.
    """
    found: list[Path] = []
    skipped: list[SkippedInput] = []
    first_path: dict[tuple[int, int], Path] = {}
    copies: dict[tuple[int, int], list[Path]] = {}
    searched: dict[tuple[int, int], Path] = {}

    def add(path: Path) -> None:
        """A path that should be an image file: listed once, or reported."""
        try:
            info = path.stat()
        except FileNotFoundError:
            if path.is_symlink():
                skipped.append(SkippedInput(f"{path}: skipped: a dangling symbolic link (to {os.readlink(path)}, "
                                            f"which does not exist)"))
            else:
                skipped.append(SkippedInput(f"{path}: no such file or folder"))
            return
        except OSError as error:
            reason = "a symbolic link loop" if error.errno == errno.ELOOP else f"cannot read it ({error.strerror})"
            skipped.append(SkippedInput(f"{path}: skipped: {reason}"))
            return
        if not stat.S_ISREG(info.st_mode):
            kind = next((name for test, name in _FILE_KINDS if test(info.st_mode)), "not a regular file")
            skipped.append(SkippedInput(f"{path}: skipped: {kind}, not an image file"))
            return
        key = (info.st_dev, info.st_ino)
        if key in first_path:
            copies.setdefault(key, []).append(path)
        else:
            first_path[key] = path
            found.append(path)

    def search(folder: Path, ancestors: tuple[tuple[int, int], ...]) -> list[Path]:
        """Add the images under ``folder``; returns the files ignored for their extension."""
        ignored: list[Path] = []
        try:
            entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
        except OSError as error:
            skipped.append(SkippedInput(f"{folder}: cannot list the folder ({error.strerror})"))
            return ignored
        for entry in entries:
            path = Path(entry.path)
            try:
                is_folder = entry.is_dir()  # follows symbolic links
            except OSError:
                is_folder = False
            if not is_folder:
                if path.suffix.lower() in IMAGE_EXTENSIONS:
                    add(path)
                else:
                    ignored.append(path)
                continue
            try:
                info = path.stat()
            except OSError as error:
                skipped.append(SkippedInput(f"{path}: cannot read the folder ({error.strerror})"))
                continue
            key = (info.st_dev, info.st_ino)
            if key in ancestors:
                skipped.append(SkippedInput(f"{path}: skipped: a symbolic link loop (it leads back to "
                                            f"{searched[key]}, which contains it)", failed=False))
            elif key in searched:
                skipped.append(SkippedInput(f"{path}: skipped: the same folder as {searched[key]}, searched "
                                            f"already", failed=False))
            else:
                searched[key] = path
                ignored += search(path, (*ancestors, key))
        return ignored

    def report_ignored(where: str, ignored: list[Path], what: str) -> None:
        if ignored:
            names = ", ".join(path.name for path in ignored[:3]) + (", ..." if len(ignored) > 3 else "")
            skipped.append(SkippedInput(f"{where}: ignored {_plural(len(ignored), what)} ({names})", failed=False))

    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            info = path.stat()
            key = (info.st_dev, info.st_ino)
            if key in searched:
                skipped.append(SkippedInput(f"{path}: skipped: the same folder as {searched[key]}, searched "
                                            f"already", failed=False))
                continue
            searched[key] = path
            report_ignored(str(path), search(path, (key,)), "file without an image extension")
        elif os.path.lexists(path):
            add(path)
        elif glob.has_magic(str(pattern)):
            matches = [Path(match) for match in sorted(glob.glob(str(pattern), recursive=True))]
            images_matched = [m for m in matches if not m.is_dir() and m.suffix.lower() in IMAGE_EXTENSIONS]
            if not images_matched:
                skipped.append(SkippedInput(f"{pattern}: no image files match"))
            for match in images_matched:
                add(match)
            report_ignored(str(pattern), [m for m in matches if m not in images_matched],
                           "match that is a folder or has no image extension")
        else:
            skipped.append(SkippedInput(f"{pattern}: no such file or folder"))
    for key, paths in copies.items():
        shown = ", ".join(str(path) for path in paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
        leads = "path leads to the same file, skipped as a duplicate" if len(paths) == 1 else \
            "paths lead to the same file, skipped as duplicates"
        skipped.append(SkippedInput(f"{first_path[key]}: predicted once; {len(paths)} other {leads}: {shown}",
                                    failed=False))
    return found, skipped


def read_files_from(list_file: str | Path, path_column: str | None = None) -> list[str]:
    """The paths listed in ``list_file``: a text file (one path a line; blank lines and lines starting
    with ``#`` are skipped), or a ``.csv``/``.parquet`` table whose ``path_column`` (default: the first
    of ``image``, ``path``) holds them. A relative path is relative to the list's folder; URIs are
    kept as they are, in the list's order. FashionlensError naming the file otherwise.
    """
    list_file = Path(list_file)
    if not list_file.is_file():
        raise FashionlensError(f"--files-from {list_file}: no such file")
    suffix = list_file.suffix.lower()
    try:
        if suffix in (".csv", ".parquet"):
            entries = _table_column(list_file, suffix, path_column)
        else:
            if path_column is not None:
                raise FashionlensError(f"--path-column {path_column}: {list_file} is a text file of paths, one a "
                                       f"line; --path-column names a column of a .csv or .parquet list")
            text = list_file.read_text(encoding="utf-8")
            entries = [line.strip() for line in text.splitlines()]
            entries = [entry for entry in entries if entry and not entry.startswith("#")]
    except UnicodeDecodeError as error:
        raise FashionlensError(f"--files-from {list_file}: not UTF-8 text (byte {error.start}); a text list "
                               f"holds one path a line") from None
    except OSError as error:
        raise FashionlensError(f"--files-from {list_file}: cannot read it ({error.strerror})") from None
    base = list_file.parent
    return [entry if is_uri(entry) or os.path.isabs(entry) else str(base / entry) for entry in entries]


def _table_column(list_file: Path, suffix: str, path_column: str | None) -> list[str]:
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    try:
        if suffix == ".csv":
            # Every column as text: a path column of digits ("0001") must not become numbers.
            with pacsv.open_csv(list_file) as reader:  # reads the first block only
                names = reader.schema.names
            table = pacsv.read_csv(list_file, convert_options=pacsv.ConvertOptions(
                column_types={name: pa.string() for name in names}))
        else:
            table = pq.read_table(list_file)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
        raise FashionlensError(f"--files-from {list_file}: cannot read it as {suffix[1:].upper()} ({error})") from None
    wanted = [path_column] if path_column is not None else list(PATH_COLUMNS)
    column = next((name for name in wanted if name in table.column_names), None)
    if column is None:
        raise FashionlensError(f"--files-from {list_file}: no column {' or '.join(repr(n) for n in wanted)} (it has "
                               f"{', '.join(table.column_names) or 'none'}); name the column of paths with "
                               f"--path-column")
    values = table.column(column).to_pylist()
    return [str(value).strip() for value in values if value is not None and str(value).strip()]


def gather_inputs(patterns: Sequence[str | Path], files_from: str | Path | None = None,
                  path_column: str | None = None) -> tuple[list[str | Path], list[SkippedInput]]:
    """The photos of a batch command: :func:`collect_image_paths` of ``patterns``, then the entries of
    ``files_from`` (:func:`read_files_from`), each file once (an entry leading to a file already found
    is reported as a duplicate). List entries are not opened here: one that is missing or unreadable
    becomes an error naming it when its turn comes, and the run goes on."""
    found, skipped = collect_image_paths(patterns)
    paths: list[str | Path] = list(found)
    if files_from is None:
        return paths, skipped
    seen = {resolved_file(path): str(path) for path in found}
    duplicates = 0
    for entry in read_files_from(files_from, path_column):
        key = resolved_file(entry)
        if key in seen:
            duplicates += 1
            continue
        seen[key] = entry
        paths.append(entry)
    if duplicates:
        skipped.append(SkippedInput(f"--files-from {files_from}: {duplicates} "
                                    f"{'entry leads' if duplicates == 1 else 'entries lead'} to a photo listed "
                                    f"already, predicted once", failed=False))
    return paths, skipped


def photos_of(args) -> tuple[list[str | Path], list[SkippedInput]] | None:
    """``predict``'s and ``embed``'s photos (:func:`gather_inputs` of the arguments that
    :func:`add_input_arguments` adds), each problem said on stderr; ``None``, after one error line, when
    the inputs cannot be read or hold no photo."""
    try:
        paths, problems = gather_inputs(args.paths, getattr(args, "files_from", None),
                                        getattr(args, "path_column", None))
    except FashionlensError as error:
        print(f"fashionlens: error: {error}", file=sys.stderr)
        return None
    for problem in problems:
        print(f"fashionlens: {problem}", file=sys.stderr)
    if not paths:
        print("fashionlens: error: no images found (give image files, folders, globs or --files-from LIST; "
              "extensions: " + ", ".join(sorted(IMAGE_EXTENSIONS)) + ")", file=sys.stderr)
        return None
    return paths, problems


def add_input_arguments(parser) -> None:
    """The inputs of ``predict`` and ``embed``: photos, folders and globs, and ``--files-from``."""
    parser.add_argument("paths", nargs="*", help="image files, folders (recursive) or globs")
    parser.add_argument("--files-from", type=Path, default=None, metavar="LIST",
                        help="also the photos listed in LIST: a text file (one path or URI a line) or a .csv/.parquet "
                             "table; relative paths are relative to LIST's folder; URIs (s3://, gs://, https://) are "
                             "read through fsspec")
    parser.add_argument("--path-column", default=None, metavar="NAME",
                        help=f"--files-from .csv/.parquet: the column of paths (default: {' or '.join(PATH_COLUMNS)})")
