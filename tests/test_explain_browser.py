"""The pages of ``espo-ref explain`` and of a training run's token view, looked at the way a person
would: rendered in headless Chromium (Debian's package, driven by Playwright), with no console
error, the coloured tokens and the table present, and a click on a token selecting its row.

Without Chromium or Playwright this skips, except under CI (``.ci/run`` installs both), where
that is a failure. ``python tests/test_explain_browser.py OUT.png`` writes the README's picture."""

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from espo_ref.explain import compare, espo_config_of, load_batch, save_batch, token_view
from espo_ref.explain.html import explain_page, rollouts_page

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path(os.environ.get("ESPO_CHROMIUM", "/usr/bin/chromium"))
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def _browser_or_skip():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if sync_playwright is None or not CHROMIUM.exists():
        message = f"needs playwright and Chromium at {CHROMIUM} (apt-get install chromium; pip install playwright)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return sync_playwright


@pytest.fixture(scope="module")
def browser():
    sync_playwright = _browser_or_skip()
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        yield chromium
        chromium.close()


def open_page(browser, path: Path):
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    problems = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning")
            else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.goto(path.resolve().as_uri())
    page.wait_for_load_state("load")
    return page, problems


def demo_batch(path: Path) -> Path:
    """Two responses in the arithmetic task's template, with the answer digit the uncertain token."""
    text = [list(" the answer is 7 ."), list(" the answer is 12 .")]
    T = max(len(t) for t in text)
    rng = np.random.default_rng(0)
    mask = np.array([[t < len(row) for t in range(T)] for row in text])
    entropy = np.where(mask, rng.uniform(0.01, 0.2, (2, T)), 0.0)
    entropy[0, 15], entropy[1, 15], entropy[1, 16] = 2.4, 2.2, 1.9  # the digits
    old = np.where(mask, -rng.uniform(0.01, 0.3, (2, T)), 0.0)
    logp = old + np.where(mask, rng.normal(0.0, 1e-5, (2, T)), 0.0)
    logp[0, 15] += 0.3   # "7" became likelier under A > 0: clipped above
    logp[1, 16] -= 0.3   # "2" became less likely under A < 0: clipped below
    save_batch(path, dict(logp=logp, old_logp=old, entropy=entropy, mask=mask, advantages=np.array([1.2, -0.8])),
               {"vocab_size": 90}, tokens=[row + [""] * (T - len(row)) for row in text])
    return path


def test_ESPO_CLIPMASK_explain_page_renders_without_errors_with_coloured_tokens_and_table(browser, tmp_path):
    batch = load_batch(demo_batch(tmp_path / "batch.npz"))
    view = token_view(batch, espo_config_of(batch))
    path = tmp_path / "page.html"
    path.write_text(explain_page(view, compare(view, "espo_ref:espo_loss")))
    page, problems = open_page(browser, path)
    assert problems == []
    tokens = int(view.arrays["mask"].sum())
    assert page.locator(".tok[data-key]").count() == tokens
    assert page.locator(".tok.g0[data-key]").count() == int((view.arrays["groups"] == 0).sum()) > 0
    clipped = int(view.arrays["clipped_high"].sum() + view.arrays["clipped_low"].sum())
    assert clipped > 0 and page.locator(".tok.clip-high[data-key], .tok.clip-low[data-key]").count() == clipped
    assert page.locator("table.data tbody tr").count() == tokens
    # the colours are applied, not just named: the high group's background differs from group 1's
    high = page.locator(".tok.g0[data-key]").first.evaluate("e => getComputedStyle(e).backgroundColor")
    low = page.locator(".tok.g1[data-key]").first.evaluate("e => getComputedStyle(e).backgroundColor")
    assert high != low and "rgba(0, 0, 0, 0)" not in (high, low)
    # a click on a token selects its row of the table
    page.locator('.tok[data-key="0-15"]').click()
    assert "selected" in page.locator("#row-0-15").get_attribute("class")
    page.close()


def test_ESPO_GROUP_training_token_view_renders_without_errors(browser, tmp_path):
    records = [{"step": s, "index": 0, "prompt": "Q: 3+4 = ?", "tokens": list(" the answer is 7 ."),
                "entropy": [0.1] * 15 + [2.0, 0.1, 0.1], "group": [1] * 15 + [0, 1, 1], "eps": [0.01] * 18,
                "clipped": [""] * 15 + ["high", "", ""], "trained": [True] * 18, "advantage": 1.0, "reward": 1.0}
               for s in (1, 400)]
    path = tmp_path / "view.html"
    path.write_text(rollouts_page("token view", records))
    page, problems = open_page(browser, path)
    assert problems == []
    assert page.locator(".response").count() == 2 and page.locator(".tok.g0.clip-high").count() == 2
    page.close()


def screenshot(out: Path) -> None:
    """The README's picture: explain on the demo-like batch against the deliberately wrong loss."""
    import tempfile

    sys.path.insert(0, str(ROOT / "examples"))
    sync_playwright = _browser_or_skip()
    with tempfile.TemporaryDirectory() as tmp:
        batch = load_batch(demo_batch(Path(tmp) / "batch.npz"))
        batch.source = "batch.npz"
        view = token_view(batch, espo_config_of(batch))
        path = Path(tmp) / "page.html"
        path.write_text(explain_page(view))
        with sync_playwright() as p:
            chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
            page = chromium.new_page(viewport={"width": 1000, "height": 560})
            page.goto(path.as_uri())
            page.locator('.tok[data-key="0-15"]').hover()
            page.screenshot(path=str(out))
            chromium.close()


if __name__ == "__main__":
    screenshot(Path(sys.argv[1]))
