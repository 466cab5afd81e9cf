"""Test-session setup: 8 fake CPU devices so sharded code paths run on one host."""
import os

# Must be set before jax is imported anywhere in the test session.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402  (after the environment above)


class Killed(Exception):
    """A run dying right after it logged a step (see `kill_after_logging`)."""


class KillSwitch:
    """`arm(step)`: the next run raises `Killed` right after writing step `step`'s metrics, before any later
    checkpoint, as a run killed there would; `disarm()` restores normal runs."""

    Killed = Killed

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        from kipjax.run_log import MetricsLog
        self._monkeypatch, self._log, self._write = monkeypatch, MetricsLog, MetricsLog.write

    def arm(self, step: int) -> None:
        write = self._write

        def write_then_die(log, logged_step, metrics):
            write(log, logged_step, metrics)
            if logged_step == step:
                raise Killed

        self._monkeypatch.setattr(self._log, "write", write_then_die)

    def disarm(self) -> None:
        self._monkeypatch.setattr(self._log, "write", self._write)


@pytest.fixture
def kill_switch(monkeypatch: pytest.MonkeyPatch) -> KillSwitch:
    return KillSwitch(monkeypatch)
