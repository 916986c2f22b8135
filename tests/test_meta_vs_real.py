"""A differential sweep: what the meta probe and ``check`` say, against what a real CPU forward does.

``check`` saying "ok" for a model whose first real forward fails, or an error for a model that
runs, is the worst defect the package can have. Two sweeps look for it:

* healthy builders: the whole-model meta probe and a real forward on inputs of the same
  shapes must both complete with outputs of identical shapes; a probe that stops on meta
  (detection post-processing) must have seen, in every slot it covered, the shapes the real
  forward produces there;
* broken models: seeded random mutations (a layer rebuilt with a wrong input width, a conv
  with another stride, padding or kernel) of a few models: ``check`` reports an error exactly
  when the real forward raises, and that error names the mutated layer, its neighbours, or
  where the real forward raised.

The default run covers a light model of each family and a few mutations of each mutated
model; the ``slow`` marker adds every torchvision builder and many more mutations.
"""

from __future__ import annotations

import copy
import gc
import random
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
import torchvision
from torch import Tensor, nn

import surgery
from surgery._util import ModuleStack, first_line
from surgery.anatomy import Anatomy, anatomy_for
from surgery.probe import probe_model
from tests.helpers import build

#: The image side both sides are fed (each family raises it to the least its models accept).
SIZE = 64

#: One light model of each family, swept by default.
HEALTHY_FAST = [
    "resnet18",
    "mobilenet_v3_small",
    "vit_b_16",
    "r3d_18",
    "lraspp_mobilenet_v3_large",
    "raft_small",
    "fasterrcnn_mobilenet_v3_large_320_fpn",
    "ssdlite320_mobilenet_v3_large",
]
ALL_BUILDERS = sorted(torchvision.models.list_models())

#: The models the mutation sweep breaks, and how many seeded mutations each gets.
MUTATED = [
    "resnet18",
    "mobilenet_v3_small",
    "efficientnet_b0",
    "convnext_tiny",
    "vit_b_16",
    "fcn_resnet50",
    "r3d_18",
    "raft_small",
    "maskrcnn_resnet50_fpn",
    "retinanet_resnet50_fpn",
    "ssdlite320_mobilenet_v3_large",
]
FAST_MUTATIONS = 10
SLOW_MUTATIONS = 100

@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread for this module: its inputs are tiny, and on shared cores a second
    thread spends its time waiting (the sweep runs several times slower with two)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _build(name: str) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # GoogLeNet/Inception's init_weights notice
        return build(name, quantize=False) if name.startswith("quantized_") else build(name)


def _prepared(model: nn.Module, *, private: bool = False) -> tuple[nn.Module, Anatomy]:
    """``model`` in eval mode, with any resize inside it shrunk to :data:`SIZE` images: a copy,
    unless the caller says ``model`` is its own."""
    model = (model if private else copy.deepcopy(model)).eval()
    anatomy = anatomy_for(model)
    anatomy.fit_inputs(model, [(SIZE, SIZE)])
    return model, anatomy


def _real(value: Any, generator: torch.Generator) -> Any:
    """``value`` with every meta tensor replaced by a CPU tensor of the same shape and dtype."""
    if isinstance(value, Tensor):
        if value.dtype.is_floating_point:
            return torch.rand(value.shape, generator=generator, dtype=value.dtype)
        return torch.zeros(value.shape, dtype=value.dtype)
    if isinstance(value, list):
        return [_real(v, generator) for v in value]
    if isinstance(value, tuple):
        return tuple(_real(v, generator) for v in value)
    return value


