"""The front door: nginx (Debian's package) in front of TorchServe's inference API (``make front-door``).

``python -m scripts.front_door start [--port 8443] [--listen 0.0.0.0]`` renders
``deploy/front-door/nginx.conf.template`` from ``config.properties`` (the upstream is its ``inference_address``,
the body cap its ``max_request_size``, the model name that of the archive it loads) into ``logs/front-door/``
and starts nginx there as the current user, in the background; ``stop`` stops it, ``render`` prints the
config. It passes only ``POST /predictions/<model>`` (and PUT, ``curl -T``) and ``GET /ping``, and refuses
web forms (415), calls without a key (401), bodies over the cap (413), slow clients (cut after
``--timeout``) and more than ``--per-client-conns`` requests at once from one address (429).
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import psutil

from client.config import ServerConfigError, read_properties, read_server_config
from common.model_archive import ArchiveReadError, packed_model_config
from project import ROOT, SERVER_CONFIG

TEMPLATE = ROOT / "deploy" / "front-door" / "nginx.conf.template"
DOOR_DIR = ROOT / "logs" / "front-door"  # the rendered config, pid file, logs and body buffers
# nginx's defaults write under /var/lib/nginx (root's); the template points each at these folders instead.
TEMP_FOLDERS = ("body", "proxy", "fastcgi", "uwsgi", "scgi")
PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


class FrontDoorError(RuntimeError):
    """nginx is missing, refused the config, or did not start or stop."""


@dataclass(frozen=True)
class DoorSettings:
    """The door's own limits (the defaults of ``get_args_parser``); the rest comes from config.properties."""

    port: int
    listen: str
    timeout_s: int
    per_client_conns: int
    door_conns: int
    upstream_conns: int
    form_conns: int


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m scripts.front_door", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["start", "stop", "render"])
    parser.add_argument("--config", type=Path, default=SERVER_CONFIG, help="TorchServe config it fronts")
    parser.add_argument("--folder", type=Path, default=DOOR_DIR, help="nginx's prefix: config, pid, logs")
    parser.add_argument("--port", type=int, default=8443, help="port the door listens on")
    parser.add_argument("--listen", default="0.0.0.0", help="address the door listens on")
    parser.add_argument("--timeout", dest="timeout_s", type=int, default=5, metavar="SECONDS",
                        help="seconds a client may stall while sending its header or body, or while reading")
    parser.add_argument("--per-client-conns", type=int, default=4,
                        help="requests handled at once for one client address (more get 429)")
    parser.add_argument("--door-conns", type=int, default=64,
                        help="requests handled at once in all, each body buffered on disk (more get 429)")
    # On 2 cores: two workers x batchSize 4 (model/model-config.yaml), a full batch each; more would only wait
    # in TorchServe, holding their bodies in its memory.
    parser.add_argument("--upstream-conns", type=int, default=8,
                        help="raw, JSON and small multipart bodies handed to TorchServe at once (more get 503)")
    # One multipart body of 29 MiB of empty fields took TorchServe's front end ~450 MiB; two at once, ~1 GiB.
    parser.add_argument("--form-conns", type=int, default=1,
                        help="multipart bodies of 1 MB or more handed to TorchServe at once (more get 503)")
    return parser


def settings_from(args: argparse.Namespace) -> DoorSettings:
    return DoorSettings(**{name: getattr(args, name) for name in DoorSettings.__dataclass_fields__})


def default_settings(**changes) -> DoorSettings:
    """The settings of ``make front-door``, with ``changes`` (tests: another port)."""
    return replace(settings_from(get_args_parser().parse_args(["start"])), **changes)


