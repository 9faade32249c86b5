"""`fashionlens predict` at catalogue size: workers, sharded Parquet that resumes, ranks that split the photos."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from fashionlens.cli import main
from fashionlens.predictions import OutputError, ShardWriter, written_files

REPO = Path(__file__).resolve().parents[1]
PHOTOS = sorted((REPO / "examples" / "clothing-attributes-mini" / "images").glob("*.jpg"))[:12]


@pytest.fixture(scope="module")
def style_dir(tmp_path_factory) -> Path:
    from tiny_models import style_model_dir

    return style_model_dir(tmp_path_factory.mktemp("style") / "model")


def _rows(folder: Path) -> list[str]:
    return [path for shard in sorted(folder.glob("part-*.parquet")) for path in pq.read_table(shard)
            .column("path").to_pylist()]


def test_parquet_output_is_one_row_per_photo_and_a_rerun_skips_what_is_written(style_dir, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    for photo in PHOTOS:
        shutil.copy(photo, folder / photo.name)
    out = tmp_path / "preds.parquet"
    assert main(["predict", str(style_dir), str(folder), "--out", str(out), "--workers", "2",
                 "--batch-size", "5"]) == 0
    rows = _rows(out)
    assert sorted(Path(p).name for p in rows) == sorted(p.name for p in PHOTOS)
    table = pq.read_table(next(out.glob("part-*.parquet")))
    assert {"path", "model", "task", "labels", "scores", "predicted", "width", "height"} <= set(table.column_names)
    first = table.to_pylist()[0]
    assert first["task"] == "style" and len(first["labels"]) == 5 and first["width"] > 0
    capsys.readouterr()
    # A rerun predicts nothing again; new photos only are added.
    shutil.copy(PHOTOS[0], folder / "extra.jpg")
    assert main(["predict", str(style_dir), str(folder), "--out", str(out), "--workers", "0"]) == 0
    err = capsys.readouterr().err
    assert f"{len(PHOTOS)} photos already predicted; 1 to go" in err
    rows = _rows(out)
    assert len(rows) == len(set(rows)) == len(PHOTOS) + 1


@pytest.mark.parametrize(("cores", "gpu", "workers"), [(1, False, 0), (2, False, 0), (4, False, 2), (2, True, 1),
                                                     (16, True, 8)])
def test_predict_decodes_in_the_main_process_only_on_a_small_cpu(monkeypatch, cores, gpu, workers):
    import torch

    from fashionlens import config

    monkeypatch.setattr(config, "cpu_cores", lambda: cores)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    assert config.default_predict_workers() == workers


RECORD = {"kind": "predictions", "model": "m", "model_sha256": "0" * 64, "top_k": 5, "threshold": "auto"}


def test_a_crash_mid_shard_leaves_only_complete_shards(tmp_path):
    writer = ShardWriter(tmp_path, RECORD, rows_per_shard=2)
    for index in range(3):
        writer.add({"path": f"p{index}.jpg", "file": f"/photos/p{index}.jpg", "task": "style"})
    # The third row is in memory only: a crash now loses it, and nothing half-written is on disk.
    writer.close()
    (tmp_path / ".part-000-00001.parquet.abc.tmp").write_bytes(b"PAR1 half a file")
    assert written_files(tmp_path) == {"/photos/p0.jpg", "/photos/p1.jpg"}
    assert ShardWriter(tmp_path, RECORD).done == {"/photos/p0.jpg", "/photos/p1.jpg"}


def test_an_unreadable_shard_is_refused_never_renamed(tmp_path):
    """Issue 27 item 3: an unreadable shard used to be renamed to .bad and its photos predicted again;
    fashionlens writes shards whole, so an unreadable one is someone else's: refused, left as it is."""
    ShardWriter(tmp_path, RECORD).close()
    (tmp_path / "part-000-00009.parquet").write_bytes(b"not parquet")
    with pytest.raises(OutputError, match=r"part-000-00009.parquet: cannot read it as a fashionlens shard .*"
                                          r"something else wrote or changed it: move it out of .* and rerun"):
        ShardWriter(tmp_path, RECORD)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock-000", "_fashionlens.json", "part-000-00009.parquet"]


