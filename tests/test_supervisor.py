"""The supervisor's own failure paths, with stand-in children instead of the flywheel (seconds each): a
child that ignores SIGTERM, a full disk under the budget thread, a budget reached during the restart back-off, a
done run whose final sync fails, markers cleared on S3, restore into a run dir that is not empty."""

import errno
import json
import sys
import time
from pathlib import Path

import pytest

from medasr.ops import spend, supervisor
from medasr.ops.storage import remote_run_state, sync_up
from medasr.ops.supervisor import Supervisor

URI = "s3://medasr-test/sup"


def _sup(run_dir: Path, child: str, monkeypatch, *sets, **kw) -> Supervisor:
    sup = Supervisor("tiny", run_dir, ["ops.heartbeat_s=0.2", "ops.kill_grace_s=1", "ops.sync_attempts=2", *sets], **kw)
    monkeypatch.setattr(sup, "command", lambda: [sys.executable, "-c", child])
    return sup


def _budget_env(monkeypatch, seconds: float):
    """A cap `seconds` of pod time away at $3600/h (the supervisor's margin is a tenth of it)."""
    monkeypatch.setenv("MEDASR_PRICE_PER_HOUR", "3600")
    monkeypatch.setenv("MEDASR_MAX_USD", f"{seconds:.2f}")
    monkeypatch.setenv("MEDASR_CONTAINER_START", f"{time.time():.0f}")
    monkeypatch.setenv("RUNPOD_POD_ID", "pod-x")


IGNORES_SIGTERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"


def test_a_child_that_ignores_sigterm_is_killed_and_the_cap_holds(tmp_path, monkeypatch):
    """One SIGTERM, then wait() forever (a trainer stuck in an NCCL collective ignores it)."""
    _budget_env(monkeypatch, 3)
    sup = _sup(tmp_path / "run", IGNORES_SIGTERM, monkeypatch)
    t0 = time.time()
    assert sup.run() == 3
    assert time.time() - t0 < 12
    state = json.loads((tmp_path / "run/supervisor.json").read_text())
    assert state["state"] == "budget" and "SIGKILL after 1s" in state["killed"]
    assert json.loads((tmp_path / "run/BUDGET").read_text())["by"] == "supervisor"


def test_a_full_disk_does_not_end_the_budget_check(tmp_path, monkeypatch):
    """One exception (ENOSPC writing supervisor.json or the spend file) ended the heartbeat thread,
    and with it the only budget check."""
    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    _budget_env(monkeypatch, 3)
    monkeypatch.setattr(supervisor, "write_text_atomic", full)
    monkeypatch.setattr(spend, "write_text_atomic", full)
    sup = _sup(tmp_path / "run", "import time; time.sleep(600)", monkeypatch)
    t0 = time.time()
    assert sup.run() == 3 and time.time() - t0 < 12
    assert sup.ledger.write_error and "No space left" in sup.ledger.write_error


def test_the_budget_wakes_the_restart_backoff(tmp_path, monkeypatch):
    """A child that keeps failing puts the supervisor in a back-off of up to 300 s; the budget
    event did not wake it, so the pod billed on through the wait."""
    _budget_env(monkeypatch, 4)
    sup = _sup(tmp_path / "run", "raise SystemExit(1)", monkeypatch, backoff_base=300.0)
    t0 = time.time()
    assert sup.run() == 3
    assert time.time() - t0 < 10 and sup.state["restarts"] == 1


def _done_run(run_dir: Path) -> None:
    (run_dir / "train/checkpoints").mkdir(parents=True)
    (run_dir / "summary.json").write_text('{"status": "done", "export_file": "adapted_model.json"}')
    (run_dir / "train/DONE").write_text('{"global_step": 300, "max_steps": 300}')
    (run_dir / "adapted_model.nemo").write_bytes(b"model")
    (run_dir / "adapted_model.json").write_text("{}")
    (run_dir / "train/checkpoints/last.ckpt").write_bytes(b"ckpt" * 1000)


def test_done_needs_the_export_the_summary_names(tmp_path):
    """Done is read from the export summary.json names (relative: a restored run lives elsewhere), not from a list of
    every family's export names."""
    from medasr.runstate import run_is_done

    rd = tmp_path / "moved"
    _done_run(rd)
    assert run_is_done(rd, 300) == (True, "done")
    (rd / "adapted_model.json").unlink()  # the meta file goes last into an export and first out of a failed one
    assert run_is_done(rd, 300) == (False, "model not exported")
    (rd / "summary.json").write_text('{"status": "done"}')
    assert run_is_done(rd, 300) == (False, "model not exported")


