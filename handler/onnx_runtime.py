"""The model run by ONNX Runtime's CPU kernels instead of PyTorch's: exported once when the worker starts, the
same float32 arithmetic (boxes within 1e-4 px of PyTorch's), called like the model.

Why: on CPUs without native bfloat16 (AVX2 machines) it was the fastest exact choice, 0.68x of PyTorch's time per
image at 2 threads and 0.79x at 1 on a 2-core AMD EPYC, and it slows down gracefully when another process takes
a core, where PyTorch's OpenMP threads wait for a descheduled sibling (README: "CPU runtime").

Threads follow the load as PyTorch's do: an ONNX Runtime session fixes its thread count when it is created, so
there is one session per thread count, made on first use, all sharing one copy of the weights; each call takes
the session of ``torch.get_num_threads()``, which the handler sets per batch (handler/core_sharing.py). Its
threads sleep between calls rather than spin, as they share the cores with the other workers.
"""

from __future__ import annotations

import io
import threading
import warnings
from typing import Any

import torch
from torchvision.models.detection import FasterRCNN

OUTPUTS = ("boxes", "labels", "scores")
OPSET = 17
# The image the export traces: any size works (height and width stay symbolic in the exported graph).
SAMPLE_SIZE = (320, 320)


def export_onnx(model: FasterRCNN) -> bytes:
    """The eval-mode model as an ONNX graph of one image ``[3, H, W]`` (float in [0, 1], any size) to its
    ``boxes``, ``labels`` and ``scores``, resizing and normalising included (torchvision's own ONNX path).

    Raises:
        RuntimeError: the export failed (the message says why); PyTorch's tracer warnings are not shown.
    """
    sample = torch.rand(3, *SAMPLE_SIZE, generator=torch.Generator().manual_seed(0))
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model.eval(), ([sample],), buffer, opset_version=OPSET, dynamo=False,
                              input_names=["images"], output_names=list(OUTPUTS),
                              dynamic_axes={"images": {1: "height", 2: "width"},
                                            **{name: {0: "detections"} for name in OUTPUTS}})
        except Exception as exc:
            raise RuntimeError(f"the model could not be exported to ONNX: {type(exc).__name__}: {exc}") from exc
    return buffer.getvalue()


class OnnxDetector:
    """A ``FasterRCNN`` in eval mode run by ONNX Runtime on the CPU, called as the model is: a list of images
    ``[3, H, W]`` (float in [0, 1]) in, one ``{"boxes", "labels", "scores"}`` dict per image out.

    Args:
        model: the model to export; its ``transform`` (the resize rule) stays readable here.
    """

    def __init__(self, model: FasterRCNN) -> None:
        import onnx
        import onnxruntime
        from onnx import numpy_helper

        self._ort = onnxruntime
        self.transform = model.transform
        self._graph = export_onnx(model)
        # One copy of the weights for every session (SessionOptions.add_initializer uses these arrays in place of
        # the graph's own): kept alive here as long as the sessions.
        self._weights = [(tensor.name, numpy_helper.to_array(tensor))
                         for tensor in onnx.load_from_string(self._graph).graph.initializer]
        self._shared = [(name, onnxruntime.OrtValue.ortvalue_from_numpy(array)) for name, array in self._weights]
        self._sessions: dict[int, Any] = {}
        self._lock = threading.Lock()

    def session(self, threads: int) -> Any:
        """The session of ``threads`` intra-op threads, created on first use."""
        with self._lock:
            if threads not in self._sessions:
                options = self._ort.SessionOptions()
                options.intra_op_num_threads = threads
                options.inter_op_num_threads = 1
                options.log_severity_level = 3  # errors only: its graph-optimisation notes are not the user's
                options.add_session_config_entry("session.intra_op.allow_spinning", "0")
                for name, value in self._shared:
                    options.add_initializer(name, value)
                self._sessions[threads] = self._ort.InferenceSession(
                    self._graph, options, providers=["CPUExecutionProvider"])
            return self._sessions[threads]

    def eval(self) -> OnnxDetector:
        """Itself: always in eval mode (as the model's ``eval``, so code that evaluates a model takes this too)."""
        return self

    def __call__(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        session = self.session(torch.get_num_threads())
        outputs = []
        for image in images:
            arrays = session.run(list(OUTPUTS), {"images": image.detach().contiguous().numpy()})
            outputs.append({name: torch.from_numpy(array) for name, array in zip(OUTPUTS, arrays)})
        return outputs