def shapes(value: Any, depth: int = 0) -> Any:
    """The structure of ``value`` with each tensor as ``(shape, dtype)``: the same on meta and on
    CPU for the same computation. Integers, strings and None stay as they are; other numbers and
    objects become their type's name (an object's attributes are followed, e.g. an image list)."""
    if isinstance(value, Tensor):
        return tuple(value.shape), value.dtype
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    if depth > 8:
        return type(value).__name__
    if isinstance(value, dict):
        return {k: shapes(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value).__name__, [shapes(v, depth + 1) for v in value]
    attrs = getattr(value, "__dict__", None)
    if isinstance(attrs, dict) and attrs:
        return type(value).__name__, {k: shapes(v, depth + 1) for k, v in attrs.items()}
    return type(value).__name__


@contextmanager
def slot_outputs(model: nn.Module, slots: list[str]) -> Iterator[dict[str, list[Any]]]:
    """``{slot: [shapes of each output, in call order]}`` for the forwards run inside the block."""
    seen: dict[str, list[Any]] = {}
    handles = []
    for path in dict.fromkeys(slots):
        def hook(module: nn.Module, args: Any, output: Any, path: str = path) -> None:
            seen.setdefault(path, []).append(shapes(output))

        handles.append(model.get_submodule(path).register_forward_hook(hook))
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


# --------------------------------------------------------------------------- healthy models


def compare_healthy(model: nn.Module, *, private: bool = False) -> None:
    """Probe ``model`` on meta and run it on CPU with inputs of the same shapes; the shapes must
    agree. ``model`` is changed only when ``private`` (a model built for this call alone)."""
    model, anatomy = _prepared(model, private=private)
    slots = [s.path for s in anatomy.slots(model)]
    with slot_outputs(model, slots) as on_meta:
        probe = probe_model(model, anatomy, SIZE)
    detail = probe.finding.message if probe.finding is not None else probe.reason
    assert probe.status in ("ran", "stopped"), f"the probe {probe.status}: {detail}"
    inputs = _real(anatomy.probe_inputs(model, SIZE), torch.Generator().manual_seed(0))
    with slot_outputs(model, slots) as real, torch.no_grad():
        output = model(*inputs)  # exactly as the probe calls it
    # the probe's coverage is what the hooks saw complete on meta
    assert sorted(set(probe.completed)) == sorted(on_meta)
    assert on_meta, "the probe covered no slot"
    for path, io in probe.slot_io.items():
        if io is not None:
            assert [shapes(io[1])] == on_meta[path], path
    if probe.status == "ran":
        assert shapes(probe.output) == shapes(output)
        assert on_meta == real
    else:
        assert "cannot run on meta" in probe.reason
        for path, outputs in on_meta.items():
            assert outputs == real.get(path, [])[: len(outputs)], f"{path}: meta {outputs} != real {real.get(path)}"


@pytest.mark.parametrize("name", HEALTHY_FAST)
def test_a_healthy_model_has_the_same_shapes_on_meta_as_for_real(shared: Callable[..., nn.Module], name: str) -> None:
    compare_healthy(shared(name))


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL_BUILDERS)
def test_every_builder_has_the_same_shapes_on_meta_as_for_real(name: str) -> None:
    model = _build(name)
    try:
        compare_healthy(model, private=True)
    finally:
        del model
        gc.collect()


def test_the_healthy_sweeps_cover_every_family(shared: Callable[..., nn.Module]) -> None:
    families = sorted({anatomy_for(shared(n)).name for n in HEALTHY_FAST})
    assert families == ["R-CNN", "SSD", "classification", "optical flow", "segmentation", "video classification"]
    assert set(HEALTHY_FAST) | set(MUTATED) <= set(ALL_BUILDERS)
    assert len(ALL_BUILDERS) >= 121


# --------------------------------------------------------------------------- mutations

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_MUTABLE = (*_CONVS, nn.Linear, *_NORMS, nn.LayerNorm)


@dataclass
class Mutation:
    """One layer of a model replaced by ``module``."""

    path: str
    kind: str  # "width", "stride", "padding" or "kernel"
    module: nn.Module
    text: str