@pytest.mark.slow
def test_two_processes_write_every_photo_exactly_once_with_the_local_commands_rows(style_dir, tmp_path):
    out = tmp_path / "preds.parquet"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run([sys.executable, "-m", "fashionlens.cli", "predict", str(style_dir), *map(str, PHOTOS),
                           "--out", str(out), "--devices", "2", "--accelerator", "cpu", "--workers", "0",
                           "--batch-size", "4"], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = _rows(out)
    assert sorted(rows) == sorted(str(p) for p in PHOTOS)  # every photo, none twice
    ranks = {shard.name.split("-")[1] for shard in out.glob("part-*.parquet")}
    assert ranks == {"000", "001"}
    # The same rows as this machine's one-process command (issue 29: the paths give identical rows).
    local = tmp_path / "local.parquet"
    assert main(["predict", str(style_dir), *map(str, PHOTOS), "--out", str(local), "--workers", "0"]) == 0
    by_path = {row["path"]: row for row in pq.read_table(local).to_pylist()}
    for row in pq.read_table(out).to_pylist():
        other = by_path[row["path"]]
        assert row["labels"] == other["labels"] and row["predicted"] == other["predicted"]
        assert max(abs(a - b) for a, b in zip(row["scores"], other["scores"])) < 1e-6


def test_threshold_auto_marks_labels_against_their_calibrated_thresholds(style_dir, tmp_path, capsys):
    from fashionlens.inference import load

    calibrated = tmp_path / "model"
    shutil.copytree(style_dir, calibrated)
    names = json.loads((calibrated / "labels.json").read_text())["label_names"]
    scores = {label.name: label.score for label in load(calibrated)(PHOTOS[0]).labels}
    # Thresholds just below the photo's score for the first label, just above for the others.
    cuts = {name: (scores[name] - 1e-4 if i == 0 else min(1.0, scores[name] + 1e-4)) for i, name in enumerate(names)}
    (calibrated / "thresholds.json").write_text(json.dumps({"method": "f1", "global_threshold": 0.5,
                                                            "thresholds": cuts, "fallback": []}))
    result = load(calibrated)(PHOTOS[0])
    assert [label.name for label in result.predicted] == [names[0]]
    assert all(label.threshold == pytest.approx(cuts[label.name]) for label in result.labels)
    assert main(["predict", str(calibrated), str(PHOTOS[0]), "--json"]) == 0
    line = json.loads(capsys.readouterr().out.splitlines()[0])
    assert line["predicted"] == [names[0]]
    # A number overrides: one cut-off for all, labels below it left out.
    fixed = load(calibrated)(PHOTOS[0], threshold=0.0)
    assert len(fixed.labels) == len(names) and all(label.predicted for label in fixed.labels)
    (calibrated / "thresholds.json").write_text(json.dumps({"thresholds": {names[0]: 2.0}}))
    from fashionlens.errors import ModelDirError

    with pytest.raises(ModelDirError, match=r"thresholds.json: thresholds: no threshold for label"):
        load(calibrated)


@pytest.mark.slow
def test_the_batch_commands_keep_freed_memory_for_reuse():
    """A forward pass whose activations (77 MB) are above any mmap threshold: from the second batch
    on, tuned, the kernel faults in no new pages in most batches (now and then the heap grows by a
    block: the median); by default it faults them all in every batch."""
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc only")
    script = """
import resource, sys, torch
from fashionlens.predictions import reuse_freed_memory
took = reuse_freed_memory() if sys.argv[1] == "tuned" else None
layer = torch.nn.Sequential(torch.nn.Conv2d(16, 96, 1), torch.nn.ReLU(), torch.nn.Conv2d(96, 16, 1)).eval()
batch = torch.ones(16, 16, 112, 112)
faults = []
with torch.inference_mode():
    for _ in range(6):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        layer(batch)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(took, sorted(faults[1:])[2], min(faults[1:]))
"""
    runs = {}
    for mode in ("tuned", "default"):
        done = subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONPATH": str(REPO / "src")})
        runs[mode] = done.stdout.split()
    assert runs["tuned"][0] == "True" and int(runs["tuned"][1]) < 1_000
    assert int(runs["default"][2]) > 40_000  # 77 MB + 77 MB of 4 KiB pages, every batch


@pytest.mark.parametrize("workers", [0, 2])
def test_the_loader_gives_predictors_own_preprocessing_and_an_error_row(style_dir, tmp_path, workers):
    """Resized per photo (uint8), normalised per batch: the same floats as ``Predictor.preprocess``."""
    import torch

    from fashionlens.predictions import loader
    from fashionlens.inference import load, to_uint8_chw

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(PHOTOS[0].read_bytes()[:200])
    paths = [*PHOTOS[:4], broken, PHOTOS[4]]
    predictor = load(style_dir)
    batches = list(loader(paths, predictor, batch_size=4, workers=workers))
    assert [len(batch["path"]) for batch in batches] == [4, 2]
    images = torch.cat([batch["image"] for batch in batches])
    errors = [error for batch in batches for error in batch["error"]]
    assert images.dtype == torch.float32 and tuple(images.shape[1:]) == (3, predictor.image_size, predictor.image_size)
    for row, path in enumerate(paths):
        if path == broken:
            assert str(broken) in errors[row]
            continue
        photo = to_uint8_chw(path)[0]
        assert errors[row] == ""
        assert torch.equal(images[row], predictor.preprocess(photo))
        assert [int(batches[row // 4][key][row % 4]) for key in ("width", "height")] == [photo.shape[2], photo.shape[1]]


# ------------------------------------------------- issue 27 item 3: an --out folder never mixes, duplicates or loses


def _predict_into(model: Path, out: Path, *inputs, extra=()) -> int:
    return main(["predict", str(model), *map(str, inputs), "--out", str(out), "--workers", "0", *extra])


@pytest.fixture(scope="module")
def other_dir(tmp_path_factory) -> Path:
    from tiny_models import clothing_model_dir

    return clothing_model_dir(tmp_path_factory.mktemp("other") / "other")


def test_a_folder_of_another_models_predictions_or_options_is_refused(style_dir, other_dir, tmp_path, capsys):
    """It used to be resumed as if done ("12 photos already predicted; 0 to go": the rows of the wrong model)."""
    from fashionlens.fileio import weights_sha256

    out = tmp_path / "preds.parquet"
    assert _predict_into(style_dir, out, *PHOTOS[:3]) == 0
    sha, other_sha = weights_sha256(style_dir)[:12], weights_sha256(other_dir)[:12]
    capsys.readouterr()
    assert _predict_into(other_dir, out, *PHOTOS[:3]) == 2
    assert capsys.readouterr().err == (
        f"fashionlens: error: {out}: holds the predictions of model (weights {sha}, top_k 5, threshold auto), not of "
        f"other (weights {other_sha}, top_k 5, threshold auto): give each model and option its own --out folder\n")
    assert _predict_into(style_dir, out, *PHOTOS[:3], extra=["--top-k", "3"]) == 2
    assert "not of model (weights " + sha + ", top_k 3, threshold auto)" in capsys.readouterr().err
    assert len(_rows(out)) == 3


def test_the_same_photos_under_another_path_are_not_predicted_again(style_dir, tmp_path, capsys, monkeypatch):
    """It used to predict them again: 600 rows for 300 files."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for photo in PHOTOS[:4]:
        shutil.copy(photo, folder / photo.name)
    (tmp_path / "link").symlink_to(folder)
    out = tmp_path / "preds.parquet"
    assert _predict_into(style_dir, out, folder) == 0
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert _predict_into(style_dir, out, "link", f"photos/../photos/{PHOTOS[0].name}") == 0
    assert "4 photos already predicted; 0 to go" in capsys.readouterr().err
    assert len(_rows(out)) == 4


def test_a_second_run_into_the_same_folder_is_refused_while_the_first_writes(style_dir, tmp_path, capsys):
    """Two runs used to both succeed, one overwriting the other's part-000-00000."""
    from fashionlens.cli_predict import _output_record

    out = tmp_path / "preds.parquet"
    first = ShardWriter(out, _output_record(style_dir, "model", 5, "auto"))  # a run in progress
    try:
        assert _predict_into(style_dir, out, *PHOTOS[:2]) == 2
        assert capsys.readouterr().err == (
            f"fashionlens: error: {out}: another fashionlens run is writing there (rank 0); wait for it to finish "
            f"(a rerun then skips what it wrote) or give another --out\n")
    finally:
        first.close()
    assert _predict_into(style_dir, out, *PHOTOS[:2]) == 0
    assert len(_rows(out)) == 2


def test_a_folder_holding_files_fashionlens_did_not_write_is_refused_untouched(style_dir, tmp_path, capsys):
    """A Spark output's Parquet file used to be renamed to .bad."""
    out = tmp_path / "spark.parquet"
    out.mkdir()
    (out / "_SUCCESS").write_bytes(b"")
    pq.write_table(pq.read_table(next(iter([_spark_like(tmp_path)]))), out / "part-00000-3f2a.snappy.parquet")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert _predict_into(style_dir, out, *PHOTOS[:2]) == 2
    assert capsys.readouterr().err == (
        f"fashionlens: error: {out}: holds _SUCCESS, part-00000-3f2a.snappy.parquet, which fashionlens did not write "
        f"(an output folder holds only _fashionlens.json and part-RRR-NNNNN.parquet shards): give --out a new "
        f"folder\n")
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != ".lock-000"} == before


def _spark_like(tmp_path: Path) -> Path:
    import pyarrow as pa

    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"path": ["x.jpg"], "label": ["dress"]}), path)
    return path


