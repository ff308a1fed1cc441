"""One error base: every error class medasr defines derives from MedasrError (medasr/errors.py), which the CLI maps
in one place (headline, message, exit code). Checked on the source (ast), so no module needs importing."""

import ast
from pathlib import Path

from typer.testing import CliRunner

from medasr.cli import app

PACKAGE = Path(__file__).resolve().parents[1] / "medasr"
# stdlib-only scripts that run before the venv exists, outside the package's imports
OUTSIDE = {"PutError": "medasr/ops/s3put.py runs as a bare script on a pod before setup"}


def _error_classes() -> dict[str, tuple[str, list[str]]]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.name.endswith(("Error", "Exception")):
                bases = [b.id if isinstance(b, ast.Name) else ast.unparse(b) for b in node.bases]
                found[node.name] = (str(path.relative_to(PACKAGE.parent)), bases)
    return found


def test_every_error_medasr_defines_is_a_medasr_error():
    classes = _error_classes()
    assert len(classes) >= 20  # the scan sees them

    def rooted(name, seen=()):
        if name == "MedasrError":
            return True
        if name not in classes or name in seen:
            return False
        return any(rooted(b, seen + (name,)) for b in classes[name][1])

    loose = {n: where for n, (where, _) in classes.items() if not rooted(n) and n not in OUTSIDE}
    assert loose == {}, f"derive these from medasr.errors.MedasrError (or InputError / RunError): {loose}"


def test_the_cli_maps_a_medasr_error_once(tmp_path):
    """A RunError from deep inside a command: its headline, its message, exit 1, no traceback; an InputError: exit 2."""
    bad = tmp_path / "m.json"
    bad.write_text('{"audio_filepath": "a.wav", "duration": 1.0}\n')  # no text: a bad row, named
    r = CliRunner().invoke(app, ["score", str(bad), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "missing field(s)" in r.output and "Traceback" not in r.output
    run = tmp_path / "run"  # training "done", but no validation rows to choose a checkpoint on: SelectionError
    (run / "train").mkdir(parents=True)
    (run / "train" / "DONE").write_text('{"global_step": 2}')
    (run / "data").mkdir()
    (run / "data" / "val.json").write_text("")
    r = CliRunner().invoke(app, ["export", "-p", "tiny-whisper", "--run-dir", str(run)])
    # (the model libraries print their own notices first: look from the headline's line on)
    said = r.output[r.output.find("checkpoint selection stopped:"):]
    assert r.exit_code == 1 and said.startswith("checkpoint selection stopped:")
    assert "val.json is empty: no rows to select checkpoints on" in said
    assert "Traceback" not in r.output
