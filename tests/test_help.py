"""Honest help (issue 32 item 6): every default shown, every command described, README and --help agree."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from fashionlens.cli import CLOTHING_DEFAULTS, STYLE_DEFAULTS, TRAINING_FLAGS, build_parser, parsers

README = Path(__file__).resolve().parents[1] / "README.md"


def _helps() -> dict[tuple[str, str], tuple[argparse.Action, str]]:
    """(command, flag) -> (its action, its help as --help prints it)."""
    found = {}
    for parser in parsers(build_parser()):
        formatter = parser._get_formatter()
        for action in parser._actions:
            if action.option_strings and action.help is not argparse.SUPPRESS:
                # argparse prints nothing for an option whose help is empty, whatever its default
                shown = formatter._expand_help(action) if action.help and action.help.strip() else ""
                found[parser.prog, action.option_strings[-1]] = (action, shown)
    return found


def _config_default(prog: str, dest: str):
    defaults = CLOTHING_DEFAULTS if "clothing" in prog else STYLE_DEFAULTS
    value = defaults
    for part in TRAINING_FLAGS[dest].split("."):
        value = getattr(value, part)
    return value


def test_every_option_with_a_default_shows_it():
    """`predict --top-k/--batch-size/--runtime`, `serve --host/--port`, `search --k`, `evaluate
    --batch-size` showed no default."""
    silent = []
    for (prog, flag), (action, text) in _helps().items():
        if action.nargs == 0 or action.required:  # on/off switches, and what must be given
            continue
        default = action.default
        if default is argparse.SUPPRESS and action.dest in TRAINING_FLAGS:  # a training flag: the config's default
            default = _config_default(prog, action.dest)
        if default not in (None, argparse.SUPPRESS, False, ()) and "default" not in text.lower():
            silent.append(f"{prog} {flag}")
    assert silent == []
    helps = _helps()
    assert helps["fashionlens predict", "--top-k"][1] == "default: 5"
    assert "--top-k TOP_K         default: 5\n" in build_parser()._subparsers._group_actions[0].choices["predict"].format_help()
    assert helps["fashionlens serve", "--port"][1] == "port (default 8000)"
    assert helps["fashionlens search", "--k"][1] == "default: 10"


def test_every_command_has_a_description_and_data_check_split_has_help():
    described = {parser.prog: parser.description for parser in parsers(build_parser())}
    for command in ("predict", "export", "serve", "evaluate", "train style", "data check"):
        assert described[f"fashionlens {command}"], command
    assert "deepfashion (train | val | test" in _helps()["fashionlens data check", "--split"][1]


def test_the_readme_says_the_defaults_that_help_says():
    """README said `--pretrained shipped` is the default; --help said `auto`."""
    claims = re.findall(r"`--([a-z-]+) ([^`]+)` \(the default\)", README.read_text(encoding="utf-8"))
    assert ("pretrained", "auto") in claims and ("embeddings", "onehot") in claims
    helps = _helps()
    for flag, value in claims:
        text = helps["fashionlens train style", f"--{flag}"][1]
        assert re.search(rf"default:? {re.escape(value)}\b", text), (flag, value, text)
        assert _config_default("fashionlens train style", flag.replace("-", "_")) == value


@pytest.mark.parametrize("flag", ["--pretrained", "--embeddings", "--epochs", "--loss"])
def test_training_flags_name_the_config_default(flag):
    action, text = _helps()["fashionlens train style", flag]
    assert f"default {_config_default('fashionlens train style', action.dest)}" in text


def test_help_imports_neither_torch_nor_lightning():
    """Every command spent 3-13 s starting: `--help` imported torch (through the run directory's module)
    before printing a line; measured in docs/benchmarks.md ("Start-up")."""
    import subprocess
    import sys

    code = ("import sys; from fashionlens.cli import build_parser; build_parser().format_help(); "
            "print(sorted(m for m in ('torch', 'lightning', 'timm', 'PIL', 'faiss') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
