"""What a benchmark ran on, and whether anything else was competing for it."""

from __future__ import annotations

import os
import time

import torch

from unlearn.threads import cpu_ticks

# Two processes of two OpenMP threads each on two cores spin-wait on each other: a digits
# fine-tune measured 0.8 s alone and 10-13 s beside a twin. Figures taken under load are noise.
BUSY_SHARE = 0.25


def cpu_busy_share(seconds: float = 1.0) -> float | None:
    """Share of all cores busy over the next `seconds` (Linux /proc/stat); None elsewhere."""
    try:
        busy_before, total_before = cpu_ticks()
        time.sleep(seconds)
        busy_after, total_after = cpu_ticks()
    except OSError:
        return None
    return (busy_after - busy_before) / max(1, total_after - total_before)


def describe(device: torch.device) -> str:
    """`cpu x2 threads of 2 cores, 3% busy before the run (idle)`, or the GPU's name; warns under load."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}; torch {torch.__version__}"
    busy, cores = cpu_busy_share(), os.cpu_count() or 1
    if busy is None:
        load = f"load average {os.getloadavg()[0]:.2f}"
    else:
        state = "idle" if busy <= BUSY_SHARE else "BUSY: other work competes, figures are unreliable"
        load = f"{busy:.0%} busy before the run ({state})"
    return f"cpu x{torch.get_num_threads()} threads of {cores} cores, {load}; torch {torch.__version__}"
