"""What each TorchServe row becomes on its way through ``TaggerHandler``: ``Prepared`` (read and decoded), then
``Tagged`` (the model's detections), or at any step a ``Refusal`` (the HTTP error that answers it).

The handler's own records: the tagging core knows nothing of TorchServe or requests, and the entry file
(``tagger_handler.py``) may define only its one class.
"""

from __future__ import annotations

from dataclasses import dataclass

from .decode import ImageError, ModelImage
from .options import TagOptions
from .tagging import Detection
from .uploads import AnswerEnvelope, RequestError


@dataclass(frozen=True)
class Refusal:
    """A request answered with an error instead of tags: its HTTP status, short code and message."""

    status: int
    error: str
    message: str

    @classmethod
    def of(cls, error: RequestError | ImageError) -> Refusal:
        return cls(status=error.status, error=error.error, message=str(error))

    def body(self) -> dict[str, str]:
        """The JSON body: ``{"error": <code>, "message": <what to do>}``."""
        return {"error": self.error, "message": self.message}


@dataclass(frozen=True)
class Prepared:
    """A request ready for the model.

    Args:
        options: how it wants its answer.
        envelope: the envelope its answer goes in (KServe v1/v2); None: the answer as it is.
        image: its decoded image.
    """

    options: TagOptions
    envelope: AnswerEnvelope | None
    image: ModelImage


@dataclass(frozen=True)
class Tagged:
    """A request after the model: its options and envelope, the uploaded image's size and every detection,
    best first."""

    options: TagOptions
    envelope: AnswerEnvelope | None
    width: int
    height: int
    detections: list[Detection]
