"""Download times of a trained digits candidate's exports: first (built and stored) and second (stored).

Usage::

    python bench/bench_downloads.py [--budget 4] [--first 3] [--second 20] [--s3] [--write]

In a scratch data folder and SQLite database, ``manage.py search`` trains a small digits search
(2 KB SRAM, 4 KB flash, seed 0) as the demo does; its best trained candidate that exports to
every format (a generator may refuse a model) is then downloaded
through the web views (Django's test client: login, owner check, the file streamed to the end)
in each format. *first* is a download with nothing stored (the folder emptied before each of
``--first`` tries: build + store + serve; before issue 14 every download cost this, less the
store), *second* one with the file stored (median of ``--second``). ``--s3`` puts the artifact
store in a bucket on moto's S3 server (``moto[server]``, as the tests use) instead of the disk.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._report import replace_section

FORMATS = {
    "header": "candidate_header",
    "bundle": "candidate_bundle",
    "tflite": "candidate_tflite",
    "onnx": "candidate_onnx",
}
USERNAME = "bench"


@contextlib.contextmanager
def moto_server() -> Iterator[dict[str, str]]:
    """moto's S3 server on a free port with one bucket: the NASWEB_S3_* environment for it."""
    import boto3

    from tests._s3 import ACCESS_KEY, REGION, SECRET_KEY, free_port, wait_for_port

    port = free_port()
    log = Path(tempfile.mkdtemp(prefix="nasweb-moto-")) / "moto.log"
    env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        wait_for_port(port, process, log)
        endpoint = f"http://127.0.0.1:{port}"
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
        )
        client.create_bucket(Bucket="nasweb-bench")
        yield {
            "NASWEB_S3_BUCKET": "nasweb-bench",
            "NASWEB_S3_ENDPOINT_URL": endpoint,
            "NASWEB_S3_ACCESS_KEY_ID": ACCESS_KEY,
            "NASWEB_S3_SECRET_ACCESS_KEY": SECRET_KEY,
            "NASWEB_S3_REGION": REGION,
        }
    finally:
        process.terminate()
        process.wait(timeout=10)


def setup_django(data_dir: Path, store_env: dict[str, str]) -> None:
    os.environ.pop("DATABASE_URL", None)  # always the scratch SQLite database
    os.environ.update(DJANGO_SETTINGS_MODULE="nasweb.settings", NASWEB_DATA_DIR=str(data_dir), **store_env)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def trained_candidate(budget: int):  # -> Candidate
    from django.core.management import call_command

    from searches.models import Candidate

    started = time.perf_counter()
    call_command(
        "search",
        "--dataset=digits",
        "--sram-kb=2",
        "--flash-kb=4",
        f"--budget={budget}",
        "--seed=0",
        f"--user={USERNAME}",
        stdout=io.StringIO(),
        stderr=io.StringIO(),
    )
    print(f"search: {time.perf_counter() - started:.1f} s", file=sys.stderr)
    from searches.engine.deploy.tflite import TFLiteExportError
    from searches.services import export

    rows = Candidate.objects.filter(status=Candidate.Status.DONE).exclude(weights="")
    for candidate in rows.select_related("run").order_by("-val_accuracy"):
        try:  # the best one every generator takes
            export.tflite_for(candidate)
        except TFLiteExportError:
            continue
        return candidate
    raise SystemExit("no trained candidate exports to every format: raise --budget")


def download(client, url: str) -> tuple[float, int]:
    started = time.perf_counter()
    response = client.get(url)
    size = len(response.getvalue())
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f"{url}: {response.status_code}")
    return elapsed, size


