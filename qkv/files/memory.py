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
    """A byte count in binary units, three significant figures: "0 B", "1023 B", "1.00 KiB", "1023 KiB", "1.00 MiB",
    "25.1 GiB" (messages, ``qkv info``)."""
    return scaled(n, 1024, (" B", " KiB", " MiB", " GiB", " TiB", " PiB"))


def scaled(n: float, base: int, units: tuple[str, ...]) -> str:
    """``n`` >= 0 in the largest unit (each ``base`` times the one before) that keeps it under ``base``, in three
    significant figures; a value that rounds up to ``base`` is said in the next unit ("1.00 MiB", not "1024 KiB")."""
    if n < 0:
        raise ValueError(f"expected a count >= 0, got {n}")
    if n < base:
        return f"{n:.0f}{units[0]}" if n == int(n) else f"{_figures(n)}{units[0]}"
    for i, unit in enumerate(units[1:], 1):
        text = _figures(n / base ** i)
        if float(text) < base or i == len(units) - 1:
            return f"{text}{unit}"
    raise AssertionError("unreachable")


def _figures(x: float) -> str:
    return f"{x:.2f}" if x < 10 else f"{x:.1f}" if x < 100 else f"{x:.0f}"


def check_fits(nbytes: float, *, what: str, device=None, limit: int | None = None) -> None:
    """Refuse a request of ``nbytes`` that cannot fit in the memory ``device`` has; ``what`` names the field(s)
    and value(s) responsible, e.g. "max_new_tokens=1000000000"."""
    avail = available_bytes(device) if limit is None else limit
    if nbytes > avail:
        where = torch.device(device).type if device is not None else "cpu"
        raise ValueError(f"{what} needs about {human(nbytes)} of memory, more than the {human(avail)} available "
                         f"on {where}; expected a smaller value")