def test_done_means_synced(s3_server, tmp_path, monkeypatch):
    """A run done on the volume whose final sync failed exited 0 without syncing: S3 stayed empty,
    the watcher read "running" and resumed the pod again and again. Now the final sync is retried, exit 0 comes only
    after it succeeded, and exit 4 says the run is done here but not on S3."""
    monkeypatch.setenv("MEDASR_S3_URI", f"{URI}/done")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore's own retries would add ~15 s of back-off here
    run_dir = tmp_path / "run"
    _done_run(run_dir)
    s3_server.fail("PUT", "/sup/done/", 503, "SlowDown", n=1000)
    sup = _sup(run_dir, "raise SystemExit(0)", monkeypatch, "train.max_steps=300", backoff_base=0.01)
    assert sup.run() == 4 and sup.state["state"] == "done_unsynced" and "SlowDown" in sup.state["sync_error"]
    assert remote_run_state(f"{URI}/done", 300) == "running"
    s3_server.failures.clear()
    s3_server.fail("PUT", "/sup/done/", 503, "SlowDown", n=1)  # one more transient failure: retried, then done
    sup = _sup(run_dir, "raise SystemExit(0)", monkeypatch, "train.max_steps=300", backoff_base=0.01)
    assert sup.run() == 0 and remote_run_state(f"{URI}/done", 300) == "done"


def test_cleared_markers_leave_s3_too(s3_server, tmp_path, monkeypatch):
    """FAILED cleared by --retry-failed and BUDGET cleared by a raised cap stayed on S3 (sync never
    deletes), so the watcher stopped the resumed run again."""
    monkeypatch.setenv("MEDASR_S3_URI", f"{URI}/markers")
    run_dir = tmp_path / "run"
    _done_run(run_dir)
    (run_dir / "summary.json").write_text('{"status": "running"}')
    (run_dir / "FAILED").write_text('{"stage": "build", "reason": "a bad row", "kind": "permanent"}')
    sync_up(run_dir, f"{URI}/markers")
    assert remote_run_state(f"{URI}/markers", 300) == "failed"
    sup = _sup(run_dir, "raise SystemExit(0)", monkeypatch, "train.max_steps=300", retry_failed=True, max_restarts=0,
               backoff_base=0.01)
    sup.run()
    assert not (run_dir / "FAILED").exists() and remote_run_state(f"{URI}/markers", 300) == "running"
    (run_dir / "BUDGET").write_text('{"spent_usd": 25.0, "max_usd": 25.0}')
    sync_up(run_dir, f"{URI}/markers")
    assert remote_run_state(f"{URI}/markers", 300) == "budget"
    _budget_env(monkeypatch, 3600)  # the cap was raised: an hour to go
    sup = _sup(run_dir, "raise SystemExit(0)", monkeypatch, "train.max_steps=300", max_restarts=0, backoff_base=0.01)
    sup.run()
    assert not (run_dir / "BUDGET").exists() and remote_run_state(f"{URI}/markers", 300) == "running"


def test_restore_into_a_run_dir_that_is_not_empty(s3_server, tmp_path, monkeypatch):
    """`run.sh` writes setup.log (and the guard its spend file) before the supervisor starts, and restore
    happened only into an empty dir, so a pod recreated on an empty volume started training from scratch and its
    spend from zero. Now whatever S3 has and the run lacks comes back whenever last.ckpt is missing."""
    monkeypatch.setenv("MEDASR_S3_URI", f"{URI}/replaced")
    old = tmp_path / "old-pod"
    _done_run(old)
    (old / "summary.json").unlink()
    (old / "spend").mkdir()
    now = int(time.time())
    (old / "spend" / f"pod-old-{now - 7200}.session").write_text(f"{now - 7200} {now - 3600} 2.0 pod-old\n")  # $2
    sync_up(old, f"{URI}/replaced")
    new = tmp_path / "new-pod"
    new.mkdir()
    (new / "setup.log").write_text("setup on the new pod\n")
    _budget_env(monkeypatch, 10.0)
    monkeypatch.setenv("MEDASR_PRICE_PER_HOUR", "1.0")
    sup = _sup(new, "raise SystemExit(0)", monkeypatch)
    assert sup._maybe_restore() is None
    assert (new / "train/checkpoints/last.ckpt").read_bytes() == (old / "train/checkpoints/last.ckpt").read_bytes()
    assert (new / "setup.log").read_text() == "setup on the new pod\n"  # nothing local overwritten
    assert sup.ledger.spent() == pytest.approx(2.0, abs=0.01)  # the old pod's spend carried over


def test_a_prefix_holding_another_presets_run_is_not_restored(s3_server, tmp_path, monkeypatch):
    """Restore now happens whenever last.ckpt is missing, so a run pointed at a prefix that holds another run would
    resume (or finish) that run. A different preset in S3's config.yaml stops it, and nothing is written there."""
    from medasr.config import load_config, save_config

    monkeypatch.setenv("MEDASR_S3_URI", f"{URI}/other")
    old = tmp_path / "old"
    _done_run(old)
    save_config(load_config("tiny-parakeet"), old / "config.yaml")
    sync_up(old, f"{URI}/other")
    sup = _sup(tmp_path / "run", "raise SystemExit(0)", monkeypatch)
    assert sup.run() == 1 and "tiny-parakeet" in sup.state["reason"]
    assert not (tmp_path / "run/train").exists() and remote_run_state(f"{URI}/other", 300) == "done"
