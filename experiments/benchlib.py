"""Timing that can be trusted on a shared machine: warm-up excluded, compile time apart, sides alternated.

Each side is a zero-argument callable that runs one unit of work and blocks until the device is done
(`jax.block_until_ready`, `torch.cuda.synchronize`), so the clock is read only when the device is idle.
Sides run in turn, A B C, C B A, ..., so drift in machine load hits every side equally; we report the median
and the spread (min, max) of the repeats and, per group, the ratio reference median / side median (the
speed-up of the side over the reference: > 1 means faster than the reference).

A side that fails (an optional backend missing, torch.compile without a working compiler) becomes a
"skipped" row carrying the reason; the other sides of the group are still timed.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import resource
import shlex
import statistics
import sys
import time
from typing import Callable


@dataclasses.dataclass
class Side:
    name: str  # e.g. "jax", "torch eager"
    device: str  # where the figure came from, e.g. "cpu (2 threads)", "cuda:0 NVIDIA H200"
    fn: Callable[[], object]  # one unit of work, blocking until the device is done
    compiled: bool = False  # the first call traces/compiles: report it apart as compile time
    warmup: int = 2  # calls before timing (the first included); not timed
    reference: bool = False  # the group's yardstick for the ratio column
    note: str = ""  # shown in the table (e.g. recall@k of an approximate search)
    skip: str | None = None  # set to a reason to report the side without running it


@dataclasses.dataclass
class Timing:
    side: str
    device: str
    median_ms: float | None
    min_ms: float | None
    max_ms: float | None
    repeats: int
    # compiled sides: first call (trace + compile + one run) minus the median run, i.e. the one-off cost
    compile_s: float | None
    first_call_s: float | None
    reference: bool
    note: str
    skipped: str | None = None


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200] if text else ''}".rstrip(": ")


def compare(sides: list[Side], repeats: int = 7, min_time_s: float = 0.0) -> list[Timing]:
    """Time every side `repeats` times (more rounds until `min_time_s` passed), alternating the order."""
    first: dict[str, float] = {}
    skipped: dict[str, str] = {s.name: s.skip for s in sides if s.skip}
    for side in sides:
        if side.name in skipped:
            continue
        try:
            t0 = time.perf_counter()
            side.fn()
            first[side.name] = time.perf_counter() - t0
            for _ in range(max(side.warmup - 1, 0)):
                side.fn()
        except Exception as e:  # one broken side must not lose the others' figures
            skipped[side.name] = _reason(e)
    live = [s for s in sides if s.name not in skipped]
    samples: dict[str, list[float]] = {s.name: [] for s in live}
    start = time.perf_counter()
    rounds = 0
    while live and (rounds < repeats or time.perf_counter() - start < min_time_s):
        for side in live if rounds % 2 == 0 else live[::-1]:
            t0 = time.perf_counter()
            side.fn()
            samples[side.name].append((time.perf_counter() - t0) * 1e3)
        rounds += 1
    out = []
    for side in sides:
        if side.name in skipped:
            out.append(
                Timing(
                    side.name,
                    side.device,
                    None,
                    None,
                    None,
                    0,
                    None,
                    None,
                    side.reference,
                    side.note,
                    skipped[side.name],
                )
            )
            continue
        ms = samples[side.name]
        med = statistics.median(ms)
        compile_s = max(first[side.name] - med / 1e3, 0.0) if side.compiled else None
        out.append(
            Timing(
                side.name,
                side.device,
                med,
                min(ms),
                max(ms),
                len(ms),
                compile_s,
                first[side.name],
                side.reference,
                side.note,
            )
        )
    return out


def rows(bench: str, case: str, timings: list[Timing], **extra) -> list[dict]:
    """Table/JSON rows for one group, with ratio = reference median / side median."""
    ref = next((t for t in timings if t.reference and t.median_ms), None)
    out = []
    for t in timings:
        row = {"bench": bench, "case": case, **dataclasses.asdict(t), **extra}
        row["ratio"] = (ref.median_ms / t.median_ms) if ref is not None and t.median_ms else None
        row["ratio_vs"] = ref.side if ref is not None else None
        out.append(row)
    return out


def jax_device() -> str:
    import jax

    d = jax.devices()[0]
    if d.platform == "cpu":
        return f"cpu ({os.cpu_count()} cores, XLA default threads)"
    kind = getattr(d, "device_kind", d.platform)
    return f"{d.platform}:{d.id} {kind} (x{jax.device_count()})"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(argv: list[str] | None = None) -> dict:
    info = {
        "host": platform.node(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "command": shlex.join(["python", "-m", "experiments.bench", *(sys.argv[1:] if argv is None else argv)]),
    }
    try:
        with open("/proc/loadavg") as f:
            info["loadavg_at_start"] = f.read().split()[:3]
    except OSError:
        pass
    for mod in ("jax", "jaxlib", "flax", "optax", "faiss", "torch", "numpy"):
        m = sys.modules.get(mod)
        if m is not None:
            info[f"{mod}_version"] = getattr(m, "__version__", "?")
    return info


def _cell(value, col: str) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if col == "ratio":
            return f"{value:.2f}x"
        return f"{value:.3f}" if col.endswith("_s") else f"{value:.2f}"
    return str(value)


TABLE_COLS = [
    "bench",
    "case",
    "side",
    "device",
    "median_ms",
    "min_ms",
    "max_ms",
    "repeats",
    "compile_s",
    "ratio",
    "note",
]


def format_table(table_rows: list[dict], cols: list[str] = TABLE_COLS) -> str:
    text = []
    for r in table_rows:
        cells = [_cell(r.get(c), c) for c in cols]
        if r.get("skipped"):
            cells[cols.index("note")] = f"skipped: {r['skipped']}"
        text.append(cells)
    widths = [max([len(c)] + [len(t[i]) for t in text]) for i, c in enumerate(cols)]
    line = "  ".join(c.ljust(w) for c, w in zip(cols, widths)).rstrip()
    return "\n".join(
        [line, "-" * len(line)] + ["  ".join(v.ljust(w) for v, w in zip(t, widths)).rstrip() for t in text]
    )


# --- memory: peak and current resident size of this process, per stage -------------------------------------
MB = 1024 * 1024


def rss_now() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


class Stages:
    """Peak and current RSS after each named stage, with its wall time."""

    def __init__(self):
        self.rows, self.t0 = [], time.perf_counter()

    def mark(self, name: str, **extra) -> None:
        t = time.perf_counter()
        self.rows.append(
            {
                "stage": name,
                "seconds": round(t - self.t0, 2),
                "peak_mb": round(peak_rss() / MB, 1),
                "rss_mb": round(rss_now() / MB, 1),
                **extra,
            }
        )
        print(
            f"  {name:<32} peak {self.rows[-1]['peak_mb']:>8.1f} MB  now {self.rows[-1]['rss_mb']:>8.1f} MB"
            f"  ({t - self.t0:.1f}s)",
            file=sys.stderr,
            flush=True,
        )
        self.t0 = t
