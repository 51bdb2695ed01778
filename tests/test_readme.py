"""The README's example runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "README has no python example"
    for code in blocks:
        exec(compile(code, str(README), "exec"), {})
    assert capsys.readouterr().out.strip()


def test_readme_counts_match_the_golden_cases():
    from espo_ref.conformance.golden import load

    cases = load()
    handworked = sum(c.source.startswith("handworked") for c in cases)
    text = README.read_text()
    assert f"**Cases**: {len(cases)} in" in text and f"{handworked} from the tables" in text
