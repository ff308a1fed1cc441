"""The SALM medasr trains: NeMo's speechlm2 SALM with the training step that runs written out here, so a reader of
the fine-tune finds it (Lightning calls `MedasrSALM.training_step`; nothing is swapped in at run time).

One change to NeMo's step: with `train.target_logits_only` (the default) it projects only the transcript positions
onto the vocabulary (`medasr.models.speed.target_loss`) instead of every audio frame, prompt and padding position —
the same loss and gradients (tests/test_perf.py), without the (positions × 151,936) logits that dominate memory.
Freezing, validation, `generate` and the optimizer built from `model.cfg` are NeMo's own.
"""

from __future__ import annotations

import torch
from nemo.collections.speechlm2.models import SALM

from medasr.models.speed import target_loss, step_inputs


class MedasrSALM(SALM):
    """NeMo's SALM; `target_logits_only` (set by medasr.models.speed.apply_speed) picks the training step's loss."""

    target_logits_only: bool = False

    def training_step(self, batch: dict, batch_idx: int):
        if not self.target_logits_only:
            return super().training_step(batch, batch_idx)
        # NeMo's step with target_loss in place of full logits: same freezing, loss and logged values
        inputs = step_inputs(self, batch)
        loss, n = target_loss(self, inputs)
        B, T = inputs["input_embeds"].shape[:2]
        lr = self.trainer.optimizers[0].param_groups[0]["lr"] if self._trainer is not None else 0
        ans = {
            "loss": loss,
            "learning_rate": torch.as_tensor(lr),
            "batch_size": B,
            "sequence_length": T,
            "num_frames": n.to(torch.float32),
            "target_to_input_ratio": n / (B * T),
            "padding_ratio": (batch["input_ids"] != self.text_pad_id).long().sum() / batch["input_ids"].numel(),
        }
        self.log("loss", loss, on_step=True, prog_bar=True)
        self.log_dict({k: v for k, v in ans.items() if k != "loss"}, on_step=True)
        return ans
