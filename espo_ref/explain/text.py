"""The terminal form of ``espo-ref explain`` [ESPO-OBJ]: a summary, one line per response with its
high-entropy tokens and clips marked, a per-token table and, against an implementation, the
tokens where it differs [CONF-MISREADINGS]."""

from __future__ import annotations

from .html import number, shown

MARKS = "{high-entropy group}  ^clipped above 1 + eps  _clipped below 1 - eps  ~not trained"


def marked(row: dict) -> str:
    text = shown(row["token"])
    if row["group"] == 0:
        text = "{" + text + "}"
    if row["clipped"] == "high":
        text = "^" + text
    elif row["clipped"] == "low":
        text = "_" + text
    if not row["trained"]:
        text = "~" + text
    return text


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def render(view, comparison=None, *, rows: int = 40, width: int = 100) -> str:
    """[ESPO-OBJ] The terminal text: summary, responses with groups and clips marked, ``rows`` token
    rows, and the comparison's differences [CONF-MISREADINGS]."""
    from . import summary_pairs

    out = [f"espo-ref explain {view.batch.source}"]
    out += [f"  {k}: {v}" for k, v in summary_pairs(view, comparison)]
    responses = view.responses()
    all_rows = [r for mine in responses for r in mine]
    out.append("")
    out.append(f"responses ({MARKS}):")
    for b, mine in enumerate(responses):
        if not mine:
            out.append(f"  {b:>3}  (no response token)")
            continue
        line = f"  {b:>3}  A={mine[0]['advantage']:+.3g}  " + " ".join(marked(r) for r in mine)
        out.append(line if len(line) <= width else line[:width - 3] + "...")
    if comparison is not None:
        out.append("")
        out += comparison_lines(comparison)
    out.append("")
    headers = ["resp", "pos", "token", "entropy", "group", "eps", "ratio", "adv", "weight", "grad", "clip"]
    body = [[str(r["response"]), str(r["position"]), shown(r["token"])[:12], number(r["entropy"]), str(r["group"]),
             number(r["eps_high"]), number(r["ratio"], 6), number(r["advantage"]), number(r["weight"]),
             number(r["grad"]), r["clipped"] or "-"] for r in all_rows[:rows]]
    out.append(f"tokens ({min(rows, len(all_rows))} of {len(all_rows)}; --rows N for more):")
    out.append(table(headers, body))
    return terminal_safe("\n".join(out))


# C0 and C1 controls (but the newline), DEL, and the bidirectional overrides: a crafted token or
# logged value must not clear the screen, set the title or rewrite the verdict lines
_UNSAFE = {c: f"\\x{c:02x}" for c in (*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0)) if c != 0x0A}
_UNSAFE.update({c: f"\\u{c:04x}" for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))})


def terminal_safe(text: str) -> str:
    """[ESPO-OBJ] ``text`` with every control character shown as its escape (``\\x1b``), the newline kept."""
    return text.translate(_UNSAFE)


def comparison_lines(comparison) -> list[str]:
    verdict = {"pass": "agrees with the reference", "fail": "DIFFERS from the reference",
               "error": "could not be compared"}[comparison.status]
    out = [f"your implementation {comparison.impl} {verdict}"]
    if not getattr(comparison, "protected", True):
        out.append("  verdict not protected: --no-isolation ran it in this process, where it can change the comparison")
    if comparison.status == "pass":
        return out
    for d in comparison.diagnoses:
        out.append(f"  misreading that reproduces your outputs: {d['name']} [{d['clause']}]: {d['summary']}")
    if comparison.suspects:
        out.append(f"  suspect clause: {', '.join(f'[{c}]' for c in comparison.suspects[:3])}")
    if not comparison.differences:
        out.append(f"  {comparison.message[:1000]}")
        return out
    headers = ["resp", "pos", "token", "output", "reference", "yours", "|diff|"]

    def cells(d):
        return [str(d.response), str(d.position), shown(d.token)[:12], d.field, number(d.reference, 6),
                number(d.yours, 6), number(d.size, 3)]

    out.append(f"  first differing tokens ({len(comparison.differences)} token outputs differ):")
    out += ["    " + line for line in table(headers, [cells(d) for d in comparison.first(8)]).splitlines()]
    out.append("  largest differences:")
    out += ["    " + line for line in table(headers, [cells(d) for d in comparison.largest(8)]).splitlines()]
    return out
