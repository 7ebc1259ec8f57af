"""Rewrite one measured section of README.md, between its two marker comments, with its plot."""

from __future__ import annotations

import shutil
from pathlib import Path

from fedspeech.base.errors import UsageError
from fedspeech.base.paths import ROOT


def update_readme_section(marker: str, markdown: str, png: Path, alt: str) -> None:
    """Put ``markdown`` and ``png`` (copied to ``docs/``) between ``<!-- marker:start/end -->``."""
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    docs = ROOT / "docs"
    docs.mkdir(exist_ok=True)
    shutil.copyfile(png, docs / png.name)
    readme = ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    if start not in text or end not in text:
        raise UsageError(f"{readme} has no {start} ... {end} section")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    body = f"{start}\n{markdown}\n![{alt}](docs/{png.name})\n{end}"
    readme.write_text(head + body + tail, encoding="utf-8")
    print(f"updated {readme} and {docs / png.name}")
