"""Tags images with the TorchServe tagger, several at a time.

``python -m client.tag IMAGE... [--format list] [--threshold T] [--draw OUT_DIR] [--url URL] [--key-file F]
[--retries N]``

Each image is uploaded as a multipart file (the seed's ``POST /tag`` style) with the inference key from
TorchServe's ``key_file.json``. Prints the tags of each image (and, in the dict format, every detection);
``--draw`` writes each image with its boxes and labels into a new file (as ``<stem>.tagged<suffix>`` where a
file of its own name is there already: no file is written over). A request that failed for no fault of its
image (a worker died, none was free, the server was restarting) is sent again, up to ``--retries`` times.
Exits with 1 when any image failed.
"""

from __future__ import annotations

import argparse
import json
import mimetypes
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import requests

from client.config import ServerConfigError, read_server_config
from client.keys import SERVED_KEY_FILE, KeyFileError, bearer, read_keys
from common.draw import DrawingFolder, writable_path
from handler.text import shorten
from project import SERVER_CONFIG


# TorchServe's own answers (its front end's {"code", "type", "message"}) for a request that its worker could not
# serve, whatever the image: the worker died with the request's batch ("Worker died.": 500, or 507 when it was
# killed for memory), ran out of memory ("Out of resources", 507) or raised out of the handler ("Prediction
# failed", 503), or no worker could take it (ServiceUnavailableException, 503). The handler's own refusals
# carry an "error" key instead, its 500 inference_failed included: sent again, they would fail again.
RETRYABLE_STATUSES = frozenset({500, 503, 507})
RETRYABLE_TYPES = frozenset({"InternalServerException", "ServiceUnavailableException"})
# The front door's (deploy/front-door): its upstream connections were all taken, or TorchServe did not answer.
FRONT_DOOR_BUSY = (503, "busy")


@dataclass(frozen=True)
class TagResult:
    """The answer for one image: ``response`` (parsed JSON) when it was tagged, else ``error`` (one line)."""

    image: Path
    response: Any = None
    error: str | None = None


@dataclass(frozen=True)
class RetryPolicy:
    """How often a request that may be retried (``is_retryable``, or a server that cannot be reached) is sent
    again. The waits double from ``first_delay`` up to ``max_delay``: with the defaults 11.5 s in all, longer
    than a restart of TorchServe takes (``make serve``: ready after about 8 s on 2 CPU cores).

    Args:
        retries: tries after the first; 0 sends each request once.
        first_delay: seconds before the first retry.
        max_delay: the longest wait between two tries.
        jitter: each wait is lengthened by a random fraction up to this, so that the requests of a batch that
            failed together do not all come back at once.
    """

    retries: int = 5
    first_delay: float = 0.5
    max_delay: float = 4.0
    jitter: float = 0.1

    def delays(self) -> list[float]:
        """The seconds to wait before each retry, in order."""
        return [min(self.max_delay, self.first_delay * 2**retry) * (1 + random.uniform(0, self.jitter))
                for retry in range(self.retries)]


@dataclass(frozen=True)
class _Try:
    """One try of ``tag_image``: its result, whether it may be sent again as it is, and whether the server
    refused the key (an old one: TorchServe writes new keys at each start, or a wrong one)."""

    result: TagResult
    retryable: bool
    key_refused: bool = False