def test_a_full_disk_keeps_the_shards_written_and_says_where_it_stopped(style_dir, tmp_path, capsys, monkeypatch):
    """Every row computed in the run used to be thrown away (a traceback); a rerun now finishes the job."""
    import errno

    from fashionlens import predictions

    monkeypatch.setattr(predictions, "ROWS_PER_SHARD", 4)
    real_write, calls = predictions.atomic_write_bytes, []

    def write(path, data):
        calls.append(path.name)
        if len(calls) == 2:  # the first shard, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(path, data)

    monkeypatch.setattr(predictions, "atomic_write_bytes", write)
    out = tmp_path / "preds.parquet"
    photos = sorted(PHOTOS[:10])
    assert _predict_into(style_dir, out, *photos, extra=["--batch-size", "2"]) == 1
    err = capsys.readouterr().err
    assert (f"fashionlens: error: {out / 'part-000-00001.parquet'}: cannot write it (the disk is full); stopped at "
            f"{photos[4]}: the 4 rows written before it are kept, its 4 rows are not; free space and rerun the "
            f"same command to predict the rest\n") in err
    assert sorted(_rows(out)) == [str(p) for p in photos[:4]]
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.setattr(predictions, "atomic_write_bytes", real_write)
    assert _predict_into(style_dir, out, *photos) == 0
    assert "4 photos already predicted; 6 to go" in capsys.readouterr().err
    assert sorted(_rows(out)) == [str(p) for p in photos]


