"""Throughput from image files: decode-only, inference-only, and ``runtimes.run`` end to end.

The shared-core bound is what a perfect pipeline on these cores could reach when decode
and inference take turns on the same cores: ``1 / (decode s/image + inference s/image)``,
each measured alone with all cores. ``runtimes.run`` overlaps the two in threads; its
share of the bound says how well.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any


def decode_only(files: list[Path], spec, *, exact: bool, workers: int, max_pixels: int | None = None) -> dict[str, Any]:
    """Images/s of reading, decoding and preprocessing alone, on ``workers`` threads.

    An image that cannot be read or decoded is counted in ``unreadable``, as
    ``runtimes.run`` would report it, and costs the others nothing.
    """
    from runtimes.errors import ImageError
    from runtimes.preprocess import load_with_mode

    def one(path: Path) -> str | None:
        try:
            return load_with_mode(path.read_bytes(), spec, str(path), fast=not exact, max_pixels=max_pixels)[1]
        except (OSError, ImageError):
            return None

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, files[: min(4, len(files))]))  # warm the code paths and page cache
        started = time.perf_counter()
        modes = list(pool.map(one, files))
        seconds = time.perf_counter() - started
    return {
        "images_per_s": round(len(files) / seconds, 2), "workers": workers,
        "modes": sorted({m for m in modes if m is not None}), "unreadable": modes.count(None),
    }


# Runs `python -m runtimes.run` and reports its own peak RSS on stderr as it exits.
# Linux's VmHWM belongs to the process image; ru_maxrss would also count the RSS of the
# parent the child was forked from (Linux keeps it across exec).
_MEASURED = (
    "import atexit, re, resource, runpy, sys\n"
    "def peak():\n"
    "    try:\n"
    "        return int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))\n"
    "    except (OSError, AttributeError):\n"
    "        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
    "atexit.register(lambda: print('peak_rss_kb', peak(), file=sys.stderr))\n"
    "sys.argv[0] = 'runtimes.run'\n"
    "runpy.run_module('runtimes.run', run_name='__main__')\n"
)


def _timed(args: list[str]) -> tuple[float, list[str], int | None, str]:
    """(seconds from spawn to exit, stdout lines, peak RSS in kB, stderr) of one measured run."""
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _MEASURED, *args], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    peak = next((int(line.split()[1]) for line in proc.stderr.splitlines() if line.startswith("peak_rss_kb ")), None)
    return seconds, proc.stdout.splitlines(), peak, proc.stderr


def run_cli(
    model: Path, folder: Path, *, provider: str, batch_size: int, exact: bool, max_pixels: int | None = None
) -> dict[str, Any]:
    """``python -m runtimes.run --json`` on ``folder``: images/s and the process's peak memory.

    Start-up (imports, model load) is measured on one small image and subtracted, so
    the figure is the pipeline's throughput, comparable with decode-only and inference-only.
    """
    import cv2
    import numpy as np

    options = ["--json", "--model", str(model), "--provider", provider, "--batch-size", str(batch_size)]
    options += ["--exact"] if exact else []
    options += ["--max-pixels", str(max_pixels)] if max_pixels else []
    with tempfile.TemporaryDirectory() as tmp:
        small = Path(tmp) / "small.jpg"
        small.write_bytes(cv2.imencode(".jpg", np.full((64, 64, 3), 128, np.uint8))[1].tobytes())
        startup = min(_timed([*options, str(small)])[0] for _ in range(2))
    seconds, lines, peak_kb, stderr = _timed([*options, str(folder)])
    records = [json.loads(line) for line in lines]
    if not records:
        return {"error": stderr.strip().splitlines()[-1] if stderr.strip() else "no output"}
    return {
        "images": len(records),
        "failed": sum("error" in r for r in records),
        "modes": sorted({r.get("preprocess") for r in records if "preprocess" in r}),
        "seconds": round(seconds, 3),
        "startup_s": round(startup, 3),
        "images_per_s": round(len(records) / max(seconds - startup, 1e-9), 2),
        "peak_rss_mb": round(peak_kb / 1024, 1) if peak_kb else None,
    }