def tag_image(
    image: Path,
    *,
    url: str,
    key: str,
    key_file: Path | None = None,
    response_format: str | None = None,
    threshold: float | None = None,
    timeout: float = 120,
    retry: RetryPolicy = RetryPolicy(),
) -> TagResult:
    """Uploads one image and returns the server's answer; never raises for a failed request.

    Args:
        image: the image file.
        url: the prediction endpoint, e.g. ``http://127.0.0.1:8080/predictions/tagger``.
        key: TorchServe's inference key.
        key_file: where ``key`` was read: read again when the server refuses the key, and the request sent
            again with a new one (a restarted TorchServe wrote new keys); None sends ``key`` only.
        response_format: "dict" or "list"; None leaves the server's default.
        threshold: the score threshold for this request; None leaves the server's.
        timeout: seconds to wait for the answer.
        retry: when to send it again; the error of a request that was tried in vain says how often.
    """
    fields = {}
    if response_format is not None:
        fields["format"] = response_format
    if threshold is not None:
        fields["threshold"] = str(threshold)
    content_type = mimetypes.guess_type(image.name)[0] or "application/octet-stream"
    try:
        file = image.open("rb")
    except OSError as exc:
        return TagResult(image, error=f"cannot read {image}: {exc.strerror or exc}")
    with file:
        for wait in [*retry.delays(), None]:
            file.seek(0)  # each try uploads the whole file
            attempt = _post(image, file, url=url, key=key, fields=fields, content_type=content_type, timeout=timeout)
            if attempt.key_refused and (renewed := _key_in(key_file)) not in (None, key):
                key = renewed  # sent again at once, with the key the server now holds
                continue
            if not attempt.retryable:
                return attempt.result
            if wait is not None:
                time.sleep(wait)
    tries = retry.retries + 1
    return (attempt.result if tries == 1
            else TagResult(image, error=f"gave up after {tries} tries: {attempt.result.error}"))


def _key_in(key_file: Path | None) -> str | None:
    """The inference key in ``key_file`` now; None without a file or a readable key."""
    try:
        return read_keys(key_file).inference if key_file is not None else None
    except KeyFileError:
        return None


def _post(
    image: Path, file: IO[bytes], *, url: str, key: str, fields: dict[str, str], content_type: str, timeout: float,
) -> _Try:
    """One try of ``tag_image``."""
    try:
        answer = requests.post(
            url,
            files={"data": (image.name, file, content_type)},
            data=fields,
            headers=bearer(key),
            timeout=timeout,
        )
    except requests.ConnectionError:  # refused or reset: a server that is down or restarting
        return _Try(TagResult(image, error=f"cannot reach {url}: is TorchServe running? (make serve)"), True)
    except requests.RequestException as exc:  # a timeout among them: the image may be what takes so long
        return _Try(TagResult(image, error=f"request to {url} failed: {exc}"), False)
    if answer.status_code == 200:
        try:
            return _Try(TagResult(image, response=answer.json()), False)
        except ValueError:
            return _Try(TagResult(image, error="the server answered 200 with a body that is not JSON: "
                                               f"{shorten(answer.text, 200)!r}"), False)
    content = _json_object(answer.text)
    return _Try(TagResult(image, error=describe_refusal(answer.status_code, answer.text)),
                is_retryable(answer.status_code, answer.text),
                key_refused=content is not None and content.get("type") == "InvalidKeyException")


def is_retryable(status: int, body: str) -> bool:
    """Whether a non-200 answer is TorchServe's own for a worker that died or was not available (see
    ``RETRYABLE_TYPES``) or the front door's "busy", not the handler's refusal of the image.

    Args:
        status: the HTTP status.
        body: the response body.
    """
    content = _json_object(body)
    if content is None:
        return False
    if "error" in content:
        return (status, content["error"]) == FRONT_DOOR_BUSY
    return status in RETRYABLE_STATUSES and content.get("type") in RETRYABLE_TYPES


def describe_refusal(status: int, body: str) -> str:
    """One line for a non-200 answer: the tagger's ``{"error", "message"}`` or TorchServe's own error.

    Args:
        status: the HTTP status.
        body: the response body.
    """
    content = _json_object(body)
    if content is not None and "error" in content:
        return f"HTTP {status} {content['error']}: {content.get('message', '')}"
    if content is not None and "type" in content:  # TorchServe's front end: {"code", "type", "message"}
        hint = ""
        if content["type"] == "InvalidKeyException":
            hint = " (the inference key is wrong or expired: `make serve` renews it, then retry)"
        return f"HTTP {status} {content['type']}: {content.get('message', '')}{hint}"
    if status == 413:
        return "HTTP 413: the file is larger than the server's max_request_size (config.properties)"
    return f"HTTP {status}: {shorten(' '.join(body.split()), 200) or 'empty answer'}"


