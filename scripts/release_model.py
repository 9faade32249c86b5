"""Release a model directory: write its card.json and manifest.json, then load it to prove it works.

    python scripts/release_model.py models/clothing-attributes-lite0 --name garment-attributes-lite0 \
        --summary "37 clothing attributes ..."
    python scripts/release_model.py models/clothing-attributes-lite0           # again: keeps name and summary
    python scripts/release_model.py models/garment-category-mnv2 --alias clothing-category-attributes-mnv2
    python scripts/release_model.py --check models/*/                          # exit 1 if any is out of date

card.json takes the held-out figures from the model card (README.md, the table under its "Metrics"
heading) and the task and outputs from config.json; manifest.json holds the SHA-256 and size of every
JSON and weights file (fashionlens.hub). Run it again after changing any of them, and after editing
the card's metrics.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fashionlens.errors import FashionlensError
from fashionlens.fileio import atomic_write_json
from fashionlens.hub import CARD_FILE, card_for_release, read_card
from fashionlens.modeldir import load_model_dir, verify_manifest, write_manifest


def release(directory: Path, name: str | None, summary: str | None, aliases: tuple[str, ...] = ()) -> None:
    previous = read_card(directory) or {}
    name = name or previous.get("name")
    if not name:
        raise FashionlensError(f"{directory}: no card.json yet; give the model's name with --name")
    summary = previous.get("summary", "") if summary is None else summary
    aliases = tuple(dict.fromkeys((*previous.get("aliases", ()), *aliases)))
    atomic_write_json(directory / CARD_FILE, card_for_release(directory, name, summary, aliases))
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
        problems.append(f"{directory / CARD_FILE}: out of date with README.md / config.json")
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
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a card or manifest is stale")
    args = parser.parse_args(argv)
    if args.name and len(args.model_dirs) > 1:
        parser.error("--name names one model directory")
    try:
        if args.check:
            problems = [problem for directory in args.model_dirs for problem in check(directory)]
            print("\n".join(problems) or f"{len(args.model_dirs)} released model(s) up to date")
            return 1 if problems else 0
        for directory in args.model_dirs:
            release(directory, args.name, args.summary, tuple(args.alias))
    except FashionlensError as error:
        print(f"release_model: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
