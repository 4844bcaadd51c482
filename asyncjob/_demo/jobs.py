"""The jobs that ``asyncjob demo`` runs: small, realistic, and quick.

Coroutine jobs and sync jobs (run in the runner's threads) report their
progress the same way, with :func:`asyncjob.set_progress`.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncjob

__all__ = (
    "DemoJob",
    "build_report",
    "demo_jobs",
    "download_file",
    "hash_data",
    "import_records",
    "resize_image",
    "sample_records",
)

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class DemoJob:
    """One job of the demo: what to perform, and how to show it.

    ``total`` is the progress value the job reaches when it is done, so that
    its progress can be drawn as a fraction; ``fails`` marks the job that is
    meant to fail.
    """

    label: str
    func: Callable[..., Any]
    args: tuple[Any, ...]
    total: float
    fails: bool = False


# -- the jobs ----------------------------------------------------------------


async def download_file(url: str, size: int, chunk_size: int = 96 * 1024) -> str:
    """Pretend to download ``url``: ``size`` bytes arriving chunk by chunk.

    Reports the bytes received so far.
    """
    network = random.Random(url)
    received = 0
    while received < size:
        await asyncio.sleep(network.uniform(0.02, 0.07))
        received = min(size, received + chunk_size)
        asyncjob.set_progress(received, f"{received / MIB:.1f} of {size / MIB:.1f} MiB")
    return f"{url.rsplit('/', 1)[-1]}, {size / MIB:.1f} MiB"


def hash_data(chunks: int, chunk_size: int, seed: int = 1, pace: float = 0.025) -> str:
    """Hash generated data with SHA-256, one chunk at a time (a sync job).

    ``pace`` seconds per chunk stand for reading it from a slow disk.
    Reports the percentage done.
    """
    source = random.Random(seed)
    digest = hashlib.sha256()
    for done in range(1, chunks + 1):
        digest.update(source.randbytes(chunk_size))
        time.sleep(pace)
        asyncjob.set_progress(100 * done / chunks, f"chunk {done} of {chunks}")
    return f"sha256:{digest.hexdigest()}"


def make_image(width: int, height: int) -> list[list[int]]:
    """A grayscale test picture: ``height`` rows of ``width`` levels (0-255)."""
    cx, cy = width / 2, height / 2
    return [
        [int(127.5 + 127.5 * math.sin(math.hypot(x - cx, y - cy) / 9)) for x in range(width)]
        for y in range(height)
    ]


def resize_image(width: int, height: int, factor: int, pace: float = 0.015) -> str:
    """Make a thumbnail of a generated picture, averaging each square of
    ``factor`` x ``factor`` pixels into one (a sync job, in pure Python).

    Reports the thumbnail rows done.
    """
    image = make_image(width, height)
    rows, cols = height // factor, width // factor
    thumbnail: list[list[int]] = []
    for r in range(rows):
        block = image[r * factor : (r + 1) * factor]
        sums = [sum(line[c * factor : (c + 1) * factor]) for line in block for c in range(cols)]
        thumbnail.append([sum(sums[c::cols]) // factor**2 for c in range(cols)])
        time.sleep(pace)
        asyncjob.set_progress(r + 1, f"row {r + 1} of {rows}")
    mean = sum(map(sum, thumbnail)) // (rows * cols)
    return f"{width}x{height} -> {cols}x{rows} px, mean level {mean}"


REPORT_STEPS = (
    ("querying sales", 0.35),
    ("totalling by region", 0.3),
    ("drawing charts", 0.45),
    ("writing the PDF", 0.3),
)


async def build_report(year: int) -> str:
    """Build the sales report of ``year`` in a few steps (a coroutine job).

    Names the file after the job's own id, from :func:`asyncjob.current_job_id`.
    Reports the steps done, with the step's name as data.
    """
    job_id = asyncjob.current_job_id() or "local"
    sales = random.Random(year)
    total = 0
    for done, (step, seconds) in enumerate(REPORT_STEPS):
        asyncjob.set_progress(done, step)
        total += sum(sales.randrange(100, 5000) for _ in range(250))
        await asyncio.sleep(seconds)
    asyncjob.set_progress(len(REPORT_STEPS), "done")
    return f"report-{year}-{job_id[:8]}.pdf, sales {total:,}"


def sample_records(count: int, corrupt: int) -> list[str]:
    """``count`` lines of ``id;product;quantity``, line ``corrupt`` (1-based) broken."""
    products = ("bolt", "nut", "washer", "hinge", "bracket")
    lines = [f"{i};{products[i % len(products)]};{i * 7 % 40 + 1}" for i in range(1, count + 1)]
    lines[corrupt - 1] = f"{corrupt};{products[0]};#REF!"
    return lines


def import_records(lines: Sequence[str], pace: float = 0.02) -> str:
    """Import ``id;product;quantity`` records (a sync job).

    Raises ValueError at the first corrupt line. Reports the lines read.
    """
    quantities: dict[str, int] = {}
    for n, line in enumerate(lines, start=1):
        _, product, quantity = line.split(";")
        if not quantity.isdigit():
            raise ValueError(f"line {n} is corrupt: quantity {quantity!r}")
        quantities[product] = quantities.get(product, 0) + int(quantity)
        time.sleep(pace)
        asyncjob.set_progress(n, f"line {n} of {len(lines)}")
    return f"{len(lines)} records, {len(quantities)} products"


def demo_jobs() -> list[DemoJob]:
    """The jobs the demo performs, each finishing within about two seconds."""
    records = sample_records(60, corrupt=38)
    return [
        DemoJob("download", download_file, ("https://example.org/photos.zip", 3 * MIB), 3 * MIB),
        DemoJob("checksum", hash_data, (64, 256 * 1024), 100),
        DemoJob("thumbnail", resize_image, (480, 360, 4), 360 // 4),
        DemoJob("report", build_report, (2025,), len(REPORT_STEPS)),
        DemoJob("import", import_records, (records,), len(records), fails=True),
    ]


# -- running them --------------------------------------------------------------
