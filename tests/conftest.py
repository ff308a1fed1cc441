import contextlib
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
    with models_alive_at_each_stage(run_dir.parent / "models_alive.json"):
        summary = run_flywheel(cfg, run_dir)
    return cfg, run_dir, summary


@contextlib.contextmanager
def models_alive_at_each_stage(out):
    """Records how many models (LightningModules) are alive when each flywheel stage starts, with the cyclic garbage
    collector off, so only the flywheel's own release between stages can free NeMo/Lightning reference cycles
    (test_flywheel.py::test_no_model_outlives_its_stage reads it)."""
    import gc
    import json

    from lightning.pytorch import LightningModule

    from medasr import flywheel

    alive, rule = {}, flywheel.console.rule

    def count(title="", *a, **kw):
        alive[str(title)] = sum(isinstance(o, LightningModule) for o in gc.get_objects())
        return rule(title, *a, **kw)

    flywheel.console.rule = count
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        flywheel.console.rule = rule
        out.write_text(json.dumps(alive, indent=1))


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


def _flywheel_on_tiny_data(tiny_run, tmp_path_factory, preset: str, overrides: list[str]):
    """Another model family's flywheel end to end, on the tiny run's data: (cfg, run_dir, summary)."""
    from medasr.config import load_config
    from medasr.flywheel import run_flywheel

    run_dir = tmp_path_factory.mktemp(preset) / "run"
    run_dir.mkdir()
    shutil.copytree(tiny_run[1] / "data", run_dir / "data")
    cfg = load_config(preset, overrides)
    return cfg, run_dir, run_flywheel(cfg, run_dir)


@pytest.fixture(scope="session")
def tiny_parakeet_run(tiny_run, tmp_path_factory):
    """The second model path end to end: the flywheel on tiny-parakeet."""
    return _flywheel_on_tiny_data(tiny_run, tmp_path_factory, "tiny-parakeet",
                                  ["train.max_steps=60", "train.ckpt_every_n_steps=20", "train.val_every_n_steps=20"])


@pytest.fixture(scope="session")
def tiny_whisper_run(tiny_run, tmp_path_factory):
    """The Whisper family end to end: the flywheel on tiny-whisper. A random-init model decodes to max_new_tokens
    every time: short transcripts keep both evaluations cheap."""
    return _flywheel_on_tiny_data(tiny_run, tmp_path_factory, "tiny-whisper",
                                  ["eval.max_new_tokens=12", "train.max_steps=40", "train.smoke_steps=5"])


@pytest.fixture(scope="module")
def s3_server():
    """S3 on loopback (tests/s3_standin.py: moto behind a front that verifies every SigV4 signature with botocore's
    signer and checks checksums as S3 does), temporary credentials with a session token, a bucket `medasr-test`; the
    AWS_* environment points boto3 and medasr.ops.s3put at it. Yields the stand-in (`.url`, `.fail()`, `.requests`)."""
    import boto3

    from s3_standin import S3StandIn

    store = S3StandIn()
    old = {k: os.environ.get(k) for k in store.env()}
    os.environ.update(store.env())
    boto3.client("s3").create_bucket(Bucket="medasr-test")
    yield store
    store.close()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
