"""Staging throughput and peak memory (PSS) at 10 MB, 100 MB and 1 GB, beside a plain boto3 upload of it.

Generates abalone-like CSV files (cached in --workdir), starts moto's S3 server in its own process for
each size, and runs each measurement in a fresh Python process so that its peak memory is its own:

- ``boto3``: ``upload_file`` of the source (boto3's managed multipart upload): the physical limit;
- ``stage``: ``abalone_pipeline.staging.stage`` of the same file, streamed from disk into the S3 store
  (validation, split, duplicate detection, spooling, create-only multipart upload, verification), once
  per number of worker processes in ``--workers``.

Peak memory is sampled every 20 ms as the sum of the proportional set size (PSS) of the measuring process
and its worker processes: a page the forked workers share with it is counted once in all, not once in
each (their plain RSS would count the libraries they inherit three times with two workers).

Usage (about 6 minutes on 2 vCPUs, plus the first generation of the files)::

    .venv/bin/python bench/staging_throughput.py [--sizes 10 100 1024] [--workers 1 2 4] [--workdir /tmp/abalone-bench]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MIB = 1 << 20
BUCKET = "bench"


def generate(path: Path, size: int, seed: int = 0) -> None:
    """Abalone-like rows (Sex, seven measurements, Rings) until the file reaches ``size`` bytes."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv

    rng = np.random.default_rng(seed)
    tmp = path.with_suffix(".partial")
    options = pacsv.WriteOptions(include_header=False, quoting_style="none")
    with tmp.open("wb") as handle:
        while handle.tell() < size:
            n = 200_000
            length = rng.normal(0.52, 0.12, n).clip(0.075, 0.815)
            diameter = (length * 0.8 + rng.normal(0, 0.02, n)).clip(0.055, 0.65)
            height = (diameter * 0.35 + rng.normal(0, 0.015, n)).clip(0.01, 1.13)
            whole = (length**3 * 1.9 + rng.normal(0, 0.05, n)).clip(0.002, 2.8)
            table = pa.table(
                {
                    "Sex": np.array(["M", "F", "I"])[rng.integers(0, 3, n)],
                    "Length": length.round(4),
                    "Diameter": diameter.round(4),
                    "Height": height.round(4),
                    "Whole_weight": whole.round(4),
                    "Shucked_weight": (whole * rng.uniform(0.35, 0.5, n)).round(4),
                    "Viscera_weight": (whole * rng.uniform(0.18, 0.25, n)).round(4),
                    "Shell_weight": (whole * rng.uniform(0.25, 0.33, n)).round(4),
                    "Rings": rng.integers(1, 30, n),
                }
            )
            pacsv.write_csv(table, handle, options)
    with tmp.open("r+b") as handle:  # cut to the last whole line at or after ``size``
        handle.seek(size)
        rest = handle.read(256)
        handle.truncate(size + rest.index(b"\n") + 1 if b"\n" in rest else handle.tell())
    tmp.rename(path)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _client(endpoint: str):
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
        region_name="us-east-1",
    )


class PeakRss:
    """The largest sum of the PSS of this process and its descendants, sampled in a thread."""

    def __init__(self, interval: float = 0.02) -> None:
        import psutil

        self.process = psutil.Process()
        self.interval = interval
        self.peak = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        import psutil

        while not self.done.is_set():
            total = self.process.memory_full_info().pss
            for process in self.process.children(recursive=True):
                try:
                    total += process.memory_full_info().pss
                except psutil.Error:
                    pass  # it exited between listing and reading
            self.peak = max(self.peak, total)
            self.done.wait(self.interval)

    def __enter__(self) -> PeakRss:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.done.set()
        self.thread.join()


