"""The clauses of specs/*.md: id -> the text of its section (a heading ``### [ID] Title``)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
HEADING = re.compile(r"^### \[([A-Z][A-Z0-9\-]+)\] (.+)$", re.M)


def clauses() -> dict[str, str]:
    """Clause id -> the text of its section, up to the next heading of level 1 to 3."""
    out = {}
    for path in sorted((ROOT / "specs").glob("*.md")):
        text = path.read_text()
        heads = list(HEADING.finditer(text))
        for i, m in enumerate(heads):
            end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
            nxt = re.search(r"^#{1,3} ", text[m.end():end], re.M)
            body = text[m.end(): m.end() + nxt.start()] if nxt else text[m.end():end]
            assert m.group(1) not in out, f"clause {m.group(1)} is defined twice"
            out[m.group(1)] = body
    return out


CLAUSES = clauses()
