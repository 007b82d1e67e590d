"""Latency and throughput of the running tagger (start it first with `make serve`).

    python -m benchmarks.serving data/synthetic/JPEGImages/test_0000*.jpg --requests 30 --clients 8 --seconds 30

Prints the latency of lone requests (one at a time: median, p90) and the throughput of N concurrent clients
(each sends its next image as soon as its last one is answered), with their latency under load.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from client.keys import KeyFileError, read_keys
from client.tag import tag_image


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def timed_request(image: Path, *, url: str, key: str) -> float:
    """Seconds one request took; raises when the server did not answer 200."""
    started = time.perf_counter()
    result = tag_image(image, url=url, key=key)
    if result.error:
        raise RuntimeError(f"{image}: {result.error}")
    return time.perf_counter() - started


def run_clients(images: list[Path], *, url: str, key: str, clients: int, seconds: float) -> list[float]:
    """Latencies of all requests that ``clients`` closed-loop clients completed within ``seconds``."""
    deadline = time.perf_counter() + seconds

    def client(offset: int) -> list[float]:
        latencies = []
        for image in itertools.islice(itertools.cycle(images), offset, None):
            if time.perf_counter() >= deadline:
                return latencies
            latencies.append(timed_request(image, url=url, key=key))
        return latencies

    with ThreadPoolExecutor(max_workers=clients) as pool:
        return [t for latencies in pool.map(client, range(clients)) for t in latencies]


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="+", type=Path)
    parser.add_argument("--url", default="http://127.0.0.1:8080/predictions/tagger")
    parser.add_argument("--key-file", default="key_file.json")
    parser.add_argument("--requests", type=int, default=30, help="lone requests for the latency")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the concurrent run")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        key = read_keys(args.key_file).inference
        timed_request(args.images[0], url=args.url, key=key)  # warm-up: the first call pays one-off costs
        lone = [timed_request(image, url=args.url, key=key)
                for image in itertools.islice(itertools.cycle(args.images), args.requests)]
        started = time.perf_counter()
        loaded = run_clients(args.images, url=args.url, key=key, clients=args.clients, seconds=args.seconds)
        elapsed = time.perf_counter() - started
    except (KeyFileError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"lone requests: {len(lone)}, latency median {statistics.median(lone) * 1000:.0f} ms, "
          f"p90 {percentile(lone, 0.9) * 1000:.0f} ms")
    print(f"{args.clients} concurrent clients: {len(loaded)} requests in {elapsed:.1f} s = "
          f"{len(loaded) / elapsed:.1f} images/s, latency median {statistics.median(loaded) * 1000:.0f} ms, "
          f"p90 {percentile(loaded, 0.9) * 1000:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
