"""Build the `tiny-parakeet` base fully offline: a random-init FastConformer-TDT in the Parakeet-TDT layout.

Same architecture family as nvidia/parakeet-tdt-0.6b-v2 (8x dw_striding FastConformer encoder, LSTM prediction net,
joint with TDT duration outputs {0..4}, SentencePiece BPE tokenizer), shrunk to ~0.3 M parameters, saved as a .nemo
so every later stage loads it with `ASRModel.restore_from` exactly as it loads the real checkpoint.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from omegaconf import OmegaConf, open_dict

from medasr.config import Config, TinyASRConfig
from medasr.models.salm import quiet_nemo
from medasr.models.tiny import tokenizer_corpus


def train_tokenizer(out_dir: Path, vocab_size: int) -> Path:
    """SentencePiece BPE (NeMo's own helper) on generic + medical-template text; returns the tokenizer folder."""
    from nemo.collections.common.tokenizers.sentencepiece_tokenizer import create_spt_model

    out_dir.mkdir(parents=True, exist_ok=True)
    corpus = out_dir / "corpus.txt"
    corpus.write_text("\n".join(tokenizer_corpus()) + "\n")
    create_spt_model(str(corpus), vocab_size=vocab_size, sample_size=-1, do_lower_case=False, tokenizer_type="bpe",
                     output_dir=str(out_dir))
    return out_dir


def tdt_config(tok_dir: Path, t: TinyASRConfig) -> dict:
    durations = list(t.tdt_durations)
    return {
        "sample_rate": 16000,
        "compute_eval_loss": True,  # val_loss for the before/after check (Parakeet's own config sets it false)
        "log_prediction": False,
        "skip_nan_grad": False,
        "model_defaults": {"enc_hidden": t.d_model, "pred_hidden": t.pred_hidden, "joint_hidden": t.joint_hidden,
                           "tdt_durations": durations, "num_tdt_durations": len(durations)},
        "tokenizer": {"dir": str(tok_dir), "type": "bpe"},
        "train_ds": None,
        "validation_ds": None,
        "test_ds": None,
        "preprocessor": {
            "_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
            "sample_rate": 16000, "normalize": "per_feature", "window_size": 0.025, "window_stride": 0.01,
            "window": "hann", "features": t.mel_features, "n_fft": 512, "frame_splicing": 1, "dither": 1e-5, "pad_to": 0,
        },
        "spec_augment": {"_target_": "nemo.collections.asr.modules.SpectrogramAugmentation", "freq_masks": 2,
                         "time_masks": 2, "freq_width": 27, "time_width": 0.05},
        "encoder": {
            "_target_": "nemo.collections.asr.modules.ConformerEncoder", "feat_in": t.mel_features, "feat_out": -1,
            "n_layers": t.layers, "d_model": t.d_model, "subsampling": "dw_striding", "subsampling_factor": 8,
            "subsampling_conv_channels": t.d_model, "causal_downsampling": False, "ff_expansion_factor": 4,
            "self_attention_model": "rel_pos", "n_heads": t.heads, "att_context_size": [-1, -1], "xscaling": True,
            "untie_biases": True, "pos_emb_max_len": 5000, "conv_kernel_size": 9, "conv_norm_type": "batch_norm",
            "dropout": 0.1, "dropout_emb": 0.0, "dropout_att": 0.1,
        },
        "decoder": {"_target_": "nemo.collections.asr.modules.RNNTDecoder", "normalization_mode": None,
                    "random_state_sampling": False, "blank_as_pad": True,
                    "prednet": {"pred_hidden": t.pred_hidden, "pred_rnn_layers": 1, "t_max": None, "dropout": 0.1}},
        "joint": {"_target_": "nemo.collections.asr.modules.RNNTJoint", "log_softmax": None, "preserve_memory": False,
                  "fuse_loss_wer": True, "fused_batch_size": 4,
                  "jointnet": {"joint_hidden": t.joint_hidden, "activation": "relu", "dropout": 0.1},
                  "num_extra_outputs": len(durations)},
        "decoding": {"strategy": "greedy_batch", "model_type": "tdt", "durations": durations,
                     "greedy": {"max_symbols": 10}},
        # Parakeet-TDT's loss. On CPU the trainer swaps in medasr's CPU TDT loss (NeMo's kernel is CUDA-only).
        "loss": {"loss_name": "tdt", "tdt_kwargs": {"fastemit_lambda": 0.0, "clamp": -1.0, "durations": durations,
                                                    "sigma": 0.05, "omega": 0.1}},
        "optim": {"name": "adamw", "lr": 3e-4},
    }


def build_tiny_parakeet(cfg: Config, out_root: Path, seed: int = 0) -> Path:
    """Create (once) out_root/base.nemo; returns its path."""
    out = out_root / "base.nemo"
    if out.exists():
        return out
    quiet_nemo()
    from nemo.collections.asr.models import EncDecRNNTBPEModel

    out_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_root) as tmp:
        tok = train_tokenizer(Path(tmp) / "tokenizer", cfg.model.tiny_asr.vocab_size)
        torch.manual_seed(seed)
        model = EncDecRNNTBPEModel(cfg=OmegaConf.create(tdt_config(tok, cfg.model.tiny_asr)))
        conf = model.cfg
        with open_dict(conf):  # dataset sections as a released .nemo has them (transcribe reads validation_ds)
            conf.train_ds = {"manifest_filepath": None, "sample_rate": 16000, "batch_size": 4, "shuffle": True,
                             "use_start_end_token": False}
            conf.validation_ds = {"manifest_filepath": None, "sample_rate": 16000, "batch_size": 4, "shuffle": False,
                                  "use_start_end_token": False}
        model.cfg = conf
        partial = out_root / "base.nemo.partial"
        model.save_to(str(partial))  # the tokenizer is packed into the .nemo
        partial.replace(out)
    return out
