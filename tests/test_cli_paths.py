"""Every subcommand given a missing file, a missing folder, or a folder without the file it needs
answers in one line naming the path (and the fix), exit 2, never a traceback; a path-like --model that does not exist
is never sent to the Hub (it was: an 88-line traceback ending in HFValidationError)."""

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medasr.cli import app


@pytest.fixture(scope="module")
def place(tmp_path_factory):
    d = tmp_path_factory.mktemp("paths")
    (d / "empty").mkdir()
    subprocess.run(["sox", "-n", "-r", "16000", "-c", "1", str(d / "a.wav"), "synth", "0.5", "sine", "440"], check=True)
    (d / "m.json").write_text(f'{{"audio_filepath": "{d / "a.wav"}", "duration": 0.5, "text": "hello"}}\n')
    return d


def cases(d: Path):
    miss, empty = str(d / "missing" / "x"), str(d / "empty")
    return [
        (["transcribe", "--model", miss, str(d / "a.wav")], miss),
        (["transcribe", "--model", "missing.nemo", str(d / "a.wav")], "missing.nemo"),
        (["transcribe", "--model", empty, str(d / "a.wav")], empty),
        (["transcribe", "--model", empty, miss], miss),
        (["eval", "-p", "tiny", "--model", miss, "--manifest", str(d / "m.json"), "--run-dir", str(d / "ev")], miss),
        (["eval", "-p", "tiny", "--run-dir", miss], miss),
        (["eval", "-p", "tiny", "--manifest", miss + ".json", "--run-dir", empty], miss),
        (["score", miss + ".json", "--out", str(d / "o1")], miss),
        (["compare", empty, empty, "--out", str(d / "o2")], empty),
        (["compare", miss, miss, "--out", str(d / "o2")], miss),
        (["gate", miss], miss),
        (["export", "-p", "tiny", "--run-dir", empty], empty),
        (["export", "-p", "tiny", "--run-dir", empty, "--ckpt", miss], miss),
        (["export", "-p", "tiny", "--run-dir", empty, "--ckpt", empty], empty),
        (["average", miss, miss, "--out", str(d / "a.ckpt")], miss),
        (["validate", miss + ".json", "--report", str(d / "r.json")], miss),
        (["train", "-p", "tiny", "--run-dir", empty], empty),
        (["sync", "--run-dir", miss, "--to", "s3://bucket/p"], miss),
        (["build", "-p", "tiny", "--source", f"folder:{miss}", "--run-dir", str(d / "b1")], miss),
        (["build", "-p", "tiny", "--source", "primock57", "--local", miss, "--run-dir", str(d / "b2")], miss),
        (["flywheel", "-p", miss + ".yaml"], miss),
    ]


def test_a_wrong_path_gets_one_line_not_a_traceback(place, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for args, path in cases(place):
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 2, (args, res.output, res.exception)
        assert res.exception is None or isinstance(res.exception, SystemExit), (args, repr(res.exception))
        assert path in res.output.replace("\n", ""), (args, res.output)
    assert not (place / "missing").exists() and not (place / "ev").exists()  # nothing built under a wrong path


def test_the_installed_command_too(place):
    """The same through the console script as a user runs it (the entry point, not the test runner)."""
    r = subprocess.run([str(Path(sys.executable).parent / "medasr"), "score", str(place / "nope.json"), "--out",
                        str(place / "o")], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr + r.stdout and "nope.json" in r.stdout + r.stderr
