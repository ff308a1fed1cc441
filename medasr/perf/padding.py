"""How much of each training batch is padding, with the fine-tune's own data pipeline (families.salm.data_config →
NeMo DataModule → Lhotse sampler). Padded audio frames still go through the encoder, and padded positions through
the LLM: the padding fraction is the compute that duration bucketing (train.bucketing) can give back."""

from __future__ import annotations

from pathlib import Path

from medasr.config import Config
from medasr.data.manifest import prompted_manifests
from medasr.families.salm import data_config


def padding_stats(cfg: Config, model, data_dir: Path, work: Path, n_batches: int = 30) -> dict:
    """Audio and token padding fractions over the first `n_batches` training batches of `data_dir`'s train.json."""
    from nemo.collections.speechlm2 import DataModule, SALMDataset
    from omegaconf import OmegaConf

    prompted = prompted_manifests(cfg, data_dir, work)
    dm = DataModule(OmegaConf.create(data_config(model, cfg, prompted)), tokenizer=model.tokenizer,
                    dataset=SALMDataset(model.tokenizer))
    real = total = tok_real = tok_total = rows = 0
    sizes = []
    for i, b in enumerate(dm.train_dataloader()):
        if i >= n_batches:
            break
        real += int(b["audio_lens"].sum())
        total += b["audios"].numel()
        tok_real += int((b["input_ids"] != model.text_pad_id).sum())
        tok_total += b["input_ids"].numel()
        rows += b["audios"].shape[0]
        sizes.append(b["audios"].shape[0])
    return {"batches": len(sizes), "rows": rows, "mean_batch": round(rows / max(1, len(sizes)), 2),
            "audio_padding": round(1 - real / total, 4), "token_padding": round(1 - tok_real / tok_total, 4),
            "audio_seconds": round(real / model.sampling_rate, 1), "padded_audio_seconds": round(total / model.sampling_rate, 1)}
