"""The README stays true to the command lines: every flag is documented.

``scripts/launch.py`` and ``scripts/pretrain.py`` are left out: the README has no flag table for
them (it shows them in use only).
"""

from __future__ import annotations

import argparse
import re

import pytest
from conftest import ROOT

import client
import server
from fedspeech.tools import launch


def flags_in_help(parser: argparse.ArgumentParser) -> list[str]:
    """Every ``--flag`` token of ``--help``: the public face, no argparse internals."""
    return sorted(set(re.findall(r"(?<![\w-])--[A-Za-z][\w-]*", parser.format_help())))


@pytest.mark.parametrize("build_parser", [server.build_parser, client.build_parser],
                         ids=["server.py", "client.py"])
def test_every_flag_is_in_the_flags_page(build_parser, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "10000")  # no wrapping: textwrap may split a flag at a hyphen
    flags = flags_in_help(build_parser())
    assert {"--server_address", "--save_path", "--debug"} <= set(flags)  # the parsing works
    page = (ROOT / "docs" / "flags.md").read_text(encoding="utf-8")
    missing = [f for f in flags if f != "--help" and f"`{f}" not in page]
    assert not missing, f"undocumented flags: {missing}"


def test_readme_starts_with_the_two_commands():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    first_block = readme.split("```bash", 1)[1].split("```", 1)[0]
    assert "scripts/run_demo.sh" in first_block and "scripts/run_tests.sh" in first_block
    assert "scripts/run_tests.sh" in (ROOT / ".ci" / "run").read_text()


def test_launcher_help_works():
    assert "--num_clients" in launch.build_parser().format_help()