def child(mode: str, source: Path, endpoint: str, key: str, workers: int) -> None:
    """One measurement in this process; prints wall seconds and peak PSS (with its workers) as JSON."""
    sys.path.insert(0, str(ROOT / "include"))
    client = _client(endpoint)
    extra: dict[str, object] = {}
    if mode == "stage":
        # Imported before the clock starts, as boto3 is: a fixed cost (about 1 s), not throughput.
        import pandera.pandas  # ruff: ignore[unused-import]
        import pyarrow.csv  # ruff: ignore[unused-import]

        from abalone_pipeline.objectstore import open_store
        from abalone_pipeline.staging import stage
        from abalone_pipeline.staging.sources import open_source
    with PeakRss() as sampled:
        started = time.perf_counter()
        if mode == "boto3":
            client.upload_file(str(source), BUCKET, key)
        else:
            store = open_store(f"s3://{BUCKET}/{key}", lambda: client)
            with open_source(str(source)) as opened:
                staged = stage(opened, str(source), store, workers=workers)
            extra = {
                "rows": sum(staged.rows.values()),
                "quarantined": staged.validation["quarantined_rows"],
                "phases": staged.seconds,
                "workers": staged.workers,
                "dataset_id": staged.dataset_id,
            }
        seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "peak_rss": sampled.peak, **extra}))


def measure(mode: str, source: Path, endpoint: str, key: str, workers: int = 1) -> dict:
    command = [sys.executable, __file__, "--child", mode, "--source", str(source), "--endpoint", endpoint]
    command += ["--key", key, "--child-workers", str(workers)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{mode} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1024], help="source sizes in MiB")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4], help="worker processes to stage with")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/abalone-bench"))
    parser.add_argument("--child-workers", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--child", choices=["boto3", "stage"], help=argparse.SUPPRESS)
    parser.add_argument("--source", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.source, args.endpoint, args.key, args.child_workers)
        return

    args.workdir.mkdir(parents=True, exist_ok=True)
    print(
        f"# {platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}"
    )
    print(
        "| source | rows | boto3 s | boto3 MB/s | boto3 peak PSS | workers | stage s (scan + assemble + write) "
        "| stage MB/s | stage peak PSS (all processes) | throughput vs boto3 | memory vs smallest, same --workers "
        "| dataset |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    smallest_rss: dict[int, int] = {}
    for size_mib in args.sizes:
        source = args.workdir / f"abalone-{size_mib}MiB.csv"
        if not source.exists():
            print(f"generating {source} ...", file=sys.stderr)
            generate(source, size_mib * MIB)
        megabytes = source.stat().st_size / 1e6
        port = _free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            endpoint = f"http://127.0.0.1:{port}"
            for _ in range(100):
                try:
                    _client(endpoint).create_bucket(Bucket=BUCKET)
                    break
                except Exception:
                    time.sleep(0.1)
            plain = measure("boto3", source, endpoint, "plain/source.csv")
            for workers in args.workers:
                staged = measure("stage", source, endpoint, f"staged-{workers}", workers)
                report(size_mib, megabytes, plain, staged, smallest_rss.setdefault(workers, staged["peak_rss"]))
        finally:
            server.terminate()
            server.wait()


def report(size_mib: int, megabytes: float, plain: dict, staged: dict, smallest_rss: int) -> None:
    """One row of the table; the dataset id is the same for every number of workers (checked by the tests)."""
    phases = " + ".join(f"{staged['phases'][phase]:.1f}" for phase in ("scan", "assemble", "write"))
    print(
        f"| {size_mib} MiB | {staged['rows'] + staged['quarantined']:,} | {plain['seconds']:.1f} "
        f"| {megabytes / plain['seconds']:.0f} | {plain['peak_rss'] / MIB:.0f} MiB | {staged['workers']} "
        f"| {staged['seconds']:.1f} ({phases}) | {megabytes / staged['seconds']:.0f} "
        f"| {staged['peak_rss'] / MIB:.0f} MiB | {plain['seconds'] / staged['seconds']:.2f} "
        f"| {staged['peak_rss'] / smallest_rss:.2f} | `{staged['dataset_id']}` |",
        flush=True,
    )


if __name__ == "__main__":
    main()
