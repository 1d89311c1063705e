"""Replacing one benchmark's own ``## Section`` of BENCHMARKS.md, leaving every other section as it is."""

from __future__ import annotations

import re
from pathlib import Path

from hnsel.tables import write_text_atomic

BENCHMARKS_MD = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


def replace_section(section: str, text: str, path: Path = BENCHMARKS_MD) -> None:
    """Put ``text`` where ``section`` (a ``## `` heading) stands now, up to the next ``## ``; append it if absent."""
    old = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(section)}\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    new = pattern.sub(lambda _: text, old) if pattern.search(old) else old.rstrip("\n") + "\n\n" + text
    write_text_atomic(path, new)
