"""node.visualize: graphviz output when dot exists, a self-contained HTML page otherwise."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from support import add, inc


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz dot is not installed")
def test_svg_via_graphviz(tmp_path: Path) -> None:
    out = add(inc(1), inc(2)).visualize(str(tmp_path / "dag.svg"))
    text = Path(out).read_text()
    assert out.endswith(".svg") and "<svg" in text
    assert text.count("inc&#45;") == 2 and "add&#45;2" in text


def test_html_fallback_without_dot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no dot on this PATH
    out = add(inc(1), inc(2)).visualize(str(tmp_path / "dag.svg"))
    assert out.endswith(".html")
    page = Path(out).read_text()
    assert page.startswith("<!doctype html>") and "<svg" in page
    assert "add-2" in page and page.count("<line") == 2
    assert "http" not in page.replace("http://www.w3.org/2000/svg", "")  # self-contained
