"""medasr — a clinical ASR flywheel around NeMo speechlm2 SALM (Canary-Qwen-2.5B)."""

__version__ = "0.1.0"