def _base(layer: nn.Module) -> type[nn.Module]:
    """The class to rebuild ``layer`` with: its own, unless it has a constructor of its own."""
    base = next(b for b in _MUTABLE if isinstance(layer, b))
    return type(layer) if type(layer).__init__ is base.__init__ else base


def _conv(layer: nn.Conv1d | nn.Conv2d | nn.Conv3d, **changes: Any) -> nn.Module:
    args: dict[str, Any] = {
        "in_channels": layer.in_channels,
        "out_channels": layer.out_channels,
        "kernel_size": layer.kernel_size,
        "stride": layer.stride,
        "padding": layer.padding,
        "dilation": layer.dilation,
        "groups": layer.groups,
        "bias": layer.bias is not None,
        "padding_mode": layer.padding_mode,
    }
    args.update(changes)
    return _base(layer)(**args)


def _with_width(layer: nn.Module, delta: int) -> tuple[nn.Module, str]:
    """``layer`` rebuilt to take ``delta`` more (or fewer) channels or features, and the change in words."""
    cls = _base(layer)
    if isinstance(layer, _CONVS):
        return _conv(layer, in_channels=layer.in_channels + delta), f"in_channels {layer.in_channels} -> {layer.in_channels + delta}"
    if isinstance(layer, nn.Linear):
        new = cls(layer.in_features + delta, layer.out_features, bias=layer.bias is not None)
        return new, f"in_features {layer.in_features} -> {layer.in_features + delta}"
    if isinstance(layer, _NORMS):
        new = cls(layer.num_features + delta, eps=layer.eps, momentum=layer.momentum, affine=layer.affine,
                  track_running_stats=layer.track_running_stats)
        return new, f"num_features {layer.num_features} -> {layer.num_features + delta}"
    assert isinstance(layer, nn.LayerNorm)
    shape = (*layer.normalized_shape[:-1], layer.normalized_shape[-1] + delta)
    new = cls(shape, eps=layer.eps, elementwise_affine=layer.elementwise_affine, bias=layer.bias is not None)
    return new, f"normalized_shape {tuple(layer.normalized_shape)} -> {shape}"


def _width_of(layer: nn.Module) -> int:
    if isinstance(layer, _CONVS):
        return int(layer.in_channels)
    if isinstance(layer, nn.Linear):
        return int(layer.in_features)
    if isinstance(layer, _NORMS):
        return int(layer.num_features)
    assert isinstance(layer, nn.LayerNorm)
    return int(layer.normalized_shape[-1])


def draw_mutation(model: nn.Module, rng: random.Random) -> Mutation:
    """A random mutation of ``model``: half the time a wrong input width, else a conv's
    stride, padding or kernel changed (every spatial axis alike)."""
    layers = [(p, m) for p, m in model.named_modules() if isinstance(m, _MUTABLE) and p]
    convs = [(p, m) for p, m in layers if isinstance(m, _CONVS)]
    if convs and rng.random() < 0.5:
        path, conv = rng.choice(convs)
        kinds = ["kernel"] + (["stride", "padding"] if not isinstance(conv.padding, str) else [])
        kind = rng.choice(kinds)
        old: tuple[int, ...]
        if kind == "stride":
            old = tuple(conv.stride)
            new = tuple(2 if s == 1 else 1 for s in old)
            module = _conv(conv, stride=new)
        elif kind == "padding":
            old = tuple(conv.padding)  # type: ignore[arg-type]
            step = rng.choice([-1, 1]) if min(old) >= 1 else 1
            new = tuple(p + step for p in old)
            module = _conv(conv, padding=new)
        else:
            old = tuple(conv.kernel_size)
            step = rng.choice([s for s in (-2, -1, 1, 2) if min(old) + s >= 1])
            new = tuple(k + step for k in old)
            module = _conv(conv, kernel_size=new)
        return Mutation(path, kind, module, f"{path} ({type(conv).__name__}): {kind} {old} -> {new}")
    path, layer = rng.choice(layers)
    groups = int(getattr(layer, "groups", 1))
    width = _width_of(layer)
    deltas = [d * groups for d in range(-8, 9) if d and width + d * groups >= groups]
    module, text = _with_width(layer, rng.choice(deltas))
    return Mutation(path, "width", module, f"{path} ({type(layer).__name__}): {text}")


@dataclass
class Outcome:
    """What the real forward and ``check`` said about one mutation."""

    seed: int
    mutation: str
    real_error: str | None  # None: the real forward ran
    real_where: str | None
    check_errors: list[str] = field(default_factory=list)
    verdict: str = "agree"


def _near(a: str, b: str) -> bool:
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


class Sweep:
    """One model, prepared for mutations: a private copy, its inputs, and the order its layers run in."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.anatomy = _prepared(model)
        if self.anatomy.takes_targets:
            self._fewer_boxes()
        self.inputs = _real(self.anatomy.probe_inputs(self.model, SIZE), torch.Generator().manual_seed(0))
        order: list[str] = []
        names = {id(m): p for p, m in self.model.named_modules() if isinstance(m, _MUTABLE)}
        handles = [m.register_forward_hook(lambda m, a, o: order.append(names[id(m)]))
                   for m in self.model.modules() if id(m) in names]
        try:
            error, _ = self.real()
        finally:
            for h in handles:
                h.remove()
        assert error is None, f"the unmutated model raised: {error}"
        self.order = list(dict.fromkeys(order))

    def _fewer_boxes(self) -> None:
        """Fewer proposals and detections: the second-stage heads still run, in a tenth of the time."""
        rpn = getattr(self.model, "rpn", None)
        if rpn is not None:
            rpn._post_nms_top_n = dict(rpn._post_nms_top_n, testing=50)
        heads = getattr(self.model, "roi_heads", None)
        if heads is not None:
            heads.detections_per_img = 10

    def real(self) -> tuple[str | None, str | None]:
        """Run the model for real (every head at work): ``(error, where it raised)``, both None when it ran."""
        with ModuleStack(self.model) as stack, torch.no_grad(), self.anatomy.exercised(self.model):
            try:
                self.model(*self.inputs)
            except Exception as e:  # noqa: BLE001 - any failure of the real forward is the observation
                return f"{type(e).__name__}: {first_line(e)}", stack.innermost()
        return None, None

    def neighbours(self, path: str) -> list[str]:
        """The layers that run just before and just after ``path`` (its producer and consumer)."""
        if path not in self.order:
            return []
        i = self.order.index(path)
        return self.order[max(i - 1, 0): i + 2]

    def run(self, name: str, seed: int) -> Outcome:
        mutation = draw_mutation(self.model, random.Random(f"{name}:{seed}"))
        old = self.model.get_submodule(mutation.path)
        mutation.module.train(old.training)
        self.model.set_submodule(mutation.path, mutation.module)
        try:
            error, where = self.real()
            outcome = Outcome(seed, mutation.text, error, where)
            try:
                report = surgery.check(self.model, probe_image_size=SIZE)
            except Exception as e:  # noqa: BLE001 - check itself must never raise on a model
                outcome.check_errors = [f"check raised {type(e).__name__}: {first_line(e)}"]
                outcome.verdict = "check raised"
                return outcome
        finally:
            self.model.set_submodule(mutation.path, old)
        outcome.check_errors = [f"{f.code} {list(f.paths)}: {f.message}" for f in report.errors]
        if error is None and report.errors:
            outcome.verdict = "false alarm"
        elif error is not None and not report.errors:
            outcome.verdict = "missed"
        elif error is not None:
            allowed = [mutation.path, *self.neighbours(mutation.path), *([where] if where else [])]
            if not any(_near(p, a) for f in report.errors for p in f.paths if p for a in allowed):
                outcome.verdict = f"misplaced (expected near {allowed})"
        return outcome


def summary(name: str, outcomes: list[Outcome]) -> str:
    """The sweep's counts and every disagreement, one per line."""
    raised = sum(o.real_error is not None for o in outcomes)
    flagged = sum(bool(o.check_errors) for o in outcomes)
    bad = [o for o in outcomes if o.verdict != "agree"]
    lines = [
        f"{name}: mutations tried {len(outcomes)}, real raised {raised}, check errors {flagged}, disagreements {len(bad)}",
        f"{'seed':>5}  {'verdict':<14} mutation | real | check",
    ]
    for o in bad:
        real = f"raised in {o.real_where or '<model>'}: {o.real_error}" if o.real_error else "ran"
        lines.append(f"{o.seed:>5}  {o.verdict:<14} {o.mutation} | {real} | {'; '.join(o.check_errors) or 'no error'}")
    return "\n".join(lines)


def sweep_seeds(name: str, fast: bool) -> list[int]:
    """The first :data:`FAST_MUTATIONS` seeds of ``name`` for the fast sweep, the rest of the first
    :data:`SLOW_MUTATIONS` for the slow one."""
    return list(range(FAST_MUTATIONS)) if fast else list(range(FAST_MUTATIONS, SLOW_MUTATIONS))


def _sweeps() -> list[Any]:
    fast = [pytest.param(n, sweep_seeds(n, True), id=f"{n}-fast") for n in MUTATED]
    slow = [pytest.param(n, sweep_seeds(n, False), id=f"{n}-slow", marks=pytest.mark.slow) for n in MUTATED]
    return fast + slow


@pytest.mark.parametrize(("name", "seeds"), _sweeps())
def test_check_errs_exactly_when_the_real_forward_raises(shared: Callable[..., nn.Module], name: str, seeds: list[int]) -> None:
    sweep = Sweep(shared(name))
    outcomes = [sweep.run(name, seed) for seed in seeds]
    assert all(o.verdict == "agree" for o in outcomes), summary(name, outcomes)


def test_a_mutation_is_drawn_from_its_seed_and_changes_only_what_it_says() -> None:
    model = build("resnet18")
    texts = [draw_mutation(model, random.Random(f"resnet18:{s}")).text for s in range(6)]
    assert texts == [
        "layer3.0.bn2 (BatchNorm2d): num_features 256 -> 255",
        "conv1 (Conv2d): in_channels 3 -> 1",
        "layer1.1.conv2 (Conv2d): kernel (3, 3) -> (5, 5)",
        "layer2.1.bn2 (BatchNorm2d): num_features 128 -> 135",
        "bn1 (BatchNorm2d): num_features 64 -> 62",
        "layer3.0.conv1 (Conv2d): stride (2, 2) -> (1, 1)",
    ]
    strided = draw_mutation(model, random.Random("resnet18:5")).module
    assert isinstance(strided, nn.Conv2d)
    assert (strided.in_channels, strided.out_channels, strided.kernel_size, strided.stride, strided.padding, strided.bias) == (
        128, 256, (3, 3), (1, 1), (1, 1), None)
    assert model.get_submodule("layer3.0.conv1").stride == (2, 2)  # the model itself is left alone


def test_a_width_mutation_keeps_the_class_and_the_groups() -> None:
    norm = type("LayerNorm2d", (nn.LayerNorm,), {})((96,), eps=1e-6)
    widened, text = _with_width(norm, 3)
    assert type(widened) is type(norm)
    assert (widened.normalized_shape, widened.eps, text) == ((99,), 1e-6, "normalized_shape (96,) -> (99,)")
    depthwise = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, groups=32))
    mutation = draw_mutation(depthwise, random.Random("depthwise:1"))
    assert mutation.text == "0 (Conv2d): in_channels 32 -> 128"
    assert isinstance(mutation.module, nn.Conv2d)
    assert (mutation.module.in_channels, mutation.module.out_channels, mutation.module.groups) == (128, 32, 32)
