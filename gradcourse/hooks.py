"""Forward hooks that remove themselves: the one way gradcourse reads what a module outputs.

    with forward_hooks({"conv1": model.conv1, "fc": model.fc}, lambda name, output: ...):
        model(x)          # the function sees each module's output, keyed by its name
    # here the hooks are gone, whatever happened inside the block
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Mapping

from torch import nn


@contextmanager
def forward_hooks(modules: Mapping[object, nn.Module], read: Callable[[object, object], None]) -> Iterator[None]:
    """Call ``read(key, output)`` after each forward pass of every module in ``modules``
    (``{key: module}``; the key is a name, an index, anything) while the block runs, and
    remove the hooks when it ends, also when it raises."""
    handles = [module.register_forward_hook(lambda _module, _inputs, output, key=key: read(key, output))
               for key, module in modules.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
