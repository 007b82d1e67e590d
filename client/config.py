"""Where the tagger is served: the addresses and the archive named in TorchServe's ``config.properties``.

That file is the one home of the endpoint (``inference_address``, the model name of ``load_models``) and of
the archive path (``model_store``/``load_models``); the client, ``make serve``, ``make archive`` and the
benchmark read them from here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ts.model_server import load_properties

SERVER_CONFIG = Path("config.properties")


class ServerConfigError(ValueError):
    """config.properties is missing or lacks a setting the tools need."""


@dataclass(frozen=True)
class ServerConfig:
    """The served model's addresses and archive (``archive`` relative to the folder TorchServe starts in)."""

    inference_url: str
    management_url: str
    archive: Path
    model_name: str

    @property
    def predictions_url(self) -> str:
        """The inference endpoint, e.g. ``http://127.0.0.1:8080/predictions/tagger``."""
        return f"{self.inference_url}/predictions/{self.model_name}"


def read_server_config(path: str | os.PathLike = SERVER_CONFIG) -> ServerConfig:
    """The addresses and the served archive from a TorchServe ``config.properties``.

    Args:
        path: the properties file; ``model_store`` is taken relative to the folder TorchServe starts in.

    Raises:
        ServerConfigError: the file is missing, or lacks an address, ``model_store`` or ``load_models``.
    """
    path = Path(path)
    if not path.is_file():
        raise ServerConfigError(f"{path} not found (run from the repository root, or name the file)")
    properties = load_properties(str(path))
    try:
        archive_name = properties["load_models"].split(",")[0].strip()
        model_store = Path(properties["model_store"])
        inference_url, management_url = properties["inference_address"], properties["management_address"]
    except KeyError as exc:
        raise ServerConfigError(f"{path} has no {exc.args[0]} setting") from None
    # load_models entries are "file.mar" or "name=file.mar".
    model_name, _, archive_file = archive_name.rpartition("=")
    return ServerConfig(
        inference_url=inference_url,
        management_url=management_url,
        archive=model_store / archive_file,
        model_name=model_name or Path(archive_file).stem,
    )
