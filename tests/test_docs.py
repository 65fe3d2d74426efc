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


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def test_every_relative_link_of_the_docs_resolves():
    """Links between the README and docs/ (``[x](file.md)``, ``[x](#anchor)``, ``[x](file.md#anchor)``)
    name a file that exists and, where they have one, a heading of it."""
    root = DOCS.parent
    pages = [root / "README.md", *sorted(DOCS.glob("*.md"))]
    anchors = {page: {slug(h) for h in re.findall(r"^#+ (.+)$", page.read_text(), flags=re.M)} for page in pages}
    broken = []
    for page in pages:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # code blocks hold no links
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue  # a web address
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists() or anchor and linked.suffix == ".md" and anchor not in anchors.get(linked, set()):
                broken.append(f"{page.relative_to(root)}: {target}")
    assert not broken, broken
