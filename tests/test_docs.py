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


def test_readme_mini_table_is_the_committed_compare():
    """The README's demo numbers are those of docs/results/mini/compare.json (what scripts/mini_results.sh copies)."""
    import json

    deltas = json.loads((REPO / "docs/results/mini/compare.json").read_text())["deltas"]
    readme = (REPO / "README.md").read_text()
    cells = {"seen term · training voice · new carrier": "term seen · voice seen · carrier new",
             "seen term · new speaker (American) · new carrier": "term seen · voice new (new speaker) · carrier new",
             "seen term · new accent (British) · new carrier": "term seen · voice new (new accent) · carrier new",
             "seen term · new engine (espeak-ng) · new carrier": "term seen · voice new (new engine) · carrier new"}
    for label, key in cells.items():
        d = deltas[f"ker[{key}]"]
        row = next(x for x in readme.splitlines() if x.startswith(f"| {label} |") or x.startswith(f"| **{label}** |"))
        assert f"| {d['n_clusters']} | {100 * d['before']:.1f} % |" in row and f"{100 * d['after']:.1f} %" in row, row
