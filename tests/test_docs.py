"""A README a newcomer reads in five minutes, and documentation whose links all resolve."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def anchors(md: Path) -> set[str]:
    """GitHub's heading anchors: lowercase, punctuation dropped, spaces to hyphens, repeats numbered."""
    seen, out = {}, set()
    in_code = False
    for line in md.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if in_code or not line.startswith("#"):
            continue
        text = line.lstrip("#").strip()
        slug = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def broken_links(md: Path) -> list[str]:
    bad = []
    text = re.sub(r"```.*?```", "", md.read_text(), flags=re.S)
    for target in LINK.findall(text):
        if re.match(r"[a-z]+://|mailto:", target):
            continue  # external: not checked offline
        path, _, frag = target.partition("#")
        dest = (md.parent / path).resolve() if path else md
        if not dest.exists():
            bad.append(f"{md.name}: {target} (no such file)")
        elif frag and dest.suffix == ".md" and frag not in anchors(dest):
            bad.append(f"{md.name}: {target} (no such heading)")
    return bad


def test_readme_is_short_and_starts_with_the_two_commands():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines: move depth to docs/"
    top = "\n".join(lines[:20])
    assert "./scripts/setup.sh && .venv/bin/medasr flywheel --preset tiny" in top
    assert "./scripts/setup.sh --test && .venv/bin/python -m pytest -q" in top


def test_every_link_resolves():
    bad = [b for md in DOCS for b in broken_links(md)]
    assert not bad, "broken links: " + "; ".join(bad)


def test_the_link_check_can_fail(tmp_path):
    md = tmp_path / "x.md"
    md.write_text("# Title here\n\n[ok](#title-here) [gone](#nothing) [file](missing.md) [web](https://example.org)\n")
    assert broken_links(md) == ["x.md: #nothing (no such heading)", "x.md: missing.md (no such file)"]


def test_readme_mini_table_is_made_from_the_committed_hyps():
    """README's demo table is exactly what `medasr table` makes of docs/results/mini/cycle{0,1}_hyps.json (what
    scripts/mini_results.sh copies and splices), and those hyps agree with the committed compare.json."""
    import json

    from medasr.evaluate.design_table import design_table, read_hyps, readme_table, render_markdown

    res = REPO / "docs/results/mini"
    before, after = read_hyps(res / "cycle0_hyps.json"), read_hyps(res / "cycle1_hyps.json")
    t = design_table(before, after)
    assert readme_table((REPO / "README.md").read_text()) == render_markdown(t)
    assert (res / "table.md").read_text() == render_markdown(t)
    deltas = json.loads((res / "compare.json").read_text())["deltas"]
    assert t["n_rows"] == json.loads((res / "compare.json").read_text())["n_rows"]
    cell = next(c for c in t["cells"] if c["name"] == "seen term · new accent · new carrier")["ker"]
    ref = deltas["ker[term seen · voice new (new accent) · carrier new]"]
    assert (cell["before"], cell["after"], cell["n_clusters"]) == (ref["before"], ref["after"], ref["n_clusters"])