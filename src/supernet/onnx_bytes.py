"""ONNX serialisation shared by export and latency measurement (legacy TorchScript exporter, opset 17)."""

from __future__ import annotations

import io
import warnings

import torch
from torch import Tensor, nn

ONNX_OPSET = 17


def onnx_bytes(module: nn.Module, example: Tensor, *, input_name: str = "images", output_name: str = "logits",
               dynamic_batch: bool = True) -> bytes:
    """`module` in eval mode as ONNX bytes; the legacy exporter needs no onnxscript (the dynamo one does)."""
    was_training = module.training
    module.eval()
    buffer = io.BytesIO()
    axes = {input_name: {0: "batch"}, output_name: {0: "batch"}} if dynamic_batch else None
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
            with torch.no_grad():
                torch.onnx.export(module, (example,), buffer, dynamo=False, opset_version=ONNX_OPSET,
                                  input_names=[input_name], output_names=[output_name], dynamic_axes=axes)
    finally:
        module.train(was_training)
    return buffer.getvalue()