def measure(candidate, first: int, second: int) -> dict[str, dict[str, float]]:
    from django.contrib.auth import get_user_model
    from django.test import Client
    from django.urls import reverse

    from searches.services import downloads, files

    client = Client(HTTP_HOST="127.0.0.1")
    client.force_login(get_user_model().objects.get(username=USERNAME))
    urls = {name: reverse(view, args=[candidate.pk]) for name, view in FORMATS.items()}
    results: dict[str, dict[str, float]] = {}
    for name, url in urls.items():
        firsts = []
        for _ in range(first):
            extension = f".{downloads.FORMATS[name].extension}"
            for stored in files.names_under(downloads.candidate_folder(candidate)):
                if stored.endswith(extension):
                    files.delete(stored)
            elapsed, size = download(client, url)
            firsts.append(elapsed)
        results[name] = {"bytes": size, "cold": firsts[0], "first": statistics.median(firsts)}
    # Stored downloads in rounds over every format, so that a busy moment on the shared machine
    # does not land on one format only. The floor: a download that builds nothing (the
    # architecture JSON, served from the database row).
    reference = "architecture.json (reference: no build)"
    urls[reference] = reverse("candidate_architecture", args=[candidate.pk])
    times: dict[str, list[float]] = {name: [] for name in urls}
    for url in urls.values():
        download(client, url)  # every format stored (and the client warm) before timing
    for _ in range(second):
        for name, url in urls.items():
            elapsed, size = download(client, url)
            times[name].append(elapsed)
            results.setdefault(name, {"bytes": size})
    for name, measured in times.items():
        results[name] |= {"second": statistics.median(measured), "second_max": max(measured)}
        print(name, results[name], file=sys.stderr)
    return results


def report(args: argparse.Namespace, candidate, results: dict[str, dict[str, float]], total: float) -> str:
    store = "a bucket on moto's S3 server (127.0.0.1)" if args.s3 else "the local disk"
    command = "python bench/bench_downloads.py " + " ".join(
        [f"--budget {args.budget}", f"--first {args.first}", f"--second {args.second}"]
        + (["--s3"] if args.s3 else [])
        + ["--write"]
    )
    lines = [
        f"Command: `nice -n 19 {command}`",
        f"Machine: {os.cpu_count()} cores, {platform.machine()}, torch CPU, shared with other engineers' "
        f"test runs; {total:.0f} s in all. Store: {store}.",
        "",
        f"The best (exporting to every format) of a {args.budget}-candidate digits search (seed 0, 2 KB "
        "SRAM, 4 KB flash): candidate "
        f"{candidate.label} of run {candidate.run_id}, {candidate.params} parameters, "
        f"{candidate.flash_bytes} B flash. Each download goes through the web view (login, owner check, the "
        f"whole body read). *first*: nothing stored (median of {args.first}; build + store + serve, "
        "what every download cost before, less the store; *cold*: the first of them, the first export "
        f"of its kind in this process); *second*: stored (median of {args.second}, in rounds over the "
        "formats, and the slowest). "
        "The architecture JSON is served from the database row with nothing to build: the floor of a "
        "download through the views.",
        "",
        "| format | size | first, cold | first download | second download | slowest second | speed-up |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        if "first" not in r:
            lines.append(
                f"| {name} | {r['bytes']:,} B | — | — | {r['second'] * 1000:.1f} ms | "
                f"{r['second_max'] * 1000:.1f} ms | — |"
            )
            continue
        lines.append(
            f"| {name} | {r['bytes']:,} B | {r['cold'] * 1000:.1f} ms | {r['first'] * 1000:.1f} ms | "
            f"{r['second'] * 1000:.1f} ms | {r['second_max'] * 1000:.1f} ms | "
            f"{r['first'] / r['second']:.0f}x |"
        )
    lines += [
        "",
        "A stored download stats (disk) or HEADs (S3) the weights, the int8 model and the export, "
        "and streams the export (one GET on S3): 4 requests to the object store, each about as "
        "slow as the store (moto is a Python server on the same busy machine). Before issue 14 "
        "every download cost about its *first download* (a fresh process's first, *first, cold*).",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=4, help="candidates the digits search trains")
    parser.add_argument("--first", type=int, default=3, help="first downloads per format (median)")
    parser.add_argument("--second", type=int, default=20, help="second downloads per format (median)")
    parser.add_argument("--s3", action="store_true", help="store in a bucket on moto's S3 server")
    parser.add_argument("--write", action="store_true", help="write the section of docs/benchmarks.md")
    args = parser.parse_args()
    started = time.perf_counter()
    data_dir = Path(tempfile.mkdtemp(prefix="nasweb-bench-"))
    with moto_server() if args.s3 else contextlib.nullcontext({}) as store_env:
        setup_django(data_dir, store_env)
        candidate = trained_candidate(args.budget)
        results = measure(candidate, args.first, args.second)
        body = report(args, candidate, results, time.perf_counter() - started)
    print(body)
    if args.write:
        title = "Downloads: first and stored" + (" (S3)" if args.s3 else "")
        replace_section(ROOT / "docs" / "benchmarks.md", title, body)


if __name__ == "__main__":
    main()
