"""Release a model directory: write its card.json and manifest.json, then load it to prove it works.

    python scripts/release_model.py models/clothing-attributes-lite0 --name garment-attributes-lite0 \
        --summary "37 clothing attributes ..." --images 297 --metric mAP=75.9 --metric CF1=62.0
    python scripts/release_model.py models/clothing-attributes-lite0           # again: keeps name, summary, figures
    python scripts/release_model.py models/garment-category-mnv2 --alias clothing-category-attributes-mnv2
    python scripts/release_model.py --check models/*/                          # exit 1 if any is out of date

card.json holds the held-out figures (given with --metric, kept from the previous card otherwise; the
model card README.md shows them to people) and the task and outputs from config.json; manifest.json
holds the SHA-256 and size of every JSON and weights file (fashionlens.modeldir). Run it again after
changing any of them.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from fashionlens.errors import FashionlensError
from fashionlens.fileio import atomic_write_json
from fashionlens.hub import CARD_FILE, card_for_release, read_card
from fashionlens.modeldir import load_model_dir, verify_manifest, write_manifest


def figures(metrics: list[str], images: int | None, previous: dict) -> dict | None:
    """``--metric NAME=VALUE`` (repeatable) and ``--images N`` as card.json's ``heldout``; None: keep the card's."""
    if not metrics:
        return None if images is None else {**previous.get("heldout", {}), "images": images}
    parsed = {}
    for item in metrics:
        key, _, value = item.rpartition("=")
        try:
            parsed[key.strip()] = float(value)
        except ValueError:
            raise FashionlensError(f"--metric {item!r}: expected NAME=NUMBER, e.g. 'catalogue top-1=85.1'") from None
        if not key.strip() or not math.isfinite(parsed[key.strip()]):
            raise FashionlensError(f"--metric {item!r}: expected NAME=NUMBER, e.g. 'catalogue top-1=85.1'")
    return {"images": images, "metrics": parsed}


def release(directory: Path, name: str | None, summary: str | None, aliases: tuple[str, ...] = (),
            heldout: dict | None = None) -> None:
    previous = read_card(directory) or {}
    name = name or previous.get("name")
    if not name:
        raise FashionlensError(f"{directory}: no card.json yet; give the model's name with --name")
    summary = previous.get("summary", "") if summary is None else summary
    aliases = tuple(dict.fromkeys((*previous.get("aliases", ()), *aliases)))
    atomic_write_json(directory / CARD_FILE, card_for_release(directory, name, summary, aliases, heldout))
    write_manifest(directory)
    load_model_dir(directory)  # checks the manifest it just wrote, and that the weights match config.json
    print(f"released {directory} as {name!r}")


def check(directory: Path) -> list[str]:
    card = read_card(directory)
    if card is None:
        return [f"{directory}: no {CARD_FILE} (release it with --name)"]
    problems = []
    expected = card_for_release(directory, card["name"], card["summary"], tuple(card["aliases"]))
    if {key: card.get(key) for key in expected} != expected:
        problems.append(f"{directory / CARD_FILE}: out of date with config.json (or the folder's name)")
    try:
        verify_manifest(directory)
    except FashionlensError as error:
        problems.append(str(error))
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dirs", nargs="+", type=Path)
    parser.add_argument("--name", help="the short name fashionlens.load and the CLI take (one model directory)")
    parser.add_argument("--summary", help="one line: what the model predicts")
    parser.add_argument("--alias", action="append", default=[],
                        help="another name it answers to, e.g. the folder name of the release it replaces (repeatable)")
    parser.add_argument("--metric", action="append", default=[], metavar="NAME=VALUE",
                        help="a held-out figure for card.json, e.g. 'catalogue top-1=85.1' (repeatable; replaces "
                             "the card's figures; default: keep them)")
    parser.add_argument("--images", type=int, default=None, help="how many held-out photos the figures are on")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a card or manifest is stale")
    args = parser.parse_args(argv)
    if (args.name or args.metric or args.images is not None) and len(args.model_dirs) > 1:
        parser.error("--name, --metric and --images are for one model directory")
    try:
        if args.check:
            problems = [problem for directory in args.model_dirs for problem in check(directory)]
            print("\n".join(problems) or f"{len(args.model_dirs)} released model(s) up to date")
            return 1 if problems else 0
        for directory in args.model_dirs:
            heldout = figures(args.metric, args.images, read_card(directory) or {})
            release(directory, args.name, args.summary, tuple(args.alias), heldout)
    except FashionlensError as error:
        print(f"release_model: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
