"""The package's dependency graph stays one-directional (cli → flywheel → stages → families → models → data/config,
ops beside), with no import circle, counting imports inside functions too (a lazy import hides a circle, it does not
remove it)."""

import ast
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PKG = REPO / "medasr"


def import_graph(pkg: Path = PKG) -> dict[str, set[str]]:
    """module → the medasr modules it imports, wherever the import statement sits."""
    mods = {}
    for p in pkg.rglob("*.py"):
        parts = list(p.relative_to(pkg.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = p

    def owner(name: str) -> str:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name

    graph = {m: set() for m in mods}
    for m, p in mods.items():
        package = m if p.name == "__init__.py" else m.rpartition(".")[0]
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                names = [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for n in names:
                t = owner(n) if n.startswith("medasr") else ""
                if t and t not in (m, "medasr"):
                    graph[m].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_circle():
    circles = cycles(import_graph())
    assert not circles, "import circles (break them by moving what both sides share into a lower module): " + "; ".join(
        " ↔ ".join(c) for c in circles)


def test_the_check_finds_a_circle(tmp_path):
    pkg = tmp_path / "medasr"
    (pkg / "ops").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "ops" / "__init__.py").write_text("")
    (pkg / "ops" / "a.py").write_text("from medasr.ops.b import x\n")
    (pkg / "ops" / "b.py").write_text("def f():\n    from . import a\n")  # lazy and relative: still a circle
    assert cycles(import_graph(pkg)) == [["medasr.ops.a", "medasr.ops.b"]]


BOTTOM = {"medasr.config", "medasr.prompts", "medasr.runstate", "medasr.audio", "medasr.atomic", "medasr.fingerprint",
          "medasr.console", "medasr.normalize", "medasr.errors", "medasr.voices"}
STAGES = ("medasr.train", "medasr.evaluate", "medasr.transcribe")
FAMILIES = "medasr.families"  # one module per model family, below the stages that use them
TOP = ("medasr.flywheel", "medasr.cli")
BESIDE = ("medasr.ops", "medasr.perf", "medasr.rehearse")  # tools that may use any layer, used only by the top


def layer_violations(g: dict[str, set[str]]) -> list[str]:
    """cli → flywheel → stages → families → models → data and the bottom modules; ops, perf and rehearse beside."""
    rules = [(lambda m: m in BOTTOM, ("medasr.data",)),  # the ground floor: data builds on it, not the reverse
             (lambda m: m.startswith("medasr.data") or m in BOTTOM,
              ("medasr.models", FAMILIES, *STAGES, *TOP, *BESIDE)),
             (lambda m: m.startswith("medasr.models"), (FAMILIES, *STAGES, *TOP, *BESIDE)),
             (lambda m: m.startswith(FAMILIES), (*STAGES, *TOP, *BESIDE)),
             (lambda m: m.startswith(STAGES), (*TOP, "medasr.rehearse")),
             (lambda m: m.startswith(BESIDE), ("medasr.cli",))]
    return [f"{m} imports {d}" for m, deps in sorted(g.items()) for applies, banned in rules if applies(m)
            for d in sorted(deps) if d.startswith(banned)]


def test_dependencies_point_down():
    assert not (bad := layer_violations(import_graph())), "; ".join(bad)
    assert not [d for d in import_graph()["medasr.transcribe"] if d.startswith("medasr.train")]  # loading: models/


def test_the_layer_check_can_fail():
    assert layer_violations({"medasr.data.lexicon": {"medasr.evaluate.normalize"}, "medasr.models.salm": {"medasr.ops.x"},
                             "medasr.train.x": {"medasr.flywheel"}, "medasr.config": {"medasr.data.voices"},
                             "medasr.families.salm": {"medasr.train.trainer"},
                             "medasr.models.load": {"medasr.families"}}) == [
        "medasr.config imports medasr.data.voices", "medasr.data.lexicon imports medasr.evaluate.normalize",
        "medasr.families.salm imports medasr.train.trainer", "medasr.models.load imports medasr.families",
        "medasr.models.salm imports medasr.ops.x", "medasr.train.x imports medasr.flywheel"]


def test_help_is_fast():
    """`medasr --help` imports no torch or NeMo: ≤ 0.5 s (best of three, after a warm-up)."""
    cmd = [sys.executable, "-m", "medasr.cli", "--help"]
    subprocess.run(cmd, cwd=REPO, capture_output=True, check=True)
    best = min(_timed(cmd) for _ in range(3))
    assert best <= 0.5, f"medasr --help took {best:.2f} s"
    mods = subprocess.run([sys.executable, "-c", "import sys, medasr.cli; print(' '.join(sys.modules))"], cwd=REPO,
                          capture_output=True, text=True, check=True).stdout.split()
    assert not {"torch", "nemo", "lightning"} & set(mods)


def _timed(cmd) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, capture_output=True, check=True)
    return time.perf_counter() - t


def test_every_model_family_is_a_kind_the_config_accepts():
    """config.KINDS (checked at config load, before any model library is imported) names exactly the families."""
    from medasr.config import KINDS
    from medasr.families import FAMILIES

    assert set(KINDS) == set(FAMILIES) and all(FAMILIES[k].kind == k for k in FAMILIES)
