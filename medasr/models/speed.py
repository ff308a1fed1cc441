"""Speed/memory switches for a SALM, shared by the fine-tune and `medasr bench` (docs/PERFORMANCE.md).

Both use NeMo's and Hugging Face's own mechanisms, so what the benchmark measures is what training runs:
- encoder SDPA: NeMo's FastConformer attention modules carry a `use_pytorch_sdpa` switch (the rel-pos bias goes in
  as the attention mask); the Qwen3 LLM already uses torch SDPA (transformers' default attention);
- activation checkpointing: NeMo's `AudioPerceptionModule.set_activation_checkpointing` wraps the subsampling and
  every Conformer layer; transformers' `gradient_checkpointing_enable` does the LLM's decoder layers. The frozen LLM
  still needs its activations for the gradient that flows back to the audio embeddings, so it gains as much as the
  encoder.
"""

from __future__ import annotations


def apply_speed(model, train_cfg) -> dict:
    """Apply train.encoder_sdpa / train.activation_checkpointing to a SALM; returns what was switched on."""
    done = {"encoder_sdpa": False, "activation_checkpointing": False}
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
    return done


def state_key(name: str) -> str:
    """A parameter's name as state_dict() spells it: activation-checkpoint wrappers add a segment to
    named_parameters() names but strip it from state-dict keys."""
    return name.replace("_checkpoint_wrapped_module.", "")
