"""The README stays true to the command lines: every flag is documented."""

from __future__ import annotations

import pytest
from conftest import ROOT

import client
import server
from scripts import launch


@pytest.mark.parametrize("parser", [server.build_parser(), client.build_parser()],
                         ids=["server.py", "client.py"])
def test_every_flag_is_in_the_readme(parser):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    flags = [s for a in parser._actions for s in a.option_strings if s.startswith("--")]
    missing = [f for f in flags if f != "--help" and f"`{f}" not in readme]
    assert not missing, f"undocumented flags: {missing}"


def test_readme_starts_with_the_two_commands():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    first_block = readme.split("```bash", 1)[1].split("```", 1)[0]
    assert "scripts/run_demo.sh" in first_block and "scripts/run_tests.sh" in first_block
    assert "scripts/run_tests.sh" in (ROOT / ".ci" / "run").read_text()


def test_launcher_help_works():
    assert "--num_clients" in launch.build_parser().format_help()
