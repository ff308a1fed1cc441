import os
import shutil

import pytest

# Tests never talk to W&B cloud: offline mode, and no key from the developer's environment.
os.environ["WANDB_MODE"] = "offline"
os.environ.pop("WANDB_API_KEY", None)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The README's main job: the whole flywheel on the tiny preset, run once for the session."""
    from medasr.config import load_config
    from medasr.flywheel import run_flywheel

    run_dir = tmp_path_factory.mktemp("tiny") / "run"
    cfg = load_config("tiny")
    summary = run_flywheel(cfg, run_dir)
    return cfg, run_dir, summary


def fresh_run_dir(run_dir, tmp_path):
    """A new run dir holding copies of a finished run's data and base model (nothing trained yet)."""
    fresh = tmp_path / "run"
    fresh.mkdir()
    shutil.copytree(run_dir / "data", fresh / "data")
    shutil.copytree(run_dir / "model", fresh / "model")
    return fresh


@pytest.fixture
def tiny_data_and_base(tiny_run, tmp_path):
    return fresh_run_dir(tiny_run[1], tmp_path)


@pytest.fixture
def tiny_parakeet_data_and_base(tiny_parakeet_run, tmp_path):
    return fresh_run_dir(tiny_parakeet_run[1], tmp_path)


@pytest.fixture(scope="session")
def tiny_parakeet_run(tiny_run, tmp_path_factory):
    """The second model path end to end: the flywheel on tiny-parakeet (sharing the tiny run's data)."""
    from medasr.config import load_config
    from medasr.flywheel import run_flywheel

    run_dir = tmp_path_factory.mktemp("tiny-parakeet") / "run"
    run_dir.mkdir()
    shutil.copytree(tiny_run[1] / "data", run_dir / "data")
    cfg = load_config("tiny-parakeet", ["train.max_steps=60", "train.ckpt_every_n_steps=20", "train.val_every_n_steps=20"])
    summary = run_flywheel(cfg, run_dir)
    return cfg, run_dir, summary
