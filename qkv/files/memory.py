"""The memory a request may take: what the machine (or the GPU) has free, and one refusal naming the request."""
from __future__ import annotations

import os
from pathlib import Path

import torch


def available_bytes(device=None) -> int:
    """Memory a new allocation can take on ``device``: free GPU memory, or the machine's available memory within
    any cgroup (container) limit."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.mem_get_info(device)[0])
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return 1 << 62  # unknown: do not refuse
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit != "max":
            avail = min(avail, int(limit) - used)
    except (OSError, ValueError):
        pass
    return max(int(avail), 0)


def human(n: float) -> str:
    """A byte count for messages: "512 B", "1.5 GiB"."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} PiB"


def check_fits(nbytes: float, *, what: str, device=None, limit: int | None = None) -> None:
    """Refuse a request of ``nbytes`` that cannot fit in the memory ``device`` has; ``what`` names the field(s)
    and value(s) responsible, e.g. "max_new_tokens=1000000000"."""
    avail = available_bytes(device) if limit is None else limit
    if nbytes > avail:
        where = torch.device(device).type if device is not None else "cpu"
        raise ValueError(f"{what} needs about {human(nbytes)} of memory, more than the {human(avail)} available "
                         f"on {where}; expected a smaller value")
