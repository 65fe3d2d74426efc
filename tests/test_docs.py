"""The code in docs/compose.md runs as written."""
from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_compose_guide_runs(capsys):
    text = (DOCS / "compose.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "no python block in docs/compose.md"
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/compose.md", "exec"), namespace)
    out = capsys.readouterr().out
    assert "constraint" in out and "alignment KL per step" in out
    assert namespace["metrics"]["alignment_kl"] > 0
