"""Forward hooks that remove themselves."""
import pytest
import torch
from torch import nn

from gradcourse.hooks import forward_hooks


def test_forward_hooks_read_each_output_by_key_and_are_gone_after_the_block():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    seen = {}
    with forward_hooks({"first": model[0], "last": model[2]}, lambda key, out: seen.__setitem__(key, out.shape)):
        model(torch.zeros(5, 3))
    assert seen == {"first": (5, 4), "last": (5, 2)}
    seen.clear()
    model(torch.zeros(5, 3))
    assert seen == {} and not model[0]._forward_hooks and not model[2]._forward_hooks


def test_forward_hooks_are_removed_when_the_block_raises():
    layer = nn.Linear(2, 2)
    with pytest.raises(RuntimeError, match="inside"):
        with forward_hooks({0: layer}, lambda key, out: None):
            raise RuntimeError("inside")
    assert not layer._forward_hooks
