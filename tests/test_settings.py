"""A numeric setting of 0 or -1 is refused at config load with a message naming the key, never a
traceback later (train.val_every_n_steps=0 ended in a ZeroDivisionError)."""

import pytest
from typer.testing import CliRunner

from medasr.cli import app
from medasr.config import ANY_NUMBER, FRACTIONS, MINUS_ONE_OK, ZERO_OK, _numbers, load_config


TINY = load_config("tiny")


def _keys():
    seen = {}
    for key, v in _numbers(TINY):
        seen.setdefault(key, v)
    return seen


@pytest.mark.parametrize("value", [0, -1])
def test_every_numeric_setting_at_0_and_minus_1_loads_or_names_its_key(value):
    keys = _keys()
    assert len(keys) > 80 and "train.val_every_n_steps" in keys and "bench.train_batch_tokens" in keys
    refused = []
    for key, default in keys.items():
        v = [value] if isinstance(getattr_path(key), list) else (float(value) if isinstance(default, float) else value)
        try:
            load_config("tiny", [f"{key}={v}"])
        except ValueError as e:
            assert key in str(e), (key, str(e))
            refused.append(key)
            continue
        allowed = key in ANY_NUMBER or key in ZERO_OK and value == 0 or MINUS_ONE_OK.get(key) and value == -1 or (
            key in FRACTIONS and value == 0)
        assert allowed, f"{key}={v} was accepted"
    assert "train.val_every_n_steps" in refused and "train.max_steps" in refused and "eval.batch_size" in refused


def getattr_path(key):
    obj = TINY
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def test_the_cli_names_the_setting_instead_of_a_traceback():
    res = CliRunner().invoke(app, ["train", "-p", "tiny", "--set", "train.val_every_n_steps=0"])
    assert res.exit_code == 2 and "train.val_every_n_steps=0: must be at least 1" in res.output
    assert "Traceback" not in res.output and res.exception is None or isinstance(res.exception, SystemExit)
    res = CliRunner().invoke(app, ["build", "-p", "tiny", "--set", "data.synth.rate_min=300"])
    assert res.exit_code == 2 and "rate_min=300 is above data.synth.rate_max" in res.output


def test_every_bad_setting_is_named_at_once():
    """Like litgpt's validate_args: one error listing every problem, not one per attempt."""
    with pytest.raises(ValueError) as e:
        load_config("tiny", ["train.val_every_n_steps=0", "train.batch_size=0", "gate.ker_threshold=2",
                             "data.synth.rate_min=300"])
    said = str(e.value)
    for part in ("train.val_every_n_steps=0", "train.batch_size=0", "gate.ker_threshold=2", "data.synth.rate_min=300"):
        assert part in said