def render(config_file: Path, settings: DoorSettings) -> str:
    """The nginx config for the TorchServe of ``config_file``.

    Raises:
        ServerConfigError: the config lacks an address, the archive or ``max_request_size``.
        ArchiveReadError: the archive it loads cannot be read (its responseTimeout sets the upstream wait).
    """
    config = read_server_config(config_file)
    properties = read_properties(config_file)
    upstream = urlsplit(config.inference_url)
    if upstream.scheme != "http" or not upstream.hostname or upstream.port is None:
        raise ServerConfigError(f"{config_file}: inference_address {config.inference_url} is not http://host:port")
    if "max_request_size" not in properties:
        raise ServerConfigError(f"{config_file} has no max_request_size setting")
    response_timeout = packed_model_config(config.archive).get("responseTimeout")
    if response_timeout is None:
        raise ArchiveReadError(f"{config.archive}: its model config sets no responseTimeout")
    values = {
        **{name: str(value) for name, value in vars(settings).items()},
        "upstream": f"{upstream.hostname}:{upstream.port}",
        "max_body": properties["max_request_size"],
        "model": config.model_name,
        # A batch's limit in TorchServe, and as long again for the queue before it.
        "read_timeout_s": str(2 * int(response_timeout)),
        # As root nginx would run its worker as nobody, who cannot enter a private folder; as anyone else
        # it runs as that user and the line would only draw a warning.
        "user_line": f"user {getpass.getuser()};" if os.geteuid() == 0 else "# user: the one who starts it",
    }
    return PLACEHOLDER.sub(lambda match: values[match[1]], TEMPLATE.read_text())


def nginx() -> str:
    """The nginx binary (Debian's package; PATH, then /usr/sbin, which a user's PATH may lack)."""
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise FrontDoorError("nginx is not installed: apt-get install nginx")
    return found


def _nginx(folder: Path, *args: str) -> subprocess.CompletedProcess:
    # -e: the error log from the first line on (the default, /var/log/nginx, is root's).
    return subprocess.run([nginx(), "-p", f"{folder}/", "-c", "nginx.conf", "-e", "logs/error.log", *args],
                          capture_output=True, text=True)


def running_door(folder: Path = DOOR_DIR) -> psutil.Process | None:
    """The nginx master recorded in ``folder``/nginx.pid, if it is alive."""
    try:
        process = psutil.Process(int((folder / "nginx.pid").read_text().strip()))
        return process if "nginx" in process.name() else None
    except (OSError, ValueError, psutil.Error):
        return None


def start_door(config_file: Path, settings: DoorSettings, folder: Path = DOOR_DIR) -> psutil.Process:
    """Renders the config into ``folder`` and starts nginx there (a running one is stopped first).

    Raises:
        FrontDoorError: nginx is missing, refused the config or did not start.
    """
    stop_door(folder)
    for sub in ("logs", *(f"tmp/{name}" for name in TEMP_FOLDERS)):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    (folder / "nginx.conf").write_text(render(config_file, settings))
    done = _nginx(folder)
    if done.returncode != 0:
        raise FrontDoorError(f"nginx did not start: {done.stderr.strip()}")
    # The launcher returns when it has forked the master, which writes its pid file just after.
    deadline = time.monotonic() + 5
    while (door := running_door(folder)) is None:
        if time.monotonic() > deadline:
            raise FrontDoorError(f"nginx wrote no pid file in {folder}; its log: {folder / 'logs' / 'error.log'}")
        time.sleep(0.1)
    return door


def stop_door(folder: Path = DOOR_DIR, timeout: float = 10) -> bool:
    """Stops the nginx of ``folder`` (its master and workers); False when none was running."""
    door = running_door(folder)
    if door is None:
        return False
    family = [door, *door.children()]
    _nginx(folder, "-s", "stop")
    _, alive = psutil.wait_procs(family, timeout=timeout)
    for process in alive:
        process.kill()
    return True


@contextlib.contextmanager
def door_on(config_file: Path, settings: DoorSettings, folder: Path) -> Iterator[psutil.Process]:
    """nginx in front of the TorchServe of ``config_file`` for the block (tests); stopped on exit."""
    try:
        yield start_door(config_file, settings, folder)
    finally:
        stop_door(folder)


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    settings = settings_from(args)
    try:
        if args.action == "render":
            print(render(args.config, settings), end="")
        elif args.action == "start":
            door = start_door(args.config, settings, args.folder)
            model = read_server_config(args.config).model_name
            print(f"The front door (nginx, pid {door.pid}) serves http://{args.listen}:{args.port}/predictions/{model} "
                  f"and /ping; config and logs in {args.folder}/. `make front-door-stop` stops it.")
        else:
            print("Front door stopped." if stop_door(args.folder) else "The front door is not running.")
        return 0
    except (FrontDoorError, ServerConfigError, ArchiveReadError) as exc:
        print(f"front-door: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
