"""Keep a benchmark's figures in BENCHMARKS.md between its own markers."""

from __future__ import annotations

import re
from pathlib import Path


def write_block(path: Path, marker: str, body: str) -> None:
    """Put ``body`` between ``<!-- bench:<marker> start/end -->`` in ``path``:
    replaced if the block is there, else appended; the rest of the file is kept."""
    start, end = f"<!-- bench:{marker} start -->", f"<!-- bench:{marker} end -->"
    block = f"{start}\n{body.strip()}\n{end}"
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text, count=1)
    else:
        text = (text.rstrip("\n") + "\n\n" if text.strip() else "") + block + "\n"
    path.write_text(text, encoding="utf-8")
