"""Tags images with the TorchServe tagger, several at a time.

``python -m client.tag IMAGE... [--format list] [--threshold T] [--draw OUT_DIR] [--url URL] [--key-file F]``

Each image is uploaded as a multipart file (the seed's ``POST /tag`` style) with the inference key from
TorchServe's ``key_file.json``. Prints the tags of each image (and, in the dict format, every detection);
``--draw`` writes each image with its boxes and labels (as ``<stem>.tagged<suffix>`` where its own name
would be an input: no input is written over). Exits with 1 when any image failed.
"""

from __future__ import annotations

import argparse
import json
import mimetypes
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from client.config import ServerConfigError, read_server_config
from client.draw import draw_detections, writable_path
from client.keys import SERVED_KEY_FILE, KeyFileError, bearer, read_keys
from handler.text import shorten
from project import SERVER_CONFIG


@dataclass(frozen=True)
class TagResult:
    """The answer for one image: ``response`` (parsed JSON) when it was tagged, else ``error`` (one line)."""

    image: Path
    response: Any = None
    error: str | None = None


def tag_image(
    image: Path,
    *,
    url: str,
    key: str,
    response_format: str | None = None,
    threshold: float | None = None,
    timeout: float = 120,
) -> TagResult:
    """Uploads one image and returns the server's answer; never raises for a failed request.

    Args:
        image: the image file.
        url: the prediction endpoint, e.g. ``http://127.0.0.1:8080/predictions/tagger``.
        key: TorchServe's inference key.
        response_format: "dict" or "list"; None leaves the server's default.
        threshold: the score threshold for this request; None leaves the server's.
        timeout: seconds to wait for the answer.
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
        try:
            answer = requests.post(
                url,
                files={"data": (image.name, file, content_type)},
                data=fields,
                headers=bearer(key),
                timeout=timeout,
            )
        except requests.ConnectionError:
            return TagResult(image, error=f"cannot reach {url}: is TorchServe running? (make serve)")
        except requests.RequestException as exc:
            return TagResult(image, error=f"request to {url} failed: {exc}")
    if answer.status_code == 200:
        try:
            return TagResult(image, response=answer.json())
        except ValueError:
            return TagResult(image, error="the server answered 200 with a body that is not JSON: "
                                          f"{shorten(answer.text, 200)!r}")
    return TagResult(image, error=describe_refusal(answer.status_code, answer.text))


def describe_refusal(status: int, body: str) -> str:
    """One line for a non-200 answer: the tagger's ``{"error", "message"}`` or TorchServe's own error.

    Args:
        status: the HTTP status.
        body: the response body.
    """
    try:
        content = json.loads(body)
    except ValueError:
        content = None
    if isinstance(content, dict) and "error" in content:
        return f"HTTP {status} {content['error']}: {content.get('message', '')}"
    if isinstance(content, dict) and "type" in content:  # TorchServe's front end: {"code", "type", "message"}
        hint = ""
        if content["type"] == "InvalidKeyException":
            hint = " (the inference key is wrong or expired: `make serve` renews it, then retry)"
        return f"HTTP {status} {content['type']}: {content.get('message', '')}{hint}"
    if status == 413:
        return "HTTP 413: the file is larger than the server's max_request_size (config.properties)"
    return f"HTTP {status}: {shorten(' '.join(body.split()), 200) or 'empty answer'}"


def tag_images(
    images: list[Path],
    *,
    url: str,
    key: str,
    response_format: str | None = None,
    threshold: float | None = None,
    concurrency: int = 8,
) -> list[TagResult]:
    """Tags ``images`` with up to ``concurrency`` requests in flight; results in the order of ``images``.

    Args:
        images: image files.
        url, key, response_format, threshold: as for ``tag_image``.
        concurrency: requests sent at once (TorchServe batches those that arrive together).
    """
    with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(images)))) as pool:
        return list(pool.map(
            lambda image: tag_image(image, url=url, key=key, response_format=response_format, threshold=threshold),
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


@dataclass(frozen=True)
class Drawing:
    """Where the drawn copy of ``image`` goes; ``beside`` is True when ``output`` was renamed because the
    image's own name in the drawing folder is an input (which is never written over)."""

    image: Path
    output: Path
    beside: bool


def plan_drawings(images: list[Path], out_dir: Path) -> list[Drawing]:
    """One output per image in ``out_dir``: the image's own name, unless that file is one of ``images`` (then
    ``<stem>.tagged<suffix>``, beside it), numbered when two outputs would share a name.

    Args:
        images: the input images, in order.
        out_dir: the ``--draw`` folder.
    """
    inputs = {image.resolve() for image in images}
    taken = set(inputs)
    drawings: list[Drawing] = []
    for image in images:
        own = writable_path(out_dir / image.name)
        beside = own.resolve() in inputs
        stem = f"{own.stem}.tagged" if beside else own.stem
        output, count = out_dir / f"{stem}{own.suffix}", 1
        while output.resolve() in taken:
            count += 1
            output = out_dir / f"{stem}-{count}{own.suffix}"
        taken.add(output.resolve())
        drawings.append(Drawing(image=image, output=output, beside=beside))
    return drawings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m client.tag", description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    parser.add_argument("--format", choices=["dict", "list"], help="response format (default: the server's, dict)")
    parser.add_argument("--threshold", type=float, help="score threshold from 0 to 1 (default: the server's)")
    parser.add_argument("--draw", type=Path, metavar="OUT_DIR",
                        help="write each image with its boxes here (as <name>.tagged.<ext> where <name> is an input)")
    parser.add_argument("--url", help=f"prediction endpoint (default: the one {SERVER_CONFIG} serves)")
    parser.add_argument("--key-file", type=Path, default=SERVED_KEY_FILE,
                        help=f"TorchServe's key file, in the folder it was started in (default: make serve's, "
                             f"{SERVED_KEY_FILE})")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight at once (default 8)")
    args = parser.parse_args(argv)
    if args.draw is not None and args.format == "list":
        parser.error("--draw needs the boxes of the dict format: leave out --format list")
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        parser.error(f"--threshold must be from 0 to 1, got {args.threshold}")
    try:
        url = args.url or read_server_config().predictions_url
        key = read_keys(args.key_file).inference
    except (ServerConfigError, KeyFileError) as exc:
        print(f"tag: {exc}", file=sys.stderr)
        return 1

    results = tag_images(args.images, url=url, key=key, response_format=args.format,
                         threshold=args.threshold, concurrency=args.concurrency)
    drawings = plan_drawings(args.images, args.draw) if args.draw is not None else [None] * len(results)
    for result, drawing in zip(results, drawings):
        print(format_result(result), file=sys.stdout if result.error is None else sys.stderr)
        if drawing is not None and result.error is None:
            drawn = draw_detections(result.image, result.response["detections"], drawing.output)
            note = f" (beside {args.draw / drawing.image.name}, an input, which is never written over)"
            print(f"  drawn: {drawn}{note if drawing.beside else ''}")
    return 0 if all(result.error is None for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
