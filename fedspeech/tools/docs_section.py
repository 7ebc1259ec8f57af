"""Rewrite one measured section of a docs page, between its two marker comments, with its plot."""

from __future__ import annotations

import shutil
from pathlib import Path

from fedspeech.base.errors import UsageError
from fedspeech.base.paths import ROOT

DOCS = ROOT / "docs"


def update_docs_section(page: str, marker: str, markdown: str, png: Path, alt: str) -> None:
    """Put ``markdown`` and ``png`` (copied beside the page) between ``<!-- marker:start/end -->``
    of ``docs/<page>``."""
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    target = DOCS / page
    text = target.read_text(encoding="utf-8") if target.is_file() else ""
    if start not in text or end not in text:
        raise UsageError(f"{target} has no {start} ... {end} section")
    shutil.copyfile(png, DOCS / png.name)
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    body = f"{start}\n{markdown}\n![{alt}]({png.name})\n{end}"
    target.write_text(head + body + tail, encoding="utf-8")
    print(f"updated {target} and {DOCS / png.name}")
