"""Speed/memory switches for a SALM, shared by the fine-tune and `medasr bench` (docs/PERFORMANCE.md).

Both use NeMo's and Hugging Face's own mechanisms, so what the benchmark measures is what training runs:
- encoder SDPA: NeMo's FastConformer attention modules carry a `use_pytorch_sdpa` switch (the rel-pos bias goes in
  as the attention mask); the Qwen3 LLM already uses torch SDPA (transformers' default attention);
- activation checkpointing: NeMo's `AudioPerceptionModule.set_activation_checkpointing` wraps the subsampling and
  every Conformer layer; transformers' `gradient_checkpointing_enable` does the LLM's decoder layers. The frozen LLM
  still needs its activations for the gradient that flows back to the audio embeddings, so it gains as much as the
  encoder;
- logits only at target positions (`train.target_logits_only`): SALM's training step projects every position (audio
  frames, prompt, padding) onto the vocabulary (151,936 words in the release) and the loss then ignores all but the
  transcript tokens. `target_loss` runs the LLM body, gathers the hidden states the loss reads and projects only
  those: the same loss and gradients (tested), without the (positions × vocabulary) logits that dominate memory once
  the layers are checkpointed. The training step that uses it is `MedasrSALM.training_step` (models/salm_train.py).
"""

from __future__ import annotations

import torch


def apply_speed(model, train_cfg) -> dict:
    """Apply train.encoder_sdpa / activation_checkpointing / target_logits_only to a SALM; returns what was switched on."""
    done = {"encoder_sdpa": False, "activation_checkpointing": False, "target_logits_only": False}
    if train_cfg.encoder_sdpa:
        n = 0
        for m in model.perception.encoder.modules():
            if hasattr(m, "use_pytorch_sdpa"):
                m.use_pytorch_sdpa = True
                n += 1
        done["encoder_sdpa"] = n > 0
    if train_cfg.activation_checkpointing:
        model.perception.set_activation_checkpointing(True)
        # non-reentrant: works when the checkpointed block's own weights are frozen (the inputs carry the grad)
        model.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        done["activation_checkpointing"] = True
    if train_cfg.target_logits_only:
        if not hasattr(type(model), "target_logits_only"):
            raise TypeError(f"train.target_logits_only needs the SALM medasr trains (medasr.models.salm_train."
                            f"MedasrSALM), not {type(model).__name__}: load it with load_base(..., cls=MedasrSALM)")
        model.target_logits_only = True  # read by MedasrSALM.training_step
        done["target_logits_only"] = True
    return done


def target_loss(model, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, number of target tokens) of SALM's next-token cross-entropy, with logits computed only where
    `target_ids` is not -100. Equal to SALM.training_step's loss: same positions, same sum / count."""
    llm = model.llm
    out = llm.get_decoder()(inputs_embeds=inputs["input_embeds"], attention_mask=inputs["attention_mask"],
                            use_cache=False, return_dict=True)
    targets = inputs["target_ids"]
    keep = targets != -100
    logits = llm.lm_head(out.last_hidden_state[keep])  # (n_targets, vocab); PEFT forwards the attribute
    n = keep.sum()
    return torch.nn.functional.cross_entropy(logits, targets[keep], reduction="sum") / n, n


def step_inputs(model, batch: dict) -> dict:
    """What SALM.training_step does before its loss: frozen modules to eval mode (no dropout), then prepare_inputs."""
    from nemo.collections.speechlm2.parts.optim_setup import is_frozen

    for m in (model.perception.preprocessor, model.perception.encoder, model.llm):
        if is_frozen(m):
            m.eval()
    return model.prepare_inputs(batch)


def state_key(name: str) -> str:
    """A parameter's name as state_dict() spells it: activation-checkpoint wrappers add a segment to
    named_parameters() names but strip it from state-dict keys."""
    return name.replace("_checkpoint_wrapped_module.", "")
