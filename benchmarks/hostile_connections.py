"""What idle connections and stalled bodies cost TorchServe's front end, straight at its REST port (no front door).

    make serve && python -m benchmarks.hostile_connections
    python -m benchmarks.hostile_connections --idle 2000 --stalled 500 --hold 30

TorchServe 0.12's Netty pipeline has no idle timeout and buffers a body until it is whole, before the token is
checked. Each phase opens its connections to ``make serve``'s TorchServe and holds them ``--hold`` seconds:
plain idle connections, then requests whose headers announce a body of ``max_request_size`` and that stall
after 1 KiB of it, without a key and then with the inference key. It prints, for each phase, how many
connections the server still holds open, the front end's peak RSS (sampled every 0.5 s) and how long a photo
takes to be tagged meanwhile. The front door (``make front-door``) cuts such clients after 5 s.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import sys
import time
from typing import Iterator
from urllib.parse import urlsplit

import requests

from benchmarks.bench import add_served_arguments, generate_jpegs
from client.config import ServerConfigError, read_properties, read_server_config
from client.keys import KeyFileError, bearer, read_keys
from scripts.serve import running_server

STALLED_BYTES = 1024  # of the announced body, sent before the client stalls


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--idle", type=int, default=1000, help="idle connections held")
    parser.add_argument("--stalled", type=int, default=300, help="stalled bodies held, in each of the two phases")
    parser.add_argument("--hold", type=float, default=10.0, help="seconds each phase holds its connections")
    add_served_arguments(parser)
    return parser


@contextlib.contextmanager
def held_connections(host: str, port: int, count: int, first_bytes: bytes) -> Iterator[list[socket.socket]]:
    """``count`` connections that each sent ``first_bytes`` and then nothing; closed when the block ends."""
    connections = []
    try:
        for _ in range(count):
            connection = socket.create_connection((host, port), timeout=10)
            connection.sendall(first_bytes)
            connections.append(connection)
        yield connections
    finally:
        for connection in connections:
            connection.close()


def still_open(connections: list[socket.socket]) -> int:
    """Connections the server has neither answered nor closed."""
    open_count = 0
    for connection in connections:
        connection.setblocking(False)
        try:
            connection.recv(1)  # an answer or the server's close: not held any more
        except BlockingIOError:
            open_count += 1
        except OSError:
            pass
    return open_count


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        config = read_server_config(args.config)
        body_limit = int(read_properties(args.config)["max_request_size"])
        key = read_keys(args.key_file).inference
    except (ServerConfigError, KeyFileError, KeyError, ValueError) as exc:
        print(f"hostile_connections: {exc}", file=sys.stderr)
        return 1
    front_end = running_server()
    if front_end is None:
        print("hostile_connections: TorchServe is not running: start it with `make serve`", file=sys.stderr)
        return 1
    target = urlsplit(config.predictions_url)
    photo = generate_jpegs(1)[0]

    def rss_mib() -> float:
        return front_end.memory_info().rss / 2**20

    def tag_seconds() -> str:
        began = time.perf_counter()
        answer = requests.post(config.predictions_url, data=photo, timeout=60,
                               headers={"Content-Type": "image/jpeg", **bearer(key)})
        return f"{answer.status_code} in {time.perf_counter() - began:.2f} s"

    stalled_head = (f"POST {target.path} HTTP/1.1\r\nHost: {target.hostname}\r\nContent-Type: image/jpeg\r\n"
                    f"Content-Length: {body_limit}\r\n")
    phases = {
        "idle connections": (args.idle, b""),
        "stalled bodies, no key": (args.stalled, (stalled_head + "\r\n").encode() + b"x" * STALLED_BYTES),
        "stalled bodies, with the key": (args.stalled, (stalled_head + f"Authorization: Bearer {key}\r\n\r\n").encode()
                                         + b"x" * STALLED_BYTES),
    }
    print(f"front end (pid {front_end.pid}) RSS {rss_mib():.0f} MiB; a photo: {tag_seconds()}")
    for name, (count, first_bytes) in phases.items():
        with held_connections(target.hostname, target.port, count, first_bytes) as connections:
            peak, deadline = rss_mib(), time.monotonic() + args.hold
            while time.monotonic() < deadline:
                time.sleep(0.5)
                peak = max(peak, rss_mib())
            print(f"{name}: {count} held {args.hold:g} s, {still_open(connections)} still open; front end RSS peak "
                  f"{peak:.0f} MiB; a photo meanwhile: {tag_seconds()}", flush=True)
    print(f"after: front end RSS {rss_mib():.0f} MiB; a photo: {tag_seconds()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
