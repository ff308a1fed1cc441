"""NeMo ASRModel (Parakeet-TDT): load, refuse unsupported bases, prepare a stock full fine-tune, transcribe.

The second model path of the flywheel: what NeMo's examples/asr/speech_to_text_finetune.py does with
`+init_from_pretrained_model=nvidia/parakeet-tdt-0.6b-v2`, driven by our own trainer so checkpointing, resume,
W&B, S3 and the supervisor are the same as for the SALM path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from medasr.errors import InputError
from medasr.models.salm import hub_ref, quiet_nemo
from medasr.models.tdt_loss import use_cpu_tdt_loss

# Bases we refuse to fine-tune, with the reason shown to the user.
REFUSED = {
    "nvidia/nemotron-speech-streaming-en-0.6b": (
        "stock SFT of the cache-aware streaming Nemotron model collapses its output to <unk> tokens (NVIDIA's clinical "
        "ASR recipe). Fine-tune nvidia/parakeet-tdt-0.6b-v2 (preset parakeet-tdt-0.6b-v2) instead"
    ),
}


class UnsupportedBaseError(InputError):
    pass


def check_base(base: str | Path) -> None:
    name = str(base).lower().rstrip("/")
    for model_id, reason in REFUSED.items():
        if name == model_id or name.endswith(model_id.split("/")[1]) or name.endswith(model_id.split("/")[1] + ".nemo"):
            raise UnsupportedBaseError(f"refusing to fine-tune {base}: {reason}")


def load_base(base: str | Path, map_location: str = "cpu"):
    """`ASRModel.restore_from` on a local .nemo, `ASRModel.from_pretrained` on a Hub id (nvidia/parakeet-tdt-0.6b-v2)."""
    check_base(base)
    quiet_nemo()
    from nemo.collections.asr.models import ASRModel

    p = Path(base)
    if p.suffix == ".nemo":
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such .nemo file")
        return ASRModel.restore_from(str(p.resolve()), map_location=map_location)
    repo, rev = hub_ref(base)
    if rev is None:
        return ASRModel.from_pretrained(repo, map_location=map_location)
    # ASRModel.from_pretrained takes no revision: fetch the pinned .nemo (the repo's name + .nemo, as NeMo looks it up)
    from huggingface_hub import hf_hub_download

    nemo = hf_hub_download(repo, f"{repo.split('/')[-1]}.nemo", revision=rev)
    return ASRModel.restore_from(nemo, map_location=map_location)


def param_table(model) -> dict:
    """Trainable/frozen parameter counts per top-level module (preprocessor, encoder, decoder, joint)."""
    table: dict[str, dict[str, int]] = {}
    for name, p in model.named_parameters():
        g = table.setdefault(name.split(".")[0], {"trainable": 0, "frozen": 0})
        g["trainable" if p.requires_grad else "frozen"] += p.numel()
    return table


def switch_tokenizer(model, tokenizer_dir: str | Path | None) -> None:
    """Swap in a SentencePiece tokenizer; the prediction net and joint are rebuilt for the new vocabulary (they
    restart from random init, so this needs more data and steps than keeping the base's tokenizer)."""
    if not tokenizer_dir:
        return
    tok = Path(tokenizer_dir)
    if not (tok / "tokenizer.model").exists():
        raise FileNotFoundError(f"model.tokenizer_dir={tok}: no tokenizer.model (a SentencePiece folder) there")
    model.change_vocabulary(new_tokenizer_dir=str(tok.resolve()), new_tokenizer_type="bpe")
    _rebuild_loss(model)


def _rebuild_loss(model) -> None:
    """NeMo 3.0.0's change_vocabulary rebuilds the loss as a default RNN-T loss with num_classes counting the TDT
    duration outputs as tokens (wrong blank id, no TDT). Rebuild it from the model's loss config, as __init__ does."""
    from nemo.collections.asr.losses.rnnt import RNNTLoss

    loss_name, loss_kwargs = model.extract_rnnt_loss_cfg(model.cfg.get("loss", None))
    num_classes = model.joint.num_classes_with_blank - 1
    if loss_name == "tdt":
        num_classes -= model.joint.num_extra_outputs
    model.loss = RNNTLoss(num_classes=num_classes, loss_name=loss_name, loss_kwargs=loss_kwargs,
                          reduction=model.cfg.get("rnnt_reduction", "mean_batch"))
    if model.joint.fuse_loss_wer:
        model.joint.set_loss(model.loss)


def prepare_for_training(model, cfg) -> dict:
    """Full SFT: every parameter trains (the family applies the preset's optimizer and schedule, medasr.models.optim).
    Optionally switch tokenizer; on CPU swap in the CPU TDT loss."""
    from omegaconf import open_dict

    switch_tokenizer(model, cfg.model.tokenizer_dir)
    if cfg.train.accelerator == "cpu":
        use_cpu_tdt_loss(model)
    for p in model.parameters():
        p.requires_grad_(True)
    # The release config turns the validation loss off (long eval audio); our val rows are <= 40 s and the
    # before/after val_loss check needs it.
    model.compute_eval_loss = True
    with open_dict(model.cfg):
        model.cfg.compute_eval_loss = True
    return param_table(model)


def setup_data(model, cfg, data_dir: Path) -> None:
    """Train/val loaders through NeMo's Lhotse pipeline, reading our NeMo manifests as they are. No duration filter:
    preflight already rejected (and reported) rows that are too long, so nothing is dropped silently here."""
    common = {"sample_rate": model.cfg.sample_rate, "batch_size": cfg.train.batch_size, "use_lhotse": True,
              "num_workers": cfg.train.num_workers, "use_start_end_token": False}
    model.setup_training_data(common | {"manifest_filepath": str((data_dir / "train.json").resolve()), "shuffle": True,
                                        "seed": cfg.train.seed, "shard_seed": "randomized"})
    model.setup_validation_data(common | {"manifest_filepath": str((data_dir / "val.json").resolve()), "shuffle": False})


@torch.no_grad()
def transcribe_arrays(model, audios: list[np.ndarray], batch_size: int = 16) -> list[str]:
    """Greedy transcription of 16 kHz mono float arrays with the model's own `transcribe` (TDT label-looping)."""
    model.eval()
    out = model.transcribe(list(audios), batch_size=batch_size, verbose=False)
    if isinstance(out, tuple):  # some NeMo versions return (best, all) hypotheses
        out = out[0]
    return [(h.text if hasattr(h, "text") else str(h)).strip() for h in out]
