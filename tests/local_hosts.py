"""For tests that run several local processes as the hosts of one multi-host JAX job on 8 CPU devices."""
import os
import socket
import subprocess
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def host_env(processes: int) -> dict[str, str]:
    """The environment of one of `processes` hosts: CPU only, the 8 devices shared out equally."""
    return {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3",
            "XLA_FLAGS": f"--xla_force_host_platform_device_count={8 // processes}"}


def run_hosts(commands: Sequence[Sequence[str]], timeout: float = 600) -> tuple[list[int], list[str]]:
    """Runs one command per host at once, from the repository root; their exit codes and outputs."""
    env = host_env(len(commands))
    running = [subprocess.Popen(list(c), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True) for c in commands]
    outputs = [p.communicate(timeout=timeout)[0] for p in running]
    return [p.returncode for p in running], outputs
