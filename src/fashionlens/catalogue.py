"""Tags in the shape a catalogue needs: the garment apart from its attributes, attributes by kind, and
only the attributes that apply to the garment marked.

A style model trained on data with garment classes (class folders, a dataset's category column) knows
which of its labels are the **category**: a prediction names the best of them first. The other labels
are **grouped**: names sharing a prefix form a group (``color_red``, ``color_blue`` -> ``color``);
the rest are ``garments`` (garments and accessories that apply to any photo) or ``details`` (parts
that apply to some garments only, such as a collar). A group no training photo has two labels of
(the sleeve length) is exclusive: a prediction marks only its best label.

Which attributes apply to which garment comes from the training labels: an attribute applies to a
category when it was seen on some garment of the same body region (``GARMENT_REGIONS``). Pooling by
region matters because datasets annotate different things: the Clothing Attribute Dataset marks the
sleeves of shirts and dresses but has no longsleeve class, so "long sleeves" is learnt to apply to
the upper body and the full body, and a photo whose garment is shoes or trousers is not tagged with
sleeves. A prediction keeps an attribute when it applies to one of the photo's garments (the
category and the garment classes above their thresholds). Categories outside the regions' lists, and garment names themselves (heels on a photo whose
category is shoes), are never restricted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

#: Body regions of the garment names fashionlens's datasets use (after configs/garment-aliases.yaml).
GARMENT_REGIONS: dict[str, tuple[str, ...]] = {
    "upper body": ("blazer", "blouse", "cardigan", "hoodie", "jumper", "longsleeve", "outerwear", "polo",
                   "shirt", "suit", "sweater", "sweatshirt", "t-shirt", "tank top", "top", "undershirt", "vest"),
    "lower body": ("jeans", "leggings", "pants", "shorts", "skirt", "stockings", "tights"),
    "full body": ("bodysuit", "dress", "jumpsuit", "romper"),
    "feet": ("boots", "clogs", "flats", "heels", "loafers", "pumps", "sandals", "shoes", "sneakers", "wedges"),
    "head": ("hat",),
}
_REGION = {name: region for region, names in GARMENT_REGIONS.items() for name in names}
CATEGORY, GARMENTS, DETAILS = "category", "garments", "details"


def catalogue_labels(label_names: Sequence[str], category_names: Sequence[str], labels: np.ndarray,
                     mask: np.ndarray) -> dict[str, dict[str, list[str]]]:
    """``{"groups": {group: [label, ...]}, "applies_to": {label: [category, ...]}, "exclusive_groups": [...]}``
    for labels.json.

    ``labels`` and ``mask`` are the training label matrix and its known-entries mask ``(N, L)``.
    ``applies_to`` lists only the labels that do not apply to every category; ``exclusive_groups`` the
    groups of which no training photo has two labels (a prediction marks at most one of them). Empty
    when no label is a category name.
    """
    names = list(label_names)
    categories = [name for name in names if name in set(category_names)]
    if not categories:
        return {}
    known = np.asarray(mask, dtype=bool)
    positive = np.asarray(labels, dtype=bool) & known
    columns = [names.index(category) for category in categories]
    # A label never annotated together with a category has no evidence either way: never restricted.
    evidence = {names[j] for j in np.flatnonzero((known[:, columns].any(axis=1)[:, None] & known).any(axis=0))}
    seen_in: dict[str, set[str]] = {}  # label -> regions of the categories it was seen on
    for category in categories:
        region = _REGION.get(category)
        if region is None:
            continue
        on = positive[positive[:, names.index(category)]].any(axis=0)
        for j in np.flatnonzero(on):
            seen_in.setdefault(names[j], set()).add(region)
    applies_to: dict[str, list[str]] = {}
    for name in names:
        if name in categories or name in _REGION or name not in evidence:  # garments are not attributes
            continue
        fits = [c for c in categories if _REGION.get(c) is None or _REGION[c] in seen_in.get(name, ())]
        if len(fits) < len(categories):
            applies_to[name] = fits
    prefixes = Counter(name.split("_", 1)[0] for name in names if "_" in name and name not in categories)
    groups: dict[str, list[str]] = {CATEGORY: categories}
    for name in names:
        if name in categories:
            continue
        prefix = name.split("_", 1)[0]
        group = prefix if "_" in name and prefixes[prefix] > 1 else DETAILS if name in applies_to else GARMENTS
        groups.setdefault(group, []).append(name)
    # A group no training photo has two of (the sleeve length, a neckline) is "one of these".
    column = {name: j for j, name in enumerate(names)}
    exclusive = [group for group, members in groups.items() if group not in (CATEGORY, GARMENTS, DETAILS)
                 and len(members) > 1 and positive[:, [column[m] for m in members]].sum(axis=1).max() <= 1]
    return {"groups": groups, "applies_to": applies_to, "exclusive_groups": exclusive}
