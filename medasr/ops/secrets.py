"""Secrets come from the environment or a `.env` file (python-dotenv) and never leave the process in clear text.

`load_secrets()` reads `.env` (without overriding variables already set) and installs a logging filter on the root
logger and on the loggers medasr's dependencies use, so that any secret *value* that reaches a log record is replaced
by `***<NAME>***`. Config objects never hold secrets (they are read from the environment where used), so W&B configs,
checkpoint hyper-parameters and reports cannot carry them.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

SECRET_NAMES = ("RUNPOD_API_KEY", "WANDB_API_KEY", "HF_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                "AWS_SESSION_TOKEN")
_MIN_LEN = 6  # shorter values would redact ordinary words


def secret_values() -> dict[str, str]:
    return {n: v for n in SECRET_NAMES if (v := os.environ.get(n)) and len(v) >= _MIN_LEN}


def redact(text: str) -> str:
    for name, value in sorted(secret_values().items(), key=lambda kv: -len(kv[1])):
        text = text.replace(value, f"***{name}***")
    return text


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if secret_values():
            msg = record.getMessage()
            clean = redact(msg)
            if clean != msg:
                record.msg, record.args = clean, None
        return True


_installed = False


def load_secrets(env_file: str | Path | None = None) -> list[str]:
    """Load `.env` (cwd or the given file) and install the redacting filter. Returns the secret names present."""
    global _installed
    from dotenv import load_dotenv

    load_dotenv(env_file or Path.cwd() / ".env", override=False)
    if not _installed:
        f = RedactingFilter()
        for name in ("", "nemo_logger", "lightning.pytorch", "lightning", "wandb", "botocore", "urllib3", "runpod"):
            logging.getLogger(name).addFilter(f)
        for h in logging.getLogger().handlers:
            h.addFilter(f)
        _installed = True
    return sorted(secret_values())
