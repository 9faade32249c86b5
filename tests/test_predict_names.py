"""The text output names labels as JSON, CSV and Parquet do (issue 32: the text said `female`, the
files `gender_female`): the label's name, which --explain and the files take too."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import torch

from fashionlens.cli import main
from fashionlens.modeldir import save_model_dir

NAMES = ["gender_female", "gender_male", "pattern_floral"]
REPO = Path(__file__).resolve().parents[1]
PHOTO = sorted((REPO / "examples" / "clothing-attributes-mini" / "images").glob("*.jpg"))[0]


def test_text_json_and_csv_name_the_same_labels(tmp_path: Path, capsys):
    from fashionlens.models.mlgcn import build_style_model

    torch.manual_seed(0)
    config = {"task": "style", "backbone": "tf_efficientnet_lite0", "pretrained": "none", "pool": "max",
              "head": "linear", "num_labels": len(NAMES), "image_size": 32}
    model_dir = save_model_dir(tmp_path / "model", build_style_model(config), config,
                               {"label_names": NAMES, "display_names": ["female", "male", "floral pattern"]},
                               {"image_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3, "resize": "square"})
    common = ["predict", str(model_dir), str(PHOTO), "--top-k", "3", "--threshold", "0"]
    assert main(common) == 0
    text = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:4]]
    assert main(common + ["--json"]) == 0
    row = json.loads(capsys.readouterr().out.splitlines()[0])
    assert main(common + ["--csv", str(tmp_path / "out.csv")]) == 0
    with open(tmp_path / "out.csv", newline="") as handle:
        written = next(csv.DictReader(handle))
    assert sorted(text) == NAMES
    assert text == [label["name"] for label in row["labels"]] == [written[f"label_{k}"] for k in (1, 2, 3)]
    assert {label["display_name"] for label in row["labels"]} == {"female", "male", "floral pattern"}
