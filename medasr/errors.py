"""One base for every error medasr raises on purpose. The CLI maps this one class (medasr.cli._App): one red line —
the class's headline, then the message, which names the file, row or setting and the fix — and the class's exit code;
the flywheel records the stage it came from in RUN/FAILED. Anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations


class MedasrError(Exception):
    """Base of medasr's own errors: exit 2 (something the user gives — a path, a file, a row, a setting — is wrong)."""

    exit_code = 2
    headline = ""  # shown before the message, e.g. "smoke run failed:"
    stage: str | None = None  # the flywheel stage it ended (set when RUN/FAILED is written)


class InputError(MedasrError, ValueError):
    """A bad input the user can fix: a manifest row, a setting, an argument."""


class RunError(MedasrError, RuntimeError):
    """The run cannot succeed as configured (exit 1): the flywheel marks RUN/FAILED and the supervisor does not
    relaunch it; fix the reason and run again."""

    exit_code = 1
