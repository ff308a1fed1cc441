import json
import shutil

import numpy as np
import soundfile as sf
from typer.testing import CliRunner

from medasr.cli import app
from medasr.data.manifest import read_manifest
from medasr.data.validate import validate_manifest


def _wav(path, seconds, sr=16000, channels=1, seed=0):
    x = np.random.default_rng(seed).uniform(-0.3, 0.3, size=(int(seconds * sr), channels)).astype(np.float32)
    sf.write(path, x if channels > 1 else x[:, 0], sr, subtype="PCM_16")
    return str(path)


def _manifest(tmp_path):
    good = _wav(tmp_path / "good.wav", 1.0, seed=1)
    good2 = _wav(tmp_path / "good2.wav", 2.0, seed=2)
    _wav(tmp_path / "good3.wav", 1.2, seed=5)
    stereo = _wav(tmp_path / "stereo22k.wav", 1.5, sr=22050, channels=2, seed=3)
    long = _wav(tmp_path / "long.wav", 41.0, seed=4)
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, np.float32), 16000)
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00garbage" * 10)
    copy = tmp_path / "copy_of_good.wav"
    shutil.copy(good, copy)
    row = lambda a, d, t="start metformin": json.dumps({"audio_filepath": a, "duration": d, "text": t})  # noqa: E731
    lines = [
        row(good, 1.0),                                   # 1 ok
        '{"audio_filepath": "x.wav", "duration": 1,',     # 2 malformed JSON
        None,                                             # 3 invalid UTF-8 (bytes below)
        json.dumps({"audio_filepath": good2, "text": "x"}),  # 4 missing duration
        row(str(tmp_path / "missing.wav"), 1.0),          # 5 missing file
        row(str(corrupt), 1.0),                           # 6 corrupt
        row(str(empty), 0.0),                             # 7 zero-length
        row(long, 41.0),                                  # 8 longer than 40 s
        row(good2, "two"),                                # 9 duration not a number
        row(good2, 5.0),                                  # 10 duration mismatch
        row(good2, 2.0, "   "),                           # 11 empty text
        row(good, 1.0),                                   # 12 duplicate path
        row(str(copy), 1.0),                              # 13 duplicate content
        row(stereo, 1.5),                                 # 14 wrong rate / channels
        row("good3.wav", 1.2),                            # 15 ok: relative to the manifest folder
    ]
    data = b"\n".join(b'{"audio_filepath": "caf\xe9.wav", "duration": 1, "text": "x"}' if l is None else l.encode() for l in lines)
    m = tmp_path / "m.json"
    m.write_bytes(data + b"\n")
    return m


def test_validator_reasons(tmp_path):
    rep = validate_manifest(_manifest(tmp_path))
    reasons = {r["line"]: r["reason"] for r in rep.rejected}
    assert rep.accepted == 2 and sorted(reasons) == list(range(2, 15))
    expect = {2: "malformed JSON", 3: "invalid UTF-8", 4: "missing field(s): duration", 5: "audio file not found",
              6: "unreadable or corrupt audio", 7: "zero-length audio", 8: "longer than 40 s", 9: "is not a number",
              10: "does not match the audio", 11: "empty or whitespace-only text", 12: "same file as line 1",
              13: "identical content to line 1", 14: "22050 Hz, 2 channel(s)"}
    for line, words in expect.items():
        assert words in reasons[line], (line, reasons[line])
    assert next(r for r in rep.rejected if r["line"] == 5)["audio_filepath"].endswith("missing.wav")


def test_validate_cli_exit_codes_fix_and_skip(tmp_path):
    m = _manifest(tmp_path)
    r = CliRunner()
    res = r.invoke(app, ["validate", str(m), "--report", str(tmp_path / "R.json")])
    assert res.exit_code == 1
    rep = json.loads((tmp_path / "R.json").read_text())
    assert rep["accepted"] == 2 and len(rep["rejected"]) == 13
    assert set(rep["rejected"][0]) == {"line", "audio_filepath", "reason"}
    # --fix repairs rate/channels and the duration mismatch, and lists each repair; the rest stays rejected
    res = r.invoke(app, ["validate", str(m), "--report", str(tmp_path / "F.json"), "--fix", "--out", str(tmp_path / "clean.json")])
    assert res.exit_code == 1
    rep = json.loads((tmp_path / "F.json").read_text())
    assert rep["accepted"] == 4 and {f["line"] for f in rep["fixed"]} == {10, 14}
    clean = read_manifest(tmp_path / "clean.json")
    fixed = [c for c in clean if "fixed_audio" in c["audio_filepath"]][0]
    info = sf.info(fixed["audio_filepath"])
    assert (info.samplerate, info.channels) == (16000, 1) and abs(fixed["duration"] - 1.5) < 0.01
    # --skip-bad continues with the good rows, still reporting the bad ones
    res = r.invoke(app, ["validate", str(m), "--report", str(tmp_path / "S.json"), "--skip-bad", "--out", str(tmp_path / "ok.json")])
    assert res.exit_code == 0 and len(read_manifest(tmp_path / "ok.json")) == 2
    assert len(json.loads((tmp_path / "S.json").read_text())["rejected"]) == 13
