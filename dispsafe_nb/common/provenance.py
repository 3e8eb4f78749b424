"""Where a result came from: the code's commit and the machine's processor, for benchmark JSON."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path


def git_commit() -> str | None:
    """The checked-out commit (None outside a git checkout). Call it when a run starts: that is the code it imports."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def cpu_name() -> str:
    """The processor's model name (from /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def machine_info(commit: str | None, package_version: str, **extra: object) -> dict[str, object]:
    """The `machine` block of a benchmark's JSON: the commit taken when the run started (`git_commit`), the
    package and torch versions, torch's threads, the processor, Python, and any `extra` fields."""
    import torch  # noqa: PLC0415 (deferred: provenance is read by code that needs no model)

    return {
        "git_commit": commit,
        "package_version": package_version,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "processor": cpu_name(),
        "python": platform.python_version(),
        **extra,
    }
