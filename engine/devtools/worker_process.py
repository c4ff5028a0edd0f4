"""Running ``mynapoint worker`` as a child process (demo, tests, benchmarks)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


class WorkerProcess:
    """A worker in its own process, so that it can be SIGKILLed for real."""

    def __init__(self, bootstrap: str, prefix: str, partitions: int = 8,
                 state_dir: str | Path = ".kafka/state", log_path: str | Path | None = None,
                 extra: list[str] | None = None, env: dict[str, str] | None = None) -> None:
        self.args = [sys.executable, "-m", "engine.cli", "worker", "--broker", bootstrap,
                     "--topic-prefix", prefix, "--partitions", str(partitions),
                     "--state-dir", str(state_dir), *(extra or [])]
        self.log_path = Path(log_path) if log_path else None
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: float = 240.0) -> WorkerProcess:
        # a fresh install compiles before it consumes (engine.streams.warmup): 52-115 s seen
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True, env=self.env)
        if self.log_path and wait:
            self._wait_for("consuming", wait)
        return self

    def wait_exit(self, timeout: float = 120.0) -> int:
        """Wait until the worker exits by itself (e.g. an injected crash)."""
        assert self.proc is not None
        return self.proc.wait(timeout)

    def wait_for(self, text: str, wait: float = 60.0) -> None:
        """Block until the worker's log shows ``text`` (e.g. "assigned partitions")."""
        self._wait_for(text, wait)

    def _wait_for(self, text: str, wait: float) -> None:
        assert self.log_path is not None and self.proc is not None
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}; see "
                                   f"{self.log_path}")
            if text in self.log_path.read_text(errors="replace"):
                return
            time.sleep(0.1)
        raise TimeoutError(f"worker did not start within {wait} s; see {self.log_path}")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no cleanup of any kind runs in the worker."""
        if self.alive:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def kill_inside_batch(self, marker: Path, timeout: float = 60.0) -> None:
        """SIGKILL the worker at a moment it is inside a batch, proven: it is frozen
        (SIGSTOP) first and killed only if its batch marker file (set by
        ``MYNAPOINT_BATCH_MARKER``) exists while it is frozen; else it is resumed
        and tried again a little later."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive:
                raise RuntimeError(f"worker exited with {self.proc.returncode}")
            self.proc.send_signal(signal.SIGSTOP)
            if marker.exists():
                self.kill()
                return
            self.proc.send_signal(signal.SIGCONT)
            time.sleep(0.003)
        raise TimeoutError("the worker was never caught inside a batch")

    def resume(self) -> None:
        """SIGCONT: a frozen (stalled) worker goes on where it stopped."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        if self.alive:
            terminate(self.proc, timeout)
        return self.proc.returncode


def terminate(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
    """SIGTERM, then SIGKILL if it has not exited after ``timeout`` seconds."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()
