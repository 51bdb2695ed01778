"""Self-contained HTML pages of ESPO's per-token view [ESPO-GROUP] [ESPO-CLIPMASK]: one row per
response, tokens coloured by entropy group, clipped tokens marked by side, the numbers of each
token on hover and in a table. No external resources; a few lines of script link a token to its
table row."""

from __future__ import annotations

import html
import math
from typing import Any, Iterable

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5em; color: #1d1d1f; max-width: 1400px; }
h1 { font-size: 1.35em; } h2 { font-size: 1.1em; margin-top: 1.6em; }
.summary td { padding: 0 1.2em 0 0; } .summary td:first-child { color: #555; }
.legend { display: flex; flex-wrap: wrap; gap: .3em 1.2em; }
.legend > span { white-space: nowrap; }
.response { margin: .5em 0; padding: .35em .5em; border-left: 3px solid #ccc; }
.response.positive { border-left-color: #2a9d8f; } .response.negative { border-left-color: #e76f51; }
.meta { color: #555; font-size: .85em; }
.prompt { color: #777; font-family: ui-monospace, monospace; white-space: pre-wrap; }
.tokens { font-family: ui-monospace, monospace; line-height: 2.1; font-size: 1.15em; }
.tok { padding: 2px 1px; margin: 0 1px; border-radius: 3px; cursor: pointer; white-space: pre; }
.g0 { background: #f4a261; } .g1 { background: #bde0fe; } .gx { background: #cdeac0; }
.untrained { opacity: .45; }
.clip-high { box-shadow: inset 0 -4px 0 #c1121f; } .clip-low { box-shadow: inset 0 -4px 0 #5a189a; }
.differs { outline: 2px dashed #e63946; outline-offset: 1px; }
.tok.selected, tr.selected { outline: 2px solid #111; }
table.data { border-collapse: collapse; font-size: .85em; font-family: ui-monospace, monospace; }
table.data th, table.data td { border: 1px solid #ddd; padding: 1px 6px; text-align: right; }
table.data th { background: #f3f3f3; position: sticky; top: 0; }
table.data td.text { text-align: left; }
.verdict { padding: .5em .8em; border-radius: 4px; }
.verdict.pass { background: #e9f5ec; } .verdict.fail, .verdict.error { background: #fdecea; }
"""

SCRIPT = """
document.addEventListener('click', function (event) {
  var tok = event.target.closest('.tok');
  if (!tok) { return; }
  document.querySelectorAll('.selected').forEach(function (el) { el.classList.remove('selected'); });
  tok.classList.add('selected');
  var row = document.getElementById('row-' + tok.dataset.key);
  if (row) { row.classList.add('selected'); row.scrollIntoView({block: 'center'}); }
});
"""


def shown(token: str) -> str:
    """A token as it is drawn: blanks made visible."""
    return token.replace(" ", "\u2423").replace("\n", "\u23ce").replace("\t", "\u21e5") or "\u2205"


def number(x: float, digits: int = 4) -> str:
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return f"{x:.{digits}g}"


def group_class(group: int) -> str:
    return {0: "g0", 1: "g1"}.get(group, "gx")


def token_span(row: dict[str, Any], *, differs: bool = False) -> str:
    """One token: its group's colour, its clip side, its numbers in the title (hover)."""
    classes = ["tok", group_class(row["group"])]
    if row.get("clipped"):
        classes.append(f"clip-{row['clipped']}")
    if not row.get("trained", True):
        classes.append("untrained")
    if differs:
        classes.append("differs")
    tip = "\n".join(f"{k}: {number(v) if isinstance(v, float) else v}" for k, v in row.items()
                    if k not in ("key", "token"))
    return (f'<span class="{" ".join(classes)}" data-key="{html.escape(row["key"])}" title="{html.escape(tip)}">'
            f"{html.escape(shown(row['token']))}</span>")


LEGEND = ('<p class="legend"><span><span class="tok g0">high</span> high-entropy group (group 0)</span>'
          '<span><span class="tok g1">low</span> group 1</span><span><span class="tok gx">k</span> other groups'
          '</span><span><span class="tok g1 clip-high">x</span> clipped above 1 + eps (A &gt; 0)</span>'
          '<span><span class="tok g1 clip-low">x</span> clipped below 1 - eps (A &lt; 0)</span>'
          '<span><span class="tok g1 untrained">x</span> not trained</span></p>')


def page(title: str, body: Iterable[str]) -> str:
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n<body>\n"
            + "\n".join(body) + f"\n<script>{SCRIPT}</script>\n</body></html>\n")


def response_block(label: str, rows: list[dict[str, Any]], *, advantage: float | None = None,
                   prompt: str | None = None, differs: set = frozenset()) -> str:
    sign = "" if advantage is None else " positive" if advantage > 0 else " negative" if advantage < 0 else ""
    spans = "".join(token_span(r, differs=r["key"] in differs) for r in rows)
    head = f'<div class="meta">{html.escape(label)}</div>'
    if prompt:
        head += f'<div class="prompt">{html.escape(prompt)}</div>'
    return f'<div class="response{sign}">{head}<div class="tokens">{spans}</div></div>'


COLUMNS = ("response", "position", "token", "entropy", "group", "eps_low", "eps_high", "ratio", "advantage",
           "weight", "grad", "clipped")


def token_table(rows: list[dict[str, Any]], columns=COLUMNS, limit: int = 5000) -> str:
    head = "".join(f"<th>{c}</th>" for c in columns)
    lines = []
    for r in rows[:limit]:
        cells = "".join(
            f'<td class="text">{html.escape(r[c] or "-")}</td>' if c == "clipped" else
            f'<td class="text">{html.escape(shown(str(r[c])))}</td>' if c == "token" else
            f"<td>{number(r[c]) if isinstance(r[c], float) else r[c]}</td>" for c in columns)
        lines.append(f'<tr id="row-{html.escape(r["key"])}">{cells}</tr>')
    more = f"<p>({len(rows) - limit} more tokens not shown)</p>" if len(rows) > limit else ""
    return f'<table class="data"><thead><tr>{head}</tr></thead><tbody>{"".join(lines)}</tbody></table>{more}'


def summary_table(pairs: list[tuple[str, str]]) -> str:
    return '<table class="summary">' + "".join(
        f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in pairs) + "</table>"


def explain_page(view, comparison=None) -> str:
    """[ESPO-OBJ] The page of ``espo-ref explain``: the reference on the batch, and the
    implementation's differences when ``comparison`` is given."""
    from . import summary_pairs

    batch = view.batch
    responses = view.responses()
    rows = [r for mine in responses for r in mine]
    differs = set()
    body = [f"<h1>espo-ref explain: {html.escape(batch.source)}</h1>", summary_table(summary_pairs(view, comparison))]
    if comparison is not None:
        differs = {f"{d.response}-{d.position}" for d in comparison.differences}
        body.append(comparison_html(comparison))
    body.append("<h2>Responses</h2>")
    body.append(LEGEND)
    for b, mine in enumerate(responses):
        if not mine:
            continue
        adv = mine[0]["advantage"]
        body.append(response_block(f"response {b} \u00b7 A = {adv:+.4g} \u00b7 {len(mine)} tokens", mine,
                                   advantage=adv, differs=differs))
    body.append("<h2>Tokens</h2>")
    body.append(token_table(rows))
    return page(f"espo-ref explain: {batch.source}", body)


def comparison_html(comparison) -> str:
    verdict = {"pass": "agrees with the reference", "fail": "differs from the reference",
               "error": "could not be compared"}[comparison.status]
    parts = [f'<h2>Your implementation</h2><p class="verdict {comparison.status}"><b>{html.escape(comparison.impl)}'
             f"</b> {verdict}.</p>"]
    if comparison.diagnoses:
        items = "".join(f"<li><b>{html.escape(d['name'])}</b> [{html.escape(d['clause'])}]: "
                        f"{html.escape(d['summary'])}</li>" for d in comparison.diagnoses)
        parts.append(f"<p>Misreading that reproduces your outputs:</p><ul>{items}</ul>")
    if comparison.suspects and comparison.status != "pass":
        parts.append(f"<p>Suspect clause: {html.escape(', '.join(f'[{c}]' for c in comparison.suspects[:3]))}</p>")
    if comparison.differences:
        head = "".join(f"<th>{c}</th>" for c in ("response", "position", "token", "output", "reference", "yours",
                                                 "|difference|"))
        lines = "".join(
            f"<tr><td>{d.response}</td><td>{d.position}</td><td class=\"text\">{html.escape(shown(d.token))}</td>"
            f"<td class=\"text\">{d.field}</td><td>{number(d.reference)}</td><td>{number(d.yours)}</td>"
            f"<td>{number(d.size)}</td></tr>" for d in comparison.largest(200))
        parts.append(f"<p>{len(comparison.differences)} token outputs differ, largest first "
                     f"(dashed outline in the responses below):</p>"
                     f'<table class="data" id="differences"><thead><tr>{head}</tr></thead><tbody>{lines}</tbody></table>')
    elif comparison.status != "pass":
        parts.append(f"<p>{html.escape(comparison.message[:2000])}</p>")
    return "\n".join(parts)


def rollouts_page(title: str, records: list[dict[str, Any]], intro: str = "") -> str:
    """[ESPO-GROUP] The token view of a training run's sampled rollouts (rollouts.jsonl records)."""
    body = [f"<h1>{html.escape(title)}</h1>"]
    if intro:
        body.append(f"<p>{html.escape(intro)}</p>")
    body.append(LEGEND)
    for step in sorted({r["step"] for r in records}):
        body.append(f"<h2>Step {step}</h2>")
        for r in (r for r in records if r["step"] == step):
            rows = [{"key": f"{step}-{r['index']}-{t}", "position": t, "token": tok, "entropy": float(e),
                     "group": int(g), "eps": float(eps), "clipped": c, "trained": bool(tr)}
                    for t, (tok, e, g, eps, c, tr) in enumerate(zip(r["tokens"], r["entropy"], r["group"], r["eps"],
                                                                     r["clipped"], r["trained"]))]
            label = f"response {r['index']} \u00b7 reward {r['reward']:g} \u00b7 A = {r['advantage']:+.3g}"
            body.append(response_block(label, rows, advantage=r["advantage"], prompt=r.get("prompt")))
    return page(title, body)
