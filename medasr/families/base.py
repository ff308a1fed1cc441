"""The model-family interface: everything the stages (train, evaluate, transcribe), the flywheel and the CLI need from a
model family, in the order of the workflow. Each family implements it in one module (medasr/families/salm.py,
medasr/families/asr.py) that reads from top to bottom in the same order; nothing outside a family's module branches
on which family it is. Adding a family = its module, its entry in medasr/families/__init__.py and config.KINDS,
a preset and tests.

   base        check_base · build_tiny · load_base · claims / load (any model argument of this family)
   preflight   check_model: the base loads fully, the trainable parameters are the intended ones, the data renders
   training    prepare: the model ready for Lightning (recipe applied, data loaders), whose `training_step` is the one
               that runs · apply_recipe: the preset's optimizer and schedule in the schema this family's NeMo reads
   decoding    prompt_rows · decoder · chunk_policy (long audio)
   checkpoint  load_checkpoint: a training checkpoint into the base (checkpoint selection, export)
   export      export · read_export_meta · write_model_card; reloading an export is `load`
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from medasr.config import Config
from medasr.errors import InputError, RunError


class ModelPreflightError(RunError):
    headline = "model preflight failed:"


def is_rank_zero() -> bool:
    """Before the Trainer exists: Lightning's DDP launcher starts ranks > 0 with LOCAL_RANK/NODE_RANK set."""
    return int(os.environ.get("LOCAL_RANK", 0)) == 0 and int(os.environ.get("NODE_RANK", 0)) == 0


@dataclass(frozen=True)
class ChunkPolicy:
    max_single_s: float  # audio up to this long is transcribed in one pass
    chunk_s: float
    overlap_s: float

    def __post_init__(self):
        if not 0 <= self.overlap_s < self.chunk_s <= self.max_single_s:
            raise InputError(f"need 0 <= overlap ({self.overlap_s}) < chunk ({self.chunk_s}) <= max single pass "
                             f"({self.max_single_s}) seconds")


@dataclass
class Loaded:
    """A model ready to decode, with the family that decodes it and the prompts it was fine-tuned with (SALM)."""

    model: Any
    kind: str  # the family's model.kind
    source: str  # the model argument it came from
    prompt: Optional[str] = None
    prompts_by_source: dict = field(default_factory=dict)


# decode(audios, contexts): contexts[i] is audio i's prompt text (None: the default prompt; families without prompts
# ignore it)
Decoder = Callable[[list, list], list[str]]


class ModelFamily(ABC):
    kind: str  # the preset's model.kind
    export_name: str  # RUN/<export_name>: what `medasr export` writes and `transcribe --model` loads
    chunk_policy: ChunkPolicy  # how `transcribe` cuts long audio for this family
    optim_schema: str  # medasr.models.optim.SCHEMAS: how this family's NeMo reads an optimizer from model.cfg
    prompted: bool = False  # decodes each row under a text prompt (`context`; model.prompt, model.prompts_by_source)

    # --- base --------------------------------------------------------------------------------------------------
    def check_base(self, base: str | Path) -> None:
        """Refuse a base this family must not fine-tune, before any data or model time (default: none refused)."""

    @abstractmethod
    def build_tiny(self, cfg: Config, out_root: Path, seed: int) -> Path:
        """The offline random-init base (`model.base: tiny`) built under out_root; returns its path."""

    @abstractmethod
    def load_base(self, base: str | Path):
        """The base model (Hub id[@revision] or local path), on the CPU."""

    def locate_base(self, base: str) -> str:
        """A named base this family knows (e.g. an installed release) → the path or id to load it from."""
        return base

    @abstractmethod
    def claims(self, path: Path, kind: Optional[str]) -> int:
        """How surely a model argument (a path that may not exist, or a Hub id) is one of this family's models: 3 its
        files say so, 2 `kind` or its name says so, 1 a fallback (a Hub id nobody else claims), 0 not ours.
        `load_model` takes the family that claims it most surely."""

    @abstractmethod
    def load(self, spec: str | Path) -> Loaded:
        """Any model argument this family claims: a base, or an export reloaded from disk."""

    # --- preflight ---------------------------------------------------------------------------------------------
    @abstractmethod
    def check_model(self, cfg: Config, run_dir: Path, base: str | Path) -> dict:
        """Load the base and check it before training pays for it; raise ModelPreflightError naming the problem.
        Returns {"coverage", "groups", ...family extras} for RUN/train/preflight.json."""

    # --- training ----------------------------------------------------------------------------------------------
    def apply_recipe(self, model, train, constant_lr: bool = False) -> None:
        from medasr.models.optim import apply_recipe

        apply_recipe(model, train, self.optim_schema, constant_lr)

    @abstractmethod
    def prepare(self, cfg: Config, data_dir: Path, base: str | Path, work_dir: Path) -> tuple[Any, dict, dict]:
        """(model ready to train, Trainer.fit kwargs, trainable-parameter record) reading data_dir/{train,val}.json;
        work_dir holds derived files. The model's `training_step` is the step that runs."""

    # --- decoding ----------------------------------------------------------------------------------------------
    def prompt_rows(self, rows: list[dict], prompt: Optional[str], by_source: Optional[dict]) -> list[dict]:
        """Rows with whatever this family decodes them under (SALM: each row's prompt in `context`)."""
        return rows

    @abstractmethod
    def decoder(self, loaded: Loaded, batch_size: int, max_new_tokens: int, prompt: Optional[str] = None,
                static_cache: bool = False) -> Decoder:
        """Greedy batched decoding of audio arrays at 16 kHz."""

    # --- checkpoints and export --------------------------------------------------------------------------------
    @abstractmethod
    def load_checkpoint(self, cfg: Config, base: str | Path, ckpt: Path):
        """The base with a training checkpoint's weights, as export builds it (on the GPU when there is one)."""

    @abstractmethod
    def export(self, cfg: Config, run_dir: Path, base: str | Path, ckpt: Path) -> Path:
        """The checkpoint exported as RUN/<export_name>, with its meta file."""

    @abstractmethod
    def read_export_meta(self, export: Path) -> dict:
        """The export's meta record; a clear error when `export` is not this family's export."""

    @abstractmethod
    def meta_file(self, export: Path) -> Path:
        """Where the export's meta record is (written last: its presence says the export is whole)."""

    @abstractmethod
    def write_model_card(self, export: Path, meta: dict, build_report: dict, before: dict, after: dict,
                         compare: dict, date: str) -> Path:
        """The export's model card, written after the fine-tuned model was evaluated."""

    def export_path(self, run_dir: Path) -> Path:
        return run_dir / self.export_name