def test_a_full_disk_under_csv_keeps_whole_rows_and_says_where_it_stopped(style_dir, tmp_path, capsys, monkeypatch):
    """--csv used to end in a traceback with a cut last line (45 of 100 rows)."""
    import builtins
    import csv as csv_module
    import errno

    from fashionlens import cli_predict

    class FillsUp:
        def __init__(self, stream):
            self.stream, self.writes = stream, 0

        def write(self, text):
            self.writes += 1
            if self.writes == 3:  # the header, the first batch, then the disk is full halfway through a batch
                self.stream.write(text[: len(text) // 2])
                self.stream.flush()
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.stream.write(text)

        def __getattr__(self, name):
            return getattr(self.stream, name)

    def fake_open(path, mode="r", *args, **kwargs):
        stream = builtins.open(path, mode, *args, **kwargs)
        return FillsUp(stream) if mode == "w" else stream

    monkeypatch.setattr(cli_predict, "open", fake_open, raising=False)
    table = tmp_path / "preds.csv"
    photos = sorted(PHOTOS[:6])
    assert main(["predict", str(style_dir), *map(str, photos), "--csv", str(table), "--workers", "0",
                 "--batch-size", "2"]) == 1
    assert capsys.readouterr().err.endswith(
        f"fashionlens: error: --csv {table}: cannot write it (the disk is full); stopped at {photos[2]}: the file "
        f"keeps the 2 rows before it\n")
    rows = list(csv_module.reader(table.open(encoding="utf-8")))
    assert [row[0] for row in rows[1:]] == [str(p) for p in photos[:2]] and len(rows[1]) == len(rows[0])


# -------------------------------------------------------------- issue 29: a list of photos, paths or URIs


def _scores(folder: Path) -> dict[str, list[float]]:
    return {Path(row["path"]).name: row["scores"] for shard in sorted(folder.glob("part-*.parquet"))
            for row in pq.read_table(shard).to_pylist()}


def test_files_from_a_text_csv_or_parquet_list_with_uris_gives_the_folders_scores(style_dir, tmp_path, capsys):
    import fsspec
    import pyarrow as pa

    folder = tmp_path / "photos"
    folder.mkdir()
    for photo in PHOTOS[:6]:
        shutil.copy(photo, folder / photo.name)
    reference = tmp_path / "reference.parquet"
    assert _predict_into(style_dir, reference, folder) == 0
    memory = fsspec.filesystem("memory")
    memory.pipe(f"/h4-test/{PHOTOS[4].name}", PHOTOS[4].read_bytes())
    names = [p.name for p in PHOTOS[:6]]
    lists = tmp_path / "lists"
    lists.mkdir()
    # Relative to the list's folder, a comment, a blank line, an entry twice, a missing file, and two URIs.
    (lists / "photos.txt").write_text(
        f"# catalogue\n../photos/{names[0]}\n\n{folder / names[1]}\n../photos/{names[0]}\n../photos/missing.jpg\n"
        f"{folder / names[2]}\n{folder / names[3]}\nmemory://h4-test/{names[4]}\nfile://{folder / names[5]}\n")
    out = tmp_path / "listed.parquet"
    capsys.readouterr()
    assert main(["predict", str(style_dir), "--files-from", str(lists / "photos.txt"), "--out", str(out),
                 "--workers", "0"]) == 1  # the missing file
    err = capsys.readouterr().err
    assert f"fashionlens: skipped {lists / '../photos/missing.jpg'}: image file not found (no such file)\n" in err
    assert f"fashionlens: --files-from {lists / 'photos.txt'}: 1 entry leads to a photo listed already" in err
    assert "fashionlens: 1 of 8 inputs failed, 7 predicted" not in err and "1 of 7 inputs failed, 6 predicted" in err
    assert _scores(out) == _scores(reference)
    rows = {row["path"]: row["file"] for row in pq.read_table(out).to_pylist()}
    assert rows[f"memory://h4-test/{names[4]}"] == f"memory://h4-test/{names[4]}"
    assert rows[str(lists / f"../photos/{names[0]}")] == str(folder / names[0])
    # A CSV's "image" column, a Parquet file's column named with --path-column.
    (lists / "photos.csv").write_text("image,label\n" + "".join(f"{folder / n},x\n" for n in names[:3]))
    pq.write_table(pa.table({"uri": [str(folder / n) for n in names[3:]]}), lists / "photos.parquet")
    for listing, extra in ((lists / "photos.csv", []), (lists / "photos.parquet", ["--path-column", "uri"])):
        out = tmp_path / f"{listing.suffix[1:]}.parquet"
        assert main(["predict", str(style_dir), "--files-from", str(listing), "--out", str(out), "--workers", "0",
                     *extra]) == 0
    assert {**_scores(tmp_path / "csv.parquet"), **_scores(tmp_path / "parquet.parquet")} == _scores(reference)


def test_a_list_without_the_path_column_or_an_unknown_uri_says_what_to_do(style_dir, tmp_path, capsys):
    listing = tmp_path / "photos.csv"
    listing.write_text("id,label\n1,dress\n")
    assert main(["predict", str(style_dir), "--files-from", str(listing)]) == 2
    assert capsys.readouterr().err == (
        f"fashionlens: error: --files-from {listing}: no column 'image' or 'path' (it has id, label); name the column "
        f"of paths with --path-column\n")
    assert main(["predict", str(style_dir), "--files-from", str(tmp_path / "nope.txt")]) == 2
    assert capsys.readouterr().err == f"fashionlens: error: --files-from {tmp_path / 'nope.txt'}: no such file\n"
    listing = tmp_path / "photos.txt"
    listing.write_text(f"nosuchprotocol://bucket/a.jpg\n{PHOTOS[0]}\n")
    assert main(["predict", str(style_dir), "--files-from", str(listing), "--json", "--workers", "0"]) == 1
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 1
    assert "fashionlens: skipped nosuchprotocol://bucket/a.jpg: cannot read it (ValueError: Protocol not known: " \
           "nosuchprotocol)" in err


def test_embed_takes_a_list_too(style_dir, tmp_path, capsys):
    listing = tmp_path / "photos.txt"
    listing.write_text("".join(f"{p}\n" for p in PHOTOS[:3]))
    out = tmp_path / "vectors.parquet"
    assert main(["embed", str(style_dir), str(PHOTOS[0]), "--files-from", str(listing), "--out", str(out),
                 "--workers", "0"]) == 0
    assert sorted(_rows(out)) == sorted(str(p) for p in PHOTOS[:3])


# -------------------------------------------------------------------------------- issue 29: Ray Data


def test_the_ray_callable_gives_predicts_rows_and_an_error_row_per_bad_photo(style_dir, tmp_path):
    """What ``Dataset.map_batches(PredictPhotos, ...)`` maps each batch to, called here without Ray."""
    import numpy as np

    from fashionlens.predictions import PREDICTION_SCHEMA, PredictPhotos

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(PHOTOS[0].read_bytes()[:300])
    out = tmp_path / "preds.parquet"
    assert _predict_into(style_dir, out, *PHOTOS[:3]) == 0
    table = PredictPhotos(str(style_dir), model_name="model")(
        {"path": np.array([str(PHOTOS[0]), str(broken), str(PHOTOS[1]), str(tmp_path / "gone.jpg"), str(PHOTOS[2])],
                          dtype=object)})
    assert table.schema == PREDICTION_SCHEMA.append(pa_field("error"))
    rows = table.to_pylist()
    assert [row["error"] is None for row in rows] == [True, False, True, False, True]
    assert rows[1]["error"].startswith(f"{broken}: corrupt or truncated image")
    assert rows[3] == {**{name: None for name in table.column_names}, "path": str(tmp_path / "gone.jpg"),
                       "error": f"{tmp_path / 'gone.jpg'}: image file not found (no such file)"}
    local = {row["path"]: row for row in pq.read_table(out).to_pylist()}
    for row in (rows[0], rows[2], rows[4]):
        assert {**row, "error": None} == {**local[row["path"]], "error": None}
    threaded = PredictPhotos(str(style_dir), model_name="model", decode_threads=3)
    assert threaded({"path": np.array([row["path"] for row in rows], dtype=object)}).to_pylist() == rows


def pa_field(name: str):
    import pyarrow as pa

    return pa.field(name, pa.string())


@pytest.mark.slow
def test_ray_data_writes_the_local_commands_rows_every_photo_once(shared_data, tmp_path, capsys):
    """``predict --engine ray`` on a local Ray instance (2 CPUs, no network) against the local command,
    on real catalogue photos, half of them already predicted by the local command (the same folder)."""
    ray = pytest.importorskip("ray")
    photos = sorted((shared_data / "clothing-dataset-small" / "test").rglob("*.jpg"))[::20][:16]
    assert len(photos) == 16
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(photos[0].read_bytes()[:300])
    listing = tmp_path / "photos.txt"
    listing.write_text("".join(f"{p}\n" for p in [*photos, broken, tmp_path / "gone.jpg"]))
    model = "garment-category-mnv2"
    local, mixed = tmp_path / "local.parquet", tmp_path / "mixed.parquet"
    assert main(["predict", model, "--files-from", str(listing), "--out", str(local), "--workers", "0"]) == 1
    assert main(["predict", model, *map(str, photos[:8]), "--out", str(mixed), "--workers", "0"]) == 0
    capsys.readouterr()
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        assert main(["predict", model, "--files-from", str(listing), "--out", str(mixed), "--engine", "ray",
                     "--ray-actors", "2", "--batch-size", "4"]) == 1
    finally:
        ray.shutdown()
    err = capsys.readouterr().err
    assert f"{mixed}: 8 photos already predicted; 10 to go" in err
    assert f"fashionlens: skipped {broken}: corrupt or truncated image" in err
    assert f"fashionlens: skipped {tmp_path / 'gone.jpg'}: image file not found (no such file)" in err
    assert "fashionlens: 2 of 18 inputs failed, 8 predicted" in err
    expected = {row["path"]: row for row in pq.read_table(local).to_pylist()}
    got = [row for shard in sorted(mixed.glob("part-*.parquet")) for row in pq.read_table(shard).to_pylist()]
    assert sorted(row["path"] for row in got) == sorted(str(p) for p in photos)  # every photo, exactly once
    for row in got:  # the same rows; scores within float32 rounding (other batch sizes, other processes)
        _assert_close(row, expected[row["path"]])


def _assert_close(got, expected, where="row"):
    """Equal, except floats within 1e-6; JSON text columns compared as what they hold."""
    if isinstance(got, str) and got[:1] in "[{" and got:
        got, expected = json.loads(got), json.loads(expected)
    if isinstance(got, dict):
        assert got.keys() == expected.keys(), where
        for key in got:
            _assert_close(got[key], expected[key], f"{where}.{key}")
    elif isinstance(got, list):
        assert len(got) == len(expected), where
        for index, (a, b) in enumerate(zip(got, expected)):
            _assert_close(a, b, f"{where}[{index}]")
    elif isinstance(got, float) and not isinstance(expected, bool):
        assert got == pytest.approx(expected, abs=1e-6), where
    else:
        assert got == expected, where
