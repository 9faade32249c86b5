"""`fashionlens compare`'s table: epochs to reach a target, worked out by hand."""

from __future__ import annotations

from fashionlens.compare import comparison_table


def _result(maps: list[float]) -> dict:
    metrics = {"mAP": maps[-1], "CF1": 50.0, "OF1": 60.0, "CF1_top3": 30.0, "OF1_top3": 40.0}
    return {"metrics": metrics, "history": [{"epoch": e, "mAP": m} for e, m in enumerate(maps)]}


def test_epochs_to_reach_90_percent_of_the_best_pretrained_variant():
    table = comparison_table({"linear-max": _result([40.0, 55.0, 60.0]), "mlgcn-onehot": _result([50.0, 54.0, 58.0]),
                              "linear-max-scratch": _result([20.0, 25.0, 30.0])}).splitlines()
    # Target = 0.9 * 60 = 54.0: linear after epoch 2 (55), mlgcn after epoch 2 (54 >= 54), scratch never.
    assert table[0].endswith("| epochs to mAP 54.0 |")
    assert table[2] == "| linear-max | 60.00 | 50.00 | 60.00 | 30.00 | 40.00 | 3 | 2 |"
    assert table[3].endswith("| 3 | 2 |")
    assert table[4].endswith("| 3 | never |")


def test_scratch_alone_has_no_target_column():
    table = comparison_table({"linear-max-scratch": _result([20.0, 32.0, 31.0])}).splitlines()
    assert "epochs to" not in table[0] and table[1] == "|---|---|---|---|---|---|---|"
    assert table[2] == "| linear-max-scratch | 31.00 | 50.00 | 60.00 | 30.00 | 40.00 | 2 |"
    assert comparison_table({"s": _result([20.0, 32.0])}, target=30.0).splitlines()[2].endswith("| 2 | 2 |")