def _json_object(body: str) -> dict | None:
    """``body`` parsed, when it is a JSON object."""
    try:
        content = json.loads(body)
    except ValueError:
        return None
    return content if isinstance(content, dict) else None


def tag_images(
    images: list[Path],
    *,
    url: str,
    key: str,
    key_file: Path | None = None,
    response_format: str | None = None,
    threshold: float | None = None,
    concurrency: int = 8,
    retry: RetryPolicy = RetryPolicy(),
) -> list[TagResult]:
    """Tags ``images`` with up to ``concurrency`` requests in flight; results in the order of ``images``.

    Args:
        images: image files.
        url, key, key_file, response_format, threshold, retry: as for ``tag_image``.
        concurrency: requests sent at once (TorchServe batches those that arrive together).
    """
    with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(images)))) as pool:
        return list(pool.map(
            lambda image: tag_image(image, url=url, key=key, key_file=key_file, response_format=response_format,
                                    threshold=threshold, retry=retry),
            images,
        ))


def format_result(result: TagResult) -> str:
    """The lines printed for one image: its tags, then one line per detection (dict format)."""
    if result.error is not None:
        return f"{result.image}: error: {result.error}"
    response = result.response
    if isinstance(response, list):
        return f"{result.image}: {json.dumps(response)}"
    lines = [f"{result.image}: {', '.join(response['tags']) or '(no tags)'}"]
    for detection in response["detections"]:
        box = ", ".join(f"{value:.0f}" for value in detection["box"])
        lines.append(f"  {detection['label']:<20} {detection['score']:.2f}  [{box}]")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m client.tag", description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    parser.add_argument("--format", choices=["dict", "list"], help="response format (default: the server's, dict)")
    parser.add_argument("--threshold", type=float, help="score threshold from 0 to 1 (default: the server's)")
    parser.add_argument("--draw", type=Path, metavar="OUT_DIR",
                        help="write each image with its boxes here, into new files (as <name>.tagged.<ext> where "
                             "<name> is taken: no file is written over)")
    parser.add_argument("--url", help=f"prediction endpoint (default: the one {SERVER_CONFIG} serves)")
    parser.add_argument("--key-file", type=Path, default=SERVED_KEY_FILE,
                        help=f"TorchServe's key file, in the folder it was started in (default: make serve's, "
                             f"{SERVED_KEY_FILE})")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight at once (default 8)")
    parser.add_argument("--retries", type=int, default=RetryPolicy.retries, metavar="N",
                        help="times a request is sent again when a worker died or none was free, or the server "
                             f"could not be reached, waiting longer each time (default {RetryPolicy.retries})")
    args = parser.parse_args(argv)
    if args.draw is not None and args.format == "list":
        parser.error("--draw needs the boxes of the dict format: leave out --format list")
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        parser.error(f"--threshold must be from 0 to 1, got {args.threshold}")
    if args.retries < 0:
        parser.error(f"--retries must be 0 or more, got {args.retries}")
    try:
        url = args.url or read_server_config().predictions_url
        key = read_keys(args.key_file).inference
    except (ServerConfigError, KeyFileError) as exc:
        print(f"tag: {exc}", file=sys.stderr)
        return 1

    results = tag_images(args.images, url=url, key=key, key_file=args.key_file, response_format=args.format,
                         threshold=args.threshold, concurrency=args.concurrency,
                         retry=RetryPolicy(retries=args.retries))
    drawings = DrawingFolder(args.draw) if args.draw is not None else None
    for result in results:
        print(format_result(result), file=sys.stdout if result.error is None else sys.stderr)
        if drawings is not None and result.error is None:
            drawn = drawings.draw(result.image, result.response["detections"])
            wanted = writable_path(args.draw / result.image.name)
            print(f"  drawn: {drawn}" + ("" if drawn == wanted else f" ({wanted} is taken: no file is written over)"))
    return 0 if all(result.error is None for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
