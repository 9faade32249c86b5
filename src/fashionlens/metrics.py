"""Evaluation metrics: multi-label (ML-GCN), DeepFashion category/attribute top-k, landmark error.

Pure functions. Every function accepts torch tensors (any device, any float dtype) or numpy arrays,
computes in float64 numpy, and returns plain Python numbers. Rates are in **percent**; landmark
errors are fractions of the image size (as DeepFashion reports them).

Conventions shared by the whole module
--------------------------------------
- **Undefined values.** A rate whose denominator is zero (no predicted positives, no ground-truth
  positives, no valid images) is ``0.0``, never NaN; the count keys (``num_samples``,
  ``num_classes_evaluated``, ``num_attribute_positives``, ...) say when that happened. Per-item
  dictionaries (``per_class_AP``) and per-landmark errors use ``None`` for "no data", because a
  ``0.0`` would read as a perfect landmark error.
- **Ties in a top-k.** When several scores tie at the k-th place, the lower column index wins
  (the order of a stable sort by descending score). The reference code uses ``torch.topk``, whose
  tie order is implementation-defined.
- **Ties in average precision.** Pessimistic: among samples with the same score, negatives rank
  before positives. The result is then independent of sample order. The ML-GCN reference uses
  ``torch.sort(descending=True)``, whose tie order is implementation-defined, so on tied scores it
  can differ from ours (upwards only: ours is the lower bound). The report's precision-recall
  curves (``report.precision_recall_curve``) rank ties the same way. Not torchmetrics' average
  precision: it groups tied scores into one threshold and has no mask for unknown labels.
- **Inputs are validated**: shapes, NaN scores, and label encodings (targets 0/1 with a separate
  mask; DeepFashion's raw 1/-1/0 must be converted to targets + mask first). Problems raise
  :class:`ValueError` naming the argument, the expected form and what was found.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fashionlens.vocabulary import ATTRIBUTE_TYPES, LANDMARK_NAMES

__all__ = [
    "ATTRIBUTE_TYPES",
    "LANDMARK_NAMES",
    "attribute_group_metrics",
    "deepfashion_metrics",
    "landmark_metrics",
    "multilabel_metrics",
    "normalized_error",
]

_TOP_K_MULTILABEL = 3
# Columns of the (classes x samples) block sorted at once in average precision: bounds the
# temporary memory to a few hundred MB on 40k x 1000 inputs.
_AP_BLOCK_ELEMENTS = 4_000_000


# --------------------------------------------------------------------------------------------
# input handling


def _to_numpy(x: Any, name: str) -> np.ndarray:
    """A torch tensor (any device / dtype) or array-like as a numpy array; floats become float64."""
    if x is None:
        raise ValueError(f"{name}: expected an array or tensor, found None")
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor without importing torch
        x = x.detach().cpu()
        if x.is_floating_point():
            x = x.double()
        x = x.numpy()
    arr = np.asarray(x)
    if arr.dtype == object:
        raise ValueError(f"{name}: expected a numeric array, found an array of Python objects")
    if np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64, copy=False)
    return arr


def _check_ndim(arr: np.ndarray, ndim: int, name: str, layout: str) -> None:
    if arr.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-d array {layout}, found shape {tuple(arr.shape)}")


def _check_same_shape(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{name_b}: expected the same shape as {name_a} {tuple(a.shape)}, found {tuple(b.shape)}"
        )


def _check_no_nan(arr: np.ndarray, name: str, where: np.ndarray | None = None) -> None:
    bad = np.isnan(arr)
    if where is not None:
        bad &= where
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{name}: expected finite scores, found NaN at index {first} ({int(bad.sum())} NaNs)")


def _binary(arr: np.ndarray, name: str, hint: str, where: np.ndarray | None = None) -> np.ndarray:
    """``arr`` as a bool array, after checking that it only holds 0/1 (where ``where`` is True)."""
    ok = (arr == 0) | (arr == 1)
    if where is not None:
        ok |= ~where
    if not ok.all():
        found = np.unique(arr[~ok])[:5].tolist()
        raise ValueError(f"{name}: expected only 0/1 values, found {found}. {hint}")
    return arr == 1


def _scores_targets_mask(scores: Any, targets: Any, mask: Any, names: tuple[str, str, str]):
    s_name, t_name, m_name = names
    s = _to_numpy(scores, s_name)
    _check_ndim(s, 2, s_name, "(samples, classes)")
    if not np.issubdtype(s.dtype, np.number) or np.issubdtype(s.dtype, np.complexfloating):
        raise ValueError(f"{s_name}: expected real-valued scores, found dtype {s.dtype}")
    s = s.astype(np.float64, copy=False)
    t = _to_numpy(targets, t_name)
    _check_same_shape(s, t, s_name, t_name)
    if mask is None:
        known = np.ones(s.shape, dtype=bool)
    else:
        m = _to_numpy(mask, m_name)
        _check_same_shape(s, m, s_name, m_name)
        known = _binary(m, m_name, "The mask is 1 where the label is known and 0 where it is unknown.")
    positive = _binary(
        t,
        t_name,
        "Targets are 1 (positive) / 0 (negative); mark unknown labels with the mask "
        "(DeepFashion's 1/-1/0 becomes targets=(x==1), mask=(x!=0)).",
        where=known,
    )
    _check_no_nan(s, s_name, where=known)
    nan = np.isnan(s)
    if nan.any():
        # Only unknown entries can be NaN here; they rank last in any top-k.
        s = np.where(nan, -np.inf, s)
    return s, positive & known, known


def _percent(numerator: float, denominator: float) -> float:
    return 100.0 * float(numerator) / float(denominator) if denominator > 0 else 0.0


def _f1(precision: float, recall: float) -> float:
    return 2.0 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def _topk_mask(scores: np.ndarray, k: int) -> np.ndarray:
    """Bool (N, C): True where a column is in its row's top ``k`` (k clipped to C).

    Ties at the k-th place go to the lower column index, so exactly min(k, C) entries per row are
    True. O(N*C) with ``np.partition``; no full sort.
    """
    n, c = scores.shape
    k = min(int(k), c)
    if k >= c:
        return np.ones((n, c), dtype=bool)
    if k <= 0:
        return np.zeros((n, c), dtype=bool)
    if k <= 8 and not np.isneginf(scores).any():
        # Small k (the usual 3 and 5): k passes of argmax, which returns the first (lowest-index)
        # maximum, so ties go to the lower index as documented. Much faster than a partition.
        selected = np.zeros((n, c), dtype=bool)
        remaining = scores.copy()
        rows = np.arange(n)
        for _ in range(k):
            best = np.argmax(remaining, axis=1)
            selected[rows, best] = True
            remaining[rows, best] = -np.inf
        return selected
    # NaNs are rejected before this point; -inf is a valid (lowest) score.
    kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1 : k]
    above = scores > kth
    tied = scores == kth
    room = k - above.sum(axis=1, keepdims=True)
    return above | (tied & (np.cumsum(tied, axis=1) <= room))


# --------------------------------------------------------------------------------------------
# multi-label (ML-GCN)


def _average_precision(scores: np.ndarray, positive: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Per-class AP as fractions, shape (C,); NaN where a class has no known positive."""
    n, c = scores.shape
    ap = np.full(c, np.nan)
    if n == 0:
        return ap
    block = max(1, _AP_BLOCK_ELEMENTS // n)
    for start in range(0, c, block):
        cols = slice(start, min(c, start + block))
        s = scores[:, cols].T
        p = positive[:, cols].T
        kn = known[:, cols].T
        # Any sort by descending score; ties are then resolved analytically, pessimistically:
        # a positive's rank counts every known negative scored >= its score (its whole tie group)
        # plus the positives up to itself. The precision at that positive is therefore
        # hits / (negatives through the end of its tie group + hits). Unknown entries are neither
        # negatives nor positives, so they drop out of both counts wherever they sort.
        order = np.argsort(-s, axis=-1)
        s_sorted = np.take_along_axis(s, order, axis=-1)
        p_sorted = np.take_along_axis(p, order, axis=-1)
        negative_sorted = np.take_along_axis(kn & ~p, order, axis=-1)
        hits = np.cumsum(p_sorted, axis=-1)
        negatives = np.cumsum(negative_sorted, axis=-1)
        width = s_sorted.shape[-1]
        group_ends = np.ones(s_sorted.shape, dtype=bool)
        group_ends[:, :-1] = s_sorted[:, 1:] != s_sorted[:, :-1]
        end_index = np.where(group_ends, np.arange(width), width)
        end_index = np.minimum.accumulate(end_index[:, ::-1], axis=-1)[:, ::-1]
        negatives_through_group = np.take_along_axis(negatives, end_index, axis=-1)
        precision_at = hits / np.maximum(hits + negatives_through_group, 1)
        n_pos = p_sorted.sum(axis=-1)
        sum_prec = np.where(p_sorted, precision_at, 0.0).sum(axis=-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            ap[cols] = np.where(n_pos > 0, sum_prec / n_pos, np.nan)
    return ap


def _thresholded(predicted: np.ndarray, positive: np.ndarray, suffix: str) -> dict[str, float]:
    """ML-GCN's CP/CR/CF1/OP/OR/OF1 (Chen et al. 2019, Sec. 4.1) from bool (N, C) arrays."""
    nc = (predicted & positive).sum(axis=0).astype(np.float64)
    np_ = predicted.sum(axis=0).astype(np.float64)
    ng = positive.sum(axis=0).astype(np.float64)
    evaluated = ng > 0
    if evaluated.any():
        cp = float(np.mean(nc[evaluated] / np.maximum(np_[evaluated], 1.0))) * 100.0
        cr = float(np.mean(nc[evaluated] / ng[evaluated])) * 100.0
    else:
        cp = cr = 0.0
    op = _percent(nc.sum(), np_.sum())
    or_ = _percent(nc.sum(), ng.sum())
    return {
        f"CP{suffix}": cp,
        f"CR{suffix}": cr,
        f"CF1{suffix}": _f1(cp, cr),
        f"OP{suffix}": op,
        f"OR{suffix}": or_,
        f"OF1{suffix}": _f1(op, or_),
    }


def multilabel_metrics(
    scores: Any,
    targets: Any,
    mask: Any = None,
    threshold: float = 0.0,
    label_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """mAP and the thresholded precision/recall/F1 family of ML-GCN (Chen et al., CVPR 2019).

    Args:
        scores: (N, C) logits (any monotone score works for mAP; the threshold applies to it as given).
        targets: (N, C), 1 positive / 0 negative. Values at unknown entries are ignored.
        mask: (N, C), 1 where the label is known, 0 where unknown; ``None`` = all known. Unknown
            entries are removed from everything: AP rankings, Nc, Np and Ng.
        threshold: a label is predicted when its score is ``>= threshold`` (ML-GCN: logit >= 0).
        label_names: C names for ``per_class_AP``; default ``"0"``, ``"1"``, ...

    Returns a dict, rates in percent:

    - ``mAP``: per class, the known samples are ranked by score (descending; tied scores put
      negatives first, see the module docstring) and AP is the mean, over the positives, of the
      precision at each positive's rank. ``mAP`` is the mean over the classes with >= 1 known
      positive (``num_classes_evaluated``); 0.0 when there are none.
    - ``per_class_AP``: name -> AP percent, or ``None`` for a class without known positives.
    - ``CP``, ``CR``, ``CF1``, ``OP``, ``OR``, ``OF1``: with per class Nc (correct predicted
      positives), Np (predicted positives, 0 counted as 1) and Ng (positives),
      CP = mean Nc/Np and CR = mean Nc/Ng, both over the classes with Ng > 0;
      CF1 = 2·CP·CR/(CP+CR) (of the averages, not an average of per-class F1s);
      OP = ΣNc/ΣNp and OR = ΣNc/ΣNg, summed over all classes (false positives on a class without
      positives still lower OP); OF1 = 2·OP·OR/(OP+OR). A zero denominator gives 0.0.
      Difference from the reference: ML-GCN's ``util.py`` averages CP over *all* classes, so a
      class without positives adds a 0 to CP there; here it is left out of CP as of CR.
    - ``CP_top3`` ... ``OF1_top3``: the same, but a label is predicted only if it is among the 3
      highest scores of its sample AND its score >= threshold. As in the reference, the top 3 is
      taken over all C scores of the sample, unknown labels included (the model does not know which
      labels are unannotated); an unknown label in the top 3 is then not counted at all.
    - ``num_samples`` (N), ``num_classes_evaluated`` (classes with >= 1 known positive).
    """
    s, positive, known = _scores_targets_mask(scores, targets, mask, ("scores", "targets", "mask"))
    n, c = s.shape
    if label_names is None:
        names = [str(i) for i in range(c)]
    else:
        names = [str(name) for name in label_names]
        if len(names) != c:
            raise ValueError(f"label_names: expected {c} names (one per score column), found {len(names)}")

    ap = _average_precision(s, positive, known)
    evaluated = ~np.isnan(ap)
    result: dict[str, Any] = {
        "mAP": float(np.mean(ap[evaluated])) * 100.0 if evaluated.any() else 0.0,
    }
    over = (s >= threshold) & known
    result.update(_thresholded(over, positive, ""))
    result.update(_thresholded(over & _topk_mask(s, _TOP_K_MULTILABEL), positive, f"_top{_TOP_K_MULTILABEL}"))
    result["per_class_AP"] = {
        name: (float(a) * 100.0 if ok else None) for name, a, ok in zip(names, ap, evaluated)
    }
    result["num_samples"] = int(n)
    result["num_classes_evaluated"] = int(evaluated.sum())
    return result


# --------------------------------------------------------------------------------------------
# DeepFashion category and attributes


def _attribute_type_names(attr_types: Any, num_attributes: int) -> np.ndarray:
    """Map a per-attribute sequence of type names or DeepFashion ids 1..5 to an array of names."""
    if hasattr(attr_types, "detach"):
        attr_types = attr_types.detach().cpu().tolist()
    types = list(np.asarray(attr_types, dtype=object).reshape(-1)) if not isinstance(attr_types, str) else None
    if types is None or len(types) != num_attributes:
        found = "a string" if types is None else f"{len(types)} entries"
        raise ValueError(
            f"attr_types: expected one type per attribute ({num_attributes} entries: names in "
            f"{ATTRIBUTE_TYPES} or DeepFashion ids 1..5), found {found}"
        )
    names = []
    for i, t in enumerate(types):
        if isinstance(t, str):
            name = t.strip().lower()
            if name.isdigit():
                t = int(name)
            elif name in ATTRIBUTE_TYPES:
                names.append(name)
                continue
        if isinstance(t, (int, float, np.integer, np.floating)) and not isinstance(t, bool):
            if float(t).is_integer() and 1 <= int(t) <= len(ATTRIBUTE_TYPES):
                names.append(ATTRIBUTE_TYPES[int(t) - 1])
                continue
        raise ValueError(
            f"attr_types[{i}]: expected one of {ATTRIBUTE_TYPES} or an id 1..5, found {t!r}"
        )
    return np.array(names, dtype=object)


def _category_topk(category_logits: Any, category_targets: Any, ks: Sequence[int]) -> dict[str, Any]:
    logits = _to_numpy(category_logits, "category_logits")
    _check_ndim(logits, 2, "category_logits", "(images, categories)")
    logits = logits.astype(np.float64, copy=False)
    targets = _to_numpy(category_targets, "category_targets")
    _check_ndim(targets, 1, "category_targets", "(images,) of category indices")
    if targets.shape[0] != logits.shape[0]:
        raise ValueError(
            f"category_targets: expected {logits.shape[0]} indices (one per row of category_logits), "
            f"found {targets.shape[0]}"
        )
    if not np.issubdtype(targets.dtype, np.number) or not np.all(np.mod(targets, 1) == 0):
        raise ValueError("category_targets: expected integer category indices, found non-integer values")
    targets = targets.astype(np.int64)
    num_categories = logits.shape[1]
    bad = (targets < -1) | (targets >= num_categories)
    if bad.any():
        raise ValueError(
            f"category_targets: expected indices in 0..{num_categories - 1} (or -1 for 'no category'), "
            f"found {np.unique(targets[bad])[:5].tolist()}"
        )
    valid = targets >= 0
    logits, targets = logits[valid], targets[valid]
    _check_no_nan(logits, "category_logits")
    rows = np.arange(targets.shape[0])
    result: dict[str, Any] = {}
    for k in ks:
        hit = _topk_mask(logits, k)[rows, targets]
        result[f"category_top{k}"] = _percent(hit.sum(), hit.shape[0])
    result["num_category_images"] = int(valid.sum())
    return result


def _attribute_topk(
    attr_scores: Any,
    attr_targets: Any,
    attr_types: Any,
    ks: Sequence[int],
    attr_mask: Any,
    mmfashion_top: int,
) -> dict[str, Any]:
    s, positive, _ = _scores_targets_mask(
        attr_scores, attr_targets, attr_mask, ("attr_scores", "attr_targets", "attr_mask")
    )
    types = _attribute_type_names(attr_types, s.shape[1])
    result: dict[str, Any] = {}
    per_attribute_positives = positive.sum(axis=0)
    has_positive = per_attribute_positives > 0
    for k in ks:
        # All attributes ranked together (what the seed's table calls "all attributes").
        hits = _topk_mask(s, k) & positive
        result[f"attr_top{k}"] = _percent(hits.sum(), positive.sum())
        recall = hits.sum(axis=0)[has_positive] / per_attribute_positives[has_positive]
        result[f"attr_top{k}_mean_per_attribute"] = float(recall.mean()) * 100.0 if recall.size else 0.0
        best = np.sort(recall)[::-1][: min(mmfashion_top, recall.size)]
        result[f"attr_top{k}_mmfashion"] = float(best.mean()) * 100.0 if best.size else 0.0
        for name in ATTRIBUTE_TYPES:
            cols = types == name
            type_hits = _topk_mask(s[:, cols], k) & positive[:, cols]
            result[f"{name}_top{k}"] = _percent(type_hits.sum(), positive[:, cols].sum())
    result["num_attribute_images"] = int(s.shape[0])
    result["num_attribute_positives"] = int(positive.sum())
    return result


def deepfashion_metrics(
    category_logits: Any,
    category_targets: Any,
    attr_scores: Any,
    attr_targets: Any,
    attr_types: Any,
    ks: Sequence[int] = (3, 5),
    attr_mask: Any = None,
    mmfashion_top: int = 50,
) -> dict[str, Any]:
    """DeepFashion Category & Attribute benchmark: category top-k accuracy and attribute top-k recall.

    Pass ``None`` for the category pair, or for ``attr_scores``/``attr_targets``/``attr_types``, to
    evaluate only the other half.

    Args:
        category_logits: (N, K) category scores.
        category_targets: (N,) category indices; ``-1`` marks an image without a category and is
            left out (the sample dict's convention).
        attr_scores: (N, A) attribute scores (logits or probabilities: only their order matters).
        attr_targets: (N, A), 1 positive / 0 negative.
        attr_types: A entries, each a type name (texture, fabric, shape, part, style) or the
            DeepFashion type id 1..5 from ``list_attr_cloth.txt``.
        ks: the k values; k larger than a group's size is clipped to the group size.
        attr_mask: (N, A), 1 where known; unknown attributes are never positives (they can still
            occupy a top-k slot: the ranking is the model's, and it does not know the annotation).
        mmfashion_top: how many of the best per-attribute recalls ``*_mmfashion`` averages.

    Returns (percent), for each k in ``ks``:

    - ``category_top{k}``: share of the images with a category whose true category is among the
      k highest scores, pooled over all images (not a mean of batch means).
    - ``{type}_top{k}`` for the five types: the convention of Liu & Lu (ECCV 2018 workshop) and of
      the seed paper's table. Per image, the attributes of that type are ranked and the top k kept;
      recall = Σ_images |top-k ∩ positives| / Σ_images |positives| (pooled over images).
    - ``attr_top{k}``: the same, with all A attributes ranked together ("all attributes" row).
    - ``attr_top{k}_mean_per_attribute``: per attribute a, the share of the images where a is
      positive that also have a in their overall top k; mean over attributes with >= 1 positive.
    - ``attr_top{k}_mmfashion``: mmfashion's number: the same per-attribute recalls, mean of the
      best ``min(mmfashion_top, #attributes with a positive)`` only. It is NOT comparable with the
      seed's table (it discards the hard attributes); it is here to compare with mmfashion's logs.
    - ``num_category_images`` (images with a category), ``num_attribute_images``,
      ``num_attribute_positives``.
    """
    ks = tuple(int(k) for k in ks)
    if not ks or any(k < 1 for k in ks):
        raise ValueError(f"ks: expected positive integers such as (3, 5), found {ks}")
    if int(mmfashion_top) < 1:
        raise ValueError(f"mmfashion_top: expected a positive integer, found {mmfashion_top}")
    result: dict[str, Any] = {}
    if (category_logits is None) != (category_targets is None):
        raise ValueError("category_logits and category_targets: pass both or neither")
    if category_logits is not None:
        result.update(_category_topk(category_logits, category_targets, ks))
    attribute_args = (attr_scores, attr_targets, attr_types)
    if any(a is not None for a in attribute_args):
        if any(a is None for a in attribute_args):
            raise ValueError("attr_scores, attr_targets and attr_types: pass all three or none")
        result.update(_attribute_topk(attr_scores, attr_targets, attr_types, ks, attr_mask, int(mmfashion_top)))
    return result


def group_columns(attribute_types: Sequence[str], groups: Sequence[str]) -> dict[str, list[int]]:
    """Each group of "exactly one of these" attributes -> the indices of the attributes of that type."""
    return {group: [i for i, kind in enumerate(attribute_types) if kind == group] for group in groups}


def group_log_priors(counts: Sequence[int], groups: dict[str, Sequence[int]]) -> np.ndarray:
    """``log p(label | its group)`` from training counts, add-one smoothed (a label never seen in training
    keeps a finite prior), ``(A,)``; 0 for the labels of no group.

    Subtracted from the logits (Menon et al., "Long-tail learning via logit adjustment", ICLR 2021, Eq. 6
    with tau = 1), a group's argmax maximises the mean of the classes' recalls instead of the accuracy.
    """
    counts = np.asarray(counts, dtype=np.float64)
    log_prior = np.zeros_like(counts)
    for columns in groups.values():
        columns = np.asarray(columns, dtype=np.int64)
        smoothed = counts[columns] + 1.0
        log_prior[columns] = np.log(smoothed / smoothed.sum())
    return log_prior


def attribute_group_metrics(scores: Any, targets: Any, mask: Any, groups: dict[str, Sequence[int]],
                            label_names: Sequence[str], train_counts: Sequence[int] | None = None) -> dict[str, Any]:
    """Attribute groups of "exactly one of these" labels (DeepFashion-fine's texture, sleeve, ...):
    each photo's prediction in a group is its highest-scoring label there (ties: the lower index).
    With ``train_counts`` (training positives per label) the figures of the balanced decision are added
    as ``balanced_mean_class_accuracy`` and ``balanced_mean_group_accuracy``: the scores (logits)
    less :func:`group_log_priors` before the argmax.

    Args:
        scores, targets, mask: (N, A) as in :func:`multilabel_metrics`; a photo counts in a group
            when the group's labels are all known and exactly one is positive.
        groups: group name -> the column indices of its labels.
        label_names: the A label names.

    Returns (percent):

    - ``<group>_accuracy``: share of the photos counted in the group whose prediction is right
      (``None`` when the group has no such photo).
    - ``recall_<label>``: per label, the share of its positive photos predicted as that label;
      ``None`` when it has none.
    - ``mean_class_accuracy``: the mean of those recalls over the labels with a positive (the
      DeepFashion attribute prediction challenge's figure), ``mean_class_accuracy_classes`` how many
      labels that is (a label without a positive photo is left out); ``mean_group_accuracy`` the mean
      of the group accuracies.
    """
    scores, targets, mask = _scores_targets_mask(scores, targets, mask, ("scores", "targets", "mask"))
    if len(label_names) != scores.shape[1]:
        raise ValueError(f"label_names: expected {scores.shape[1]} names, found {len(label_names)}")
    result: dict[str, Any] = {}
    recalls: list[float] = []
    accuracies: list[float] = []
    for group, columns in groups.items():
        columns = np.asarray(columns, dtype=np.int64)
        known = mask[:, columns].all(axis=1) & (targets[:, columns].sum(axis=1) == 1)
        truth = targets[known][:, columns].argmax(axis=1)
        predicted = scores[known][:, columns].argmax(axis=1)
        result[f"{group}_accuracy"] = _percent((truth == predicted).sum(), known.sum()) if known.any() else None
        if known.any():
            accuracies.append(result[f"{group}_accuracy"])
        for position, column in enumerate(columns):
            positives = truth == position
            recall = _percent((predicted[positives] == position).sum(), positives.sum()) if positives.any() else None
            result[f"recall_{label_names[column]}"] = recall
            if recall is not None:
                recalls.append(recall)
    result["mean_class_accuracy"] = float(np.mean(recalls)) if recalls else 0.0
    result["mean_class_accuracy_classes"] = len(recalls)
    result["mean_group_accuracy"] = float(np.mean(accuracies)) if accuracies else 0.0
    if train_counts is not None:
        balanced = attribute_group_metrics(scores - group_log_priors(train_counts, groups), targets, mask, groups,
                                           label_names)
        result["balanced_mean_class_accuracy"] = balanced["mean_class_accuracy"]
        result["balanced_mean_group_accuracy"] = balanced["mean_group_accuracy"]
    return result


# --------------------------------------------------------------------------------------------
# landmarks


def _landmark_distances(pred_xy: Any, true_xy: Any, visibility: Any, image_sizes: Any):
    """(N, K) normalised distances and the (N, K) bool 'visible' mask, after validating inputs."""
    pred = _to_numpy(pred_xy, "pred_xy")
    true = _to_numpy(true_xy, "true_xy")
    if pred.ndim != 3 or pred.shape[-1] != 2:
        raise ValueError(f"pred_xy: expected shape (images, landmarks, 2) as x, y pixels, found {tuple(pred.shape)}")
    _check_same_shape(pred, true, "pred_xy", "true_xy")
    n, k, _ = pred.shape
    vis = _to_numpy(visibility, "visibility")
    if vis.shape != (n, k):
        raise ValueError(f"visibility: expected shape {(n, k)} (images, landmarks), found {tuple(vis.shape)}")
    if vis.dtype == bool:
        raise ValueError(
            "visibility: expected DeepFashion codes (0 visible, 1 occluded, 2 cut off), found a bool "
            "array; pass the codes, e.g. np.where(is_visible, 0, 1)"
        )
    bad = ~np.isin(vis, (0, 1, 2))
    if bad.any():
        raise ValueError(
            "visibility: expected DeepFashion codes 0 (visible), 1 (occluded), 2 (cut off), "
            f"found {np.unique(vis[bad])[:5].tolist()}"
        )
    visible = vis == 0
    sizes = _to_numpy(image_sizes, "image_sizes").astype(np.float64)
    if sizes.shape == (2,):
        sizes = np.broadcast_to(sizes, (n, 2))
    if sizes.shape != (n, 2):
        raise ValueError(
            f"image_sizes: expected shape ({n}, 2) or (2,) as (width, height) pixels, found {tuple(sizes.shape)}"
        )
    if not np.all(sizes > 0):
        raise ValueError("image_sizes: expected positive (width, height), found a zero, negative or NaN size")
    _check_no_nan(pred, "pred_xy", where=np.repeat(visible[..., None], 2, axis=-1))
    _check_no_nan(true, "true_xy", where=np.repeat(visible[..., None], 2, axis=-1))
    with np.errstate(invalid="ignore"):
        dx = (pred[..., 0] - true[..., 0]) / sizes[:, None, 0]
        dy = (pred[..., 1] - true[..., 1]) / sizes[:, None, 1]
        distance = np.sqrt(dx * dx + dy * dy)
    return distance, visible


def normalized_error(pred_xy: Any, true_xy: Any, visibility: Any, image_sizes: Any) -> float:
    """Mean normalised distance over the visible landmarks (DeepFashion's landmark benchmark).

    For a landmark, ``sqrt((dx / W)^2 + (dy / H)^2)``: the x offset is divided by the image width
    and the y offset by its height, so the error is a fraction of the image (0.05 = 5 %), as in
    Liu et al.'s Fashion Landmark Detection benchmark and the papers that report on it.

    Args:
        pred_xy, true_xy: (N, K, 2) x, y in pixels of the same image.
        visibility: (N, K) DeepFashion codes; only 0 (visible) landmarks count.
        image_sizes: (N, 2) or (2,) as (width, height) in pixels, of the image the points live in.

    Raises ValueError when no landmark is visible (an error of 0 would read as perfect).
    """
    distance, visible = _landmark_distances(pred_xy, true_xy, visibility, image_sizes)
    if not visible.any():
        raise ValueError("visibility: no visible landmark (code 0), so the normalised error is undefined")
    return float(distance[visible].mean())


def landmark_metrics(
    pred_xy: Any,
    true_xy: Any,
    visibility: Any,
    image_sizes: Any,
    thresholds: Sequence[float] = (0.05, 0.1),
    landmark_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Normalised landmark error, per landmark, and detection rates.

    Arguments as :func:`normalized_error`; ``landmark_names`` names the K landmarks and defaults
    to :data:`LANDMARK_NAMES` when K = 8 (it is required otherwise, e.g. K = 6 for upper/lower-body
    subsets).

    Returns:

    - ``normalized_error``: mean normalised distance over all visible landmarks (a fraction).
    - ``normalized_error_<name>``: the same over one landmark's visible instances; ``None`` when
      that landmark is never visible.
    - ``detection_rate@<t>`` (e.g. ``detection_rate@0.05``): percent of visible landmarks whose
      normalised distance is <= t.
    - ``num_visible_landmarks``.
    """
    distance, visible = _landmark_distances(pred_xy, true_xy, visibility, image_sizes)
    k = distance.shape[1]
    if landmark_names is None:
        if k != len(LANDMARK_NAMES):
            raise ValueError(
                f"landmark_names: required when there are {k} landmarks per image "
                f"(the defaults name DeepFashion's {len(LANDMARK_NAMES)})"
            )
        names = list(LANDMARK_NAMES)
    else:
        names = [str(name) for name in landmark_names]
        if len(names) != k:
            raise ValueError(f"landmark_names: expected {k} names (one per landmark), found {len(names)}")
    if not visible.any():
        raise ValueError("visibility: no visible landmark (code 0), so the normalised error is undefined")
    visible_distances = distance[visible]
    result: dict[str, Any] = {"normalized_error": float(visible_distances.mean())}
    for j, name in enumerate(names):
        column = distance[:, j][visible[:, j]]
        result[f"normalized_error_{name}"] = float(column.mean()) if column.size else None
    for t in thresholds:
        result[f"detection_rate@{float(t):g}"] = _percent((visible_distances <= t).sum(), visible_distances.size)
    result["num_visible_landmarks"] = int(visible.sum())
    return result
