"""Import torchvision, also where a CPU-only torch meets the PyPI (CUDA) torchvision.

That pairing fails at import with ``operator torchvision::nms does not exist``: the
compiled extension cannot load, so the operator schemas its Python code registers
fake kernels for are missing. Declaring the two schemas first lets the pure-Python parts
(datasets, transforms, models without weights) import. The fix is applied only when
the plain import fails, and logged once on the ``gradcourse`` logger at INFO level (a
known property of the environment, not something a reader of a chapter can act on:
``logging.basicConfig(level=logging.INFO)`` shows it); ``torchvision.ops.nms`` and the
image codecs stay unavailable in that case (the course uses neither).
"""
from __future__ import annotations

import importlib
import logging
import sys

_library = None  # keeps the schema registration alive for the life of the process


def import_torchvision():
    """Return the ``torchvision`` module, patching the operator schemas only if needed."""
    global _library
    if "torchvision" in sys.modules and hasattr(sys.modules["torchvision"], "datasets"):
        return sys.modules["torchvision"]
    try:
        return importlib.import_module("torchvision")
    except RuntimeError as error:
        if "torchvision::nms" not in str(error):
            raise
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    import torch

    _library = torch.library.Library("torchvision", "DEF")
    for op in ("nms", "qnms"):
        _library.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    logging.getLogger("gradcourse").info(
        "torchvision's compiled extension does not match this torch build (a CPU torch with a CUDA "
        "torchvision); gradcourse declared the missing operator schemas so datasets and transforms work. "
        "torchvision.ops.nms and torchvision.io image codecs are unavailable in this environment.")
    return importlib.import_module("torchvision")
