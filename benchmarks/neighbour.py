"""The served path beside a noisy neighbour: another process keeps one core busy, as on a node shared with
other work, while the plain baseline server of ``make bench`` and the TorchServe of ``make serve`` are loaded.

    make bench-neighbour                                   # starts `make serve` first, then runs this
    python -m benchmarks.neighbour --rounds 5 --seconds 15 # more rounds, steadier medians

Phases alternate in every round (baseline, then served, then the other way round in the next round), so that
the machine's drift falls on both alike: a lone client, then 8 closed-loop clients, each with the neighbour
spinning. It prints each phase and the median ratios the goals are stated in: the lone request's p50, served
over baseline (goal <= 1.25), and the 8-client img/s, served over baseline (goal >= 1.0).
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import requests

from benchmarks.bench import (Measurement, add_served_arguments, baseline_server, generate_jpegs, machine, ratio_line,
                              run_clients)
from client.config import read_server_config
from client.keys import bearer, read_keys
from common.model_archive import extract_serialized_file
from scripts.serve import served_layout

LOADED_CLIENTS = 8


def _spin() -> None:
    while True:
        pass


@contextlib.contextmanager
def busy_neighbour(cores: int) -> Iterator[None]:
    """``cores`` processes that each keep a core busy (plain Python loops) until the block ends."""
    context = multiprocessing.get_context("spawn")
    spinners = [context.Process(target=_spin, daemon=True) for _ in range(cores)]
    for spinner in spinners:
        spinner.start()
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.join()


@contextlib.contextmanager
def started_baseline(checkpoint: Path) -> Iterator[str]:
    """bench's plain one-image-per-request server on ``checkpoint``; yields its URL."""
    context = multiprocessing.get_context("spawn")
    ready = context.Queue()
    server = context.Process(target=baseline_server, args=(str(checkpoint), "cpu", ready), daemon=True)
    server.start()
    try:
        yield f"http://127.0.0.1:{ready.get()}/"
    finally:
        server.terminate()
        server.join()


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of alternated phases")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each measured phase")
    parser.add_argument("--busy-cores", type=int, default=1, help="cores the neighbour keeps busy")
    parser.add_argument("--images", type=int, default=24, help="generated JPEGs, as in make bench")
    add_served_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    config = read_server_config(args.config)
    keys = read_keys(args.key_file)
    jpegs = generate_jpegs(args.images)
    served_auth = bearer(keys.inference)
    layout = served_layout(config, keys)
    print(f"machine: {machine()}; a neighbour keeps {args.busy_cores} core(s) busy in every phase")
    print(f"served: TorchServe {layout.label} ({layout.describe()}); {args.seconds:g} s per phase")
    print(f"{'':<58} {'img/s':>7} {'p50 ms':>8} {'p90 ms':>8}")
    phases: dict[tuple[str, int], list[Measurement]] = {}
    with tempfile.TemporaryDirectory() as tmp, started_baseline(
            extract_serialized_file(config.archive, Path(tmp))) as baseline_url:
        servers = {"baseline": (baseline_url, {}), "served": (config.predictions_url, served_auth)}
        for round_index in range(args.rounds):
            order = ["baseline", "served"] if round_index % 2 == 0 else ["served", "baseline"]
            for clients in (1, LOADED_CLIENTS):
                for name in order:
                    url, headers = servers[name]
                    run_clients(url, jpegs, clients=clients, seconds=1.0, headers=headers, name="warm-up")
                    with busy_neighbour(args.busy_cores):
                        measured = run_clients(url, jpegs, clients=clients, seconds=args.seconds, headers=headers,
                                               name=f"round {round_index + 1}: {name}, {clients} client(s)")
                    print(measured.row(), flush=True)
                    phases.setdefault((name, clients), []).append(measured)

    def median_ratio(clients: int, of) -> float:
        return statistics.median(of(s) / of(b) for s, b in zip(phases[("served", clients)],
                                                                 phases[("baseline", clients)]))

    print(f"ratios (median of {args.rounds} rounds, one core taken):")
    print(ratio_line("lone request p50, served / baseline", median_ratio(1, lambda m: m.latency_ms(0.5)), "<= 1.25"))
    print(ratio_line(f"served / baseline img/s, {LOADED_CLIENTS} clients",
                     median_ratio(LOADED_CLIENTS, lambda m: m.images_per_second), ">= 1.0"))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (RuntimeError, OSError, requests.RequestException) as exc:
        print(f"neighbour: {exc}", file=sys.stderr)
        sys.exit(1)
