"""``surgery._state.Snapshot``: the one mechanism that saves module state and puts it back."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from surgery._state import Snapshot, preserved


def small() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))


def test_preserved_restores_what_a_forward_pass_disturbs() -> None:
    model = small().eval()
    model(torch.randn(1, 3, 6, 6))
    conv: Any = model[0]
    bn: Any = model[1]
    grad = torch.ones_like(conv.weight)
    conv.weight.grad = grad
    conv.bias.requires_grad_(False)
    mean = bn.running_mean.clone()
    mean_object = bn.running_mean
    with preserved(model) as snap:
        assert isinstance(snap, Snapshot) and snap.structure is False
        model.train()
        model.register_forward_hook(lambda *_: None)
        conv.weight.grad = None
        conv.bias.requires_grad_(True)
        model(torch.randn(2, 3, 6, 6))  # train mode: BatchNorm statistics move in place
        assert not torch.equal(bn.running_mean, mean)
    assert [m.training for m in model.modules()] == [False] * 6
    assert len(model._forward_hooks) == 0
    assert conv.weight.grad is grad and conv.bias.requires_grad is False
    assert bn.running_mean is mean_object and torch.equal(bn.running_mean, mean)
    assert snap.written_in_place() == 0  # only structure snapshots count in-place writes
    weights = [p.detach().clone() for p in model.parameters()]
    with preserved(model):
        model.double()
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert {b.dtype for b in bn.buffers() if b.is_floating_point()} == {torch.float32}
    assert all(torch.equal(p, w) for p, w in zip(model.parameters(), weights, strict=True))


def test_preserved_restores_transform_sizes_but_not_other_attributes() -> None:
    model = small()
    holder: Any = nn.Module()
    holder.min_size, holder.max_size = (800,), 1333
    model.add_module("transform", holder)
    with preserved(model):
        holder.min_size, holder.max_size = (200,), 256
        holder.note = "set during the pass"
    assert (holder.min_size, holder.max_size) == ((800,), 1333)
    assert holder.note == "set during the pass"


def test_structure_snapshot_puts_back_modules_attributes_and_flags() -> None:
    model = small()
    model(torch.randn(1, 3, 6, 6))  # materialise the lazy layer
    conv: Any = model[0]
    old_modules = list(model._modules.values())
    params = dict(model.named_parameters())
    grad = torch.zeros_like(conv.weight)
    conv.weight.grad = grad
    snap = Snapshot(model, structure=True)
    model[0] = nn.Conv2d(3, 4, 1)
    del model[2]
    model.extra = nn.Linear(1, 1)
    model.flag = True
    params["1.weight"].requires_grad_(False)
    conv.weight.grad = None
    snap.restore()
    assert list(model._modules.values()) == old_modules
    assert dict(model.named_parameters()) == params
    assert "flag" not in model.__dict__ and not hasattr(model, "extra")
    assert params["1.weight"].requires_grad is True and conv.weight.grad is grad
    assert snap.written_in_place() == 0


def test_structure_snapshot_counts_in_place_writes() -> None:
    model = small()
    model(torch.randn(1, 3, 6, 6))
    snap = Snapshot(model, structure=True)
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[1].running_var.mul_(2.0)
    snap.restore()
    assert snap.written_in_place() == 2


def test_structure_snapshot_with_extra_modules_restores_removed_ones() -> None:
    model = small()
    model(torch.randn(1, 3, 6, 6))
    first = Snapshot(model, structure=True)
    removed: Any = model[0]
    model[0] = nn.Conv2d(3, 4, 1)
    removed.stride = (2, 2)
    later = Snapshot(model, structure=True, extra=first.modules)
    assert removed in later.modules and len(later.modules) == len(first.modules) + 1
    first.restore()
    assert model[0] is removed and removed.stride == (1, 1)
    later.restore()
    assert model[0] is not removed and removed.stride == (2, 2)
