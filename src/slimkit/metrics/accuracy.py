"""Top-1 accuracy of a PyTorch model or an ONNX Runtime session over a loader."""

from __future__ import annotations

import numpy as np

from slimkit.training import evaluate_accuracy

__all__ = ["evaluate_accuracy", "ort_accuracy"]


def ort_accuracy(session, loader) -> float:
    """Top-1 accuracy of an ORT InferenceSession (first input, first output) over a loader."""
    name = session.get_inputs()[0].name
    correct = total = 0
    for x, y in loader:
        logits = session.run(None, {name: x.numpy().astype(np.float32)})[0]
        correct += int((logits.argmax(1) == y.numpy()).sum())
        total += len(y)
    if total == 0:  # as evaluate_accuracy: 0.0 would read as a measured accuracy
        from slimkit.errors import ConfigError

        raise ConfigError("cannot evaluate accuracy on an empty loader (0 samples)")
    return correct / total
