"""A page to try the tagger in a browser (``make page``): drop photos, see each with its boxes and tags.

``python -m client.page [--port 8090] [--listen 127.0.0.1] [--config config.properties] [--key-file F]``
serves ``client/page.html`` (with its script, style and icon: nothing is loaded from the internet) and passes
each photo the page uploads (``POST /tag``) on to the TorchServe of ``config.properties`` (its
``inference_address`` and model), adding the inference key read from ``key_file.json`` for each photo: the key
never reaches the browser, and a key renewed by ``make serve`` is used at once. TorchServe's status and JSON
answer go back to the page as they are. A body over the config's ``max_request_size`` gets 413 here, without
reaching TorchServe.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import requests

from client.config import ServerConfigError, read_properties, read_server_config
from client.keys import SERVED_KEY_FILE, KeyFileError, bearer, read_keys
from handler.request_parsing import FORMAT_HEADER, THRESHOLD_HEADER
from handler.text import error_line
from project import SERVER_CONFIG

PAGE_DIR = Path(__file__).resolve().parent
# The only files served, by path: nothing else of the repository (the key file least of all) is reachable.
STATIC_FILES = {
    "/": ("page.html", "text/html; charset=utf-8"),
    "/page.js": ("page.js", "text/javascript; charset=utf-8"),
    "/page.css": ("page.css", "text/css; charset=utf-8"),
    "/page-icon.svg": ("page-icon.svg", "image/svg+xml"),
}
TAG_PATH = "/tag"
SETTINGS_PATH = "/settings"
# The browser may run only the page's own script and style, show only photos it was given (blob:), and talk
# only to this server: no asset from anywhere else, and injected markup could not run.
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
                           "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
# Headers of the page's upload that are passed on (the body's type with its multipart boundary, the options);
# any other, cookies included, stays here.
FORWARDED_HEADERS = ("Content-Type", FORMAT_HEADER, THRESHOLD_HEADER)
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


@dataclass(frozen=True)
class PageSettings:
    """Where the page's photos go.

    Args:
        predictions_url: TorchServe's endpoint for the model.
        model_name: the served model.
        key_file: TorchServe's ``key_file.json``, read for each photo.
        max_request_size: the largest body passed on (TorchServe's own limit).
        timeout_s: seconds to wait for TorchServe's answer.
    """

    predictions_url: str
    model_name: str
    key_file: Path
    max_request_size: int
    timeout_s: float


def read_page_settings(config_file: Path, *, key_file: Path, timeout_s: float) -> PageSettings:
    """The settings of a page in front of the TorchServe of ``config_file``.

    Raises:
        ServerConfigError: the config lacks an address, the model or ``max_request_size``.
    """
    config = read_server_config(config_file)
    size = read_properties(config_file).get("max_request_size")
    if size is None or not size.isdigit():
        raise ServerConfigError(f"{config_file} has no max_request_size setting in bytes")
    return PageSettings(predictions_url=config.predictions_url, model_name=config.model_name, key_file=key_file,
                        max_request_size=int(size), timeout_s=timeout_s)


@dataclass(frozen=True)
class Answer:
    """What the page gets back: a status, a body and its type."""

    status: int
    body: bytes
    content_type: str = "application/json"


def refusal(status: int, error: str, message: str) -> Answer:
    """This server's own error, in the shape of the handler's (``{"error", "message"}``)."""
    return Answer(status, json.dumps({"error": error, "message": message}).encode())


def forward(body: bytes, headers: dict[str, str], settings: PageSettings) -> Answer:
    """Sends one upload to TorchServe with the inference key and returns its answer as it came.

    Args:
        body: the upload, whole.
        headers: the ``FORWARDED_HEADERS`` the page sent.
        settings: where to.
    """
    try:
        key = read_keys(settings.key_file).inference
    except KeyFileError as exc:
        return refusal(503, "no_key", str(exc))
    try:
        answer = requests.post(settings.predictions_url, data=body, headers={**headers, **bearer(key)},
                               timeout=settings.timeout_s)
    except requests.ConnectionError:
        return refusal(502, "unreachable", f"cannot reach {settings.predictions_url}: is TorchServe running? "
                                           "(make serve)")
    except requests.Timeout:
        return refusal(504, "timeout", f"{settings.predictions_url} did not answer within {settings.timeout_s:.0f} s")
    except requests.RequestException as exc:
        return refusal(502, "upstream_failed", f"request to {settings.predictions_url} failed: {error_line(exc)}")
    return Answer(answer.status_code, answer.content, answer.headers.get("Content-Type", "application/json"))


class PageServer(ThreadingHTTPServer):
    """The page and its proxy on one address; each request in a thread of its own."""

    daemon_threads = True  # Ctrl-C does not wait for an upload in flight

    def __init__(self, address: tuple[str, int], *, settings: PageSettings) -> None:
        super().__init__(address, PageHandler)
        self.settings = settings
        self.loopback = ipaddress.ip_address(self.server_address[0]).is_loopback


class PageHandler(BaseHTTPRequestHandler):
    server: PageServer
    server_version = "tagger-page"

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if (refused := self._refused_origin()) is not None:
            return self._send(refused)
        path = urlsplit(self.path).path
        if path == SETTINGS_PATH:
            settings = self.server.settings
            return self._send(Answer(200, json.dumps({"model": settings.model_name,
                                                      "max_request_size": settings.max_request_size}).encode()))
        if path not in STATIC_FILES:
            return self._send(refusal(404, "not_found", f"{path} is not part of the page"))
        name, content_type = STATIC_FILES[path]
        self._send(Answer(200, (PAGE_DIR / name).read_bytes(), content_type))

    def do_POST(self) -> None:  # noqa: N802
        if (refused := self._refused_origin()) is not None:
            return self._send(refused)
        if urlsplit(self.path).path != TAG_PATH:
            return self._send(refusal(404, "not_found", f"POST photos to {TAG_PATH}"))
        if (size := self._body_size()) is None:
            return
        body = self.rfile.read(size)
        headers = {name: self.headers[name] for name in FORWARDED_HEADERS if self.headers[name] is not None}
        self._send(forward(body, headers, self.server.settings))

    def _body_size(self) -> int | None:
        """The upload's Content-Length when it may be read; None when it was refused (and answered). A refused
        body is left unread: each connection carries one request (HTTP/1.0), so it is dropped with it."""
        length, limit = self.headers["Content-Length"], self.server.settings.max_request_size
        if length is None or not length.isdigit():
            self._send(refusal(411, "length_required", "send the photo with a Content-Length"))
            return None
        if int(length) > limit:
            self._send(refusal(413, "too_large", f"the file is {int(length):,} bytes, more than the server's "
                                                 f"max_request_size of {limit:,} (config.properties)"))
            return None
        return int(length)

    def _refused_origin(self) -> Answer | None:
        """403 for a request another site's page makes: on loopback the Host must be a loopback name (a DNS
        name rebound to 127.0.0.1 is not), and a browser's Origin must be this server (another site's page
        cannot spend the key)."""
        host = self.headers["Host"] or ""
        if self.server.loopback and urlsplit(f"//{host}").hostname not in LOOPBACK_NAMES:
            return refusal(403, "forbidden_host", f"this page answers on loopback names only, not {host!r}")
        origin = self.headers["Origin"]
        if origin is not None and origin != f"http://{host}":
            return refusal(403, "forbidden_origin", f"uploads come from this server's own page, not {origin!r}")
        return None

    def _send(self, answer: Answer) -> None:
        self.send_response(answer.status)
        self.send_header("Content-Type", answer.content_type)
        self.send_header("Content-Length", str(len(answer.body)))
        self.send_header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(answer.body)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m client.page", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8090, help="port of the page (0: any free one)")
    parser.add_argument("--listen", default="127.0.0.1",
                        help="address of the page; whoever reaches it tags with your key, so keep it on loopback")
    parser.add_argument("--config", type=Path, default=SERVER_CONFIG,
                        help="TorchServe config: inference_address, the model, max_request_size")
    parser.add_argument("--key-file", type=Path, default=SERVED_KEY_FILE,
                        help=f"TorchServe's key file (default: make serve's, {SERVED_KEY_FILE})")
    parser.add_argument("--timeout", type=float, default=120, help="seconds to wait for TorchServe's answer")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        settings = read_page_settings(args.config, key_file=args.key_file, timeout_s=args.timeout)
        server = PageServer((args.listen, args.port), settings=settings)
    except ServerConfigError as exc:
        print(f"page: {exc}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:  # the port is taken, or --listen is not an address
        print(f"page: cannot listen on {args.listen}:{args.port}: {error_line(exc)}", file=sys.stderr)
        return 1
    host, port = server.server_address[:2]
    print(f"The page: http://{host}:{port}/ (photos go to {settings.predictions_url}; Ctrl-C stops it)",
          flush=True)
    with server:
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
