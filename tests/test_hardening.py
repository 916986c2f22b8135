"""The reliability sweep kept as tests: every attack ends in a clear error, and nothing changes.

* a CLI attack table: each bad input exits 2 with a message naming the value, valid JSON
  under ``--json``, and no traceback;
* plain ``None`` attributes are not slots; a fuzz of bad paths creates and changes nothing;
* random failing transactions leave the model bit-identical;
* fault injection into every operation that runs the model: hooks, modes, ``requires_grad``,
  transform sizes, parameter values, module types (lazy modules too) come back as they were;
* malicious recipe and checkpoint files: nothing runs, nothing changes;
* render's exit code and findings, and orphan fixes that would create a new error.

The DDP attacks (a worker that crashes or hangs) are in ``test_hardening_ddp.py``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import surgery
from surgery import paths
from surgery._errors import IncompatibleError, LoadError, PathError
from surgery._state import preserved
from surgery.loading import load_weights
from surgery.recipe import Recipe, RecipeError, rebuild
from tests.helpers import build, fingerprint, run_cli, state_bytes

SPEC_SOURCE = '''
import sys

import torch
from torch import nn

print("printed at import")


class Tiny(nn.Module):
    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.head = nn.Linear(4, num_classes)

    def forward(self, x):
        return self.head(self.conv(x).mean((2, 3)))


def build(num_classes: int = 3) -> nn.Module:
    print("printed while building")
    return Tiny(num_classes)


def leave() -> nn.Module:
    sys.exit(3)
'''


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("specs")
    file = folder / "tiny_model.py"
    file.write_text(SPEC_SOURCE)
    return file



# --------------------------------------------------------------------------- the CLI attack table


def _attacks(spec: str, folder: Path) -> list[tuple[list[str], str]]:
    """(argv, the value the message must name). ``folder`` holds a recipe and a huge-class recipe."""
    recipe = folder / "freeze.toml"
    recipe.write_text('[[step]]\nfreeze = "conv*"\n')
    huge = folder / "huge.toml"
    huge.write_text("[[step]]\nset_num_classes = 1000000000000\n")
    return [
        (["inspect", "a" * 300 + ".py:build"], "a" * 100),
        (["smoke", spec, "--image-size", "100000"], "'100000'"),
        (["smoke", spec, "--batch-size", "100000"], "'100000'"),
        (["trace", spec, "--image-size", "100000"], "'100000'"),
        (["diff", spec, spec, "--image-size", "100000"], "'100000'"),
        (["inspect", spec, "--input-size", "3,64"], "'3,64'"),
        (["inspect", spec, "--input-size", "3,64,64,64"], "'3,64,64,64'"),
        (["inspect", spec, "--input-size", "3,100000,100000"], "'3,100000,100000'"),
        (["render", spec, "-o", "/missing-folder/x.dot"], "'/missing-folder/x.dot'"),
        (["apply", str(recipe), spec, "-o", "/missing-folder/out.pt"], "'/missing-folder/out.pt'"),
        (["apply", str(recipe), spec, "-o", str(folder)], repr(str(folder))),
        (["apply", str(huge), spec, "-o", str(folder / "out.pt")], "1000000000000"),
        (["smoke", spec, "--ddp", "2", "--ddp-timeout", "inf"], "'inf'"),
        (["smoke", spec, "--ddp", "2", "--ddp-timeout", "nan"], "'nan'"),
        (["smoke", spec, "--ddp", "2", "--ddp-timeout", "-1"], "'-1'"),
        (["inspect", f"{Path(spec.rsplit(':', 1)[0])}:leave"], "sys.exit(3)"),
        (["inspect", "builtins:exit"], "'builtins:exit'"),
        (["smoke", spec, "--steps", "1000000000"], "'1000000000'"),
        (["smoke", spec, "--ddp", "1000"], "'1000'"),
        (["smoke", spec, "--ddp", "1"], "'1'"),
        (["diff", spec, spec, "--runs", "1000000000"], "'1000000000'"),
        (["inspect", spec, "--depth", "-1"], "'-1'"),
        (["trace", spec, "--depth", "100000"], "'100000'"),
        (["inspect", spec, "--weights", str(folder)], repr(str(folder))),
        (["inspect", spec, "--arg", "num_classes=" + "(" * 1000], "num_classes"),
        (["render", spec, "-o", str(folder / "x.dot"), "--depth", "3"], "--depth 3"),
        (["render", spec, "-o", str(folder / "x.txt")], "x.txt"),
        (["render", spec, "-o", str(folder / "x.dot"), "--arg-before", "num_classes=2"], "--arg-before"),
        (["render", spec, "-o", str(folder / "x.dot"), "--before", spec, "--arg-before", "num_classes"], "--arg-before 'num_classes'"),
        (["check", spec, "--format", "yaml"], "'yaml'"),
        (["smoke", spec, "--format", "html"], "'html'"),
        (["diff", spec, spec, "--arg-before", "num_classes=(("], "--arg-before num_classes"),
        (["diff", spec, spec, "--weights-before", str(folder)], repr(str(folder))),
        (["diff", spec, spec, "--weights", str(folder / "missing.pt")], repr(str(folder / "missing.pt"))),
        (["review", spec, spec, "-o", "/missing-folder/r.html"], "'/missing-folder/r.html'"),
        (["review", spec, spec, "-o", str(folder / "r.txt")], "r.txt"),
        (["review", spec, spec, "-o", str(folder)], repr(str(folder))),
        (["review", spec, spec, "-o", str(folder / "r.html"), "--image-size", "100000"], "'100000'"),
        (["review", spec, spec, "-o", str(folder / "r.html"), "--recipe", str(folder / "none.toml")], repr(str(folder / "none.toml"))),
        (["review", spec, spec, "-o", str(folder / "r.html"), "--arg", "num_classes=2", "--arg", "bogus=1"], "bogus"),
        (["review", "a" * 300 + ".py:build", spec, "-o", str(folder / "r.html")], "a" * 100),
        (["check", str(recipe)], repr(str(recipe))),
    ]


def test_cli_attack_table(spec_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = f"{spec_file}:build"
    for argv, value in _attacks(spec, tmp_path):
        code, out, err = run_cli(argv, capsys)
        assert (code, value in err, "Traceback" not in err + out, out) == (2, True, True, ""), (argv, err)
        code, out, err = run_cli([*argv, "--json"], capsys)
        body = json.loads(out)
        assert (code, body["ok"], body["findings"], value in body["error"], "Traceback" not in err) == (2, False, [], True, True), argv


def test_bad_numbers_are_refused_before_the_model_is_built(spec_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["smoke", f"{spec_file}:build", "--image-size", "100000"], capsys)
    assert code == 2
    assert "printed while building" not in err
    assert err.splitlines()[-1] == "surgery smoke: error: argument --image-size: '100000' is out of range; give an integer in 32..4096"


def test_json_stdout_is_json_alone_when_model_code_prints(spec_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["inspect", f"{spec_file}:build", "--json"], capsys)
    assert code == 0
    body = json.loads(out)
    assert (body["ok"], body["class"]) == (True, "Tiny")
    assert "printed while building" in err and "printed" not in out


def test_builder_exit_is_a_load_error(spec_file: Path) -> None:
    with pytest.raises(LoadError, match=r"building '.*tiny_model.py:leave' called sys.exit\(3\) instead of returning an nn.Module"):
        surgery.load_model(f"{spec_file}:leave")
    with pytest.raises(LoadError, match=r"building 'builtins:exit' called sys.exit\(\) \(or exit\(\)\)"):
        surgery.load_model("builtins:exit")


# --------------------------------------------------------------------------- plain None attributes are not slots


@pytest.fixture
def faster() -> nn.Module:
    return build("fasterrcnn_mobilenet_v3_large_320_fpn", num_classes=3)


@pytest.mark.parametrize("path", ["transform.fixed_size", "roi_heads.box_roi_pool.scales"])
def test_plain_none_attribute_is_not_a_slot(faster: nn.Module, path: str) -> None:
    before = fingerprint(faster)
    assert not paths.is_empty_slot(faster, path)
    name = path.rsplit(".", 1)[-1]
    with pytest.raises(PathError, match=rf"'{name}' is not a submodule of .*\('{name}' exists there, but as a NoneType, not a module\.\)"):
        paths.set(faster, path, nn.Identity())
    with pytest.raises(PathError, match=rf"'{name}' is not a submodule"):
        surgery.replace(faster, path, nn.Identity())
    assert fingerprint(faster) == before


def test_optional_slots_and_registered_none_are_slots(faster: nn.Module) -> None:
    assert paths.is_empty_slot(faster, "roi_heads.mask_head")  # a plain None the anatomy declares optional
    assert not paths.is_empty_slot(faster, "roi_heads.box_head")  # filled
    assert not paths.is_empty_slot(faster, "roi_heads.nope")
    paths.delete(faster, "rpn.head")  # leaves a registered None
    assert paths.is_empty_slot(faster, "rpn.head")
    plain = nn.Sequential(nn.Linear(2, 2))
    plain.extra = None  # type: ignore[assignment]  # a plain None on a model whose anatomy declares no optional slot
    assert not paths.is_empty_slot(plain, "extra")


_NONE_ATTRS = ["fixed_size", "scales", "mask_head", "keypoint_head", "mask_predictor", "score_thresh", "weight", "bias"]


def _snapshot(model: nn.Module) -> Any:
    named = list(model.named_modules(remove_duplicate=False))
    return [(name, id(m), sorted(m.__dict__), sorted((k, id(v)) for k, v in m._modules.items()),
             sorted(k for k, v in m.__dict__.items() if v is None)) for name, m in named]


@pytest.mark.slow
def test_fuzz_bad_paths_create_and_change_nothing() -> None:
    model = build("fasterrcnn_mobilenet_v3_large_320_fpn", num_classes=3)
    names = sorted({p.rsplit(".", 1)[-1] for p in paths.iter_paths(model)} | set(_NONE_ATTRS))
    segment = st.one_of(st.sampled_from(names), st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True),
                        st.integers(-9, 9).map(str), st.sampled_from(["", " ", "-0", "0x1", "é", "__dict__", "_modules", "training"]))
    bad = st.lists(segment, min_size=1, max_size=5).map(".".join).filter(
        lambda p: not (_resolves(model, p) or paths.is_empty_slot(model, p)))
    before = _snapshot(model)
    counts = {"get": 0, "set": 0, "delete": 0}

    @settings(max_examples=1000, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(path=bad)
    def attack(path: str) -> None:
        for op, call in (("get", lambda: paths.get(model, path)), ("set", lambda: paths.set(model, path, nn.Identity())),
                         ("delete", lambda: paths.delete(model, path))):
            with pytest.raises(PathError):
                call()
            counts[op] += 1

    attack()
    assert min(counts.values()) >= 1000
    assert _snapshot(model) == before


def _resolves(model: nn.Module, path: str) -> bool:
    try:
        paths.get(model, path)
    except PathError:
        return False
    return True


# --------------------------------------------------------------------------- random failing transactions


@pytest.mark.slow
def test_random_failing_transactions_leave_the_model_bit_identical() -> None:
    model = build("fasterrcnn_mobilenet_v3_large_320_fpn", num_classes=3)
    before = fingerprint(model)
    layers = [p for p, m in model.named_modules() if isinstance(m, nn.Conv2d) and p.startswith(("rpn", "backbone.fpn"))]
    step = st.one_of(
        st.tuples(st.just("replace"), st.sampled_from(layers), st.integers(1, 64)),
        st.tuples(st.just("freeze"), st.sampled_from(["backbone*", "rpn*", "roi_heads*"]), st.just(0)),
        st.tuples(st.just("set_num_classes"), st.just(""), st.integers(2, 9)),
    )

    @settings(max_examples=12, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(steps=st.lists(step, min_size=1, max_size=4), end=st.sampled_from(["raise", "bad path"]))
    def attack(steps: list[tuple[str, str, int]], end: str) -> None:
        with pytest.raises((RuntimeError, PathError)):
            with surgery.edit(model) as e:
                for action, target, n in steps:
                    if action == "replace":
                        old = paths.get(model, target)
                        assert isinstance(old, nn.Conv2d)
                        e.replace(target, nn.Conv2d(old.in_channels, n, 1))
                    elif action == "freeze":
                        e.freeze(target)
                    else:
                        e.set_num_classes(n)
                if end == "raise":
                    raise RuntimeError("the user's code failed half-way")
                e.replace("roi_heads.box_hed", nn.Identity())
        assert fingerprint(model) == before

    attack()


def test_failing_transaction_with_an_incompatible_edit(faster: nn.Module) -> None:
    before = fingerprint(faster)
    with pytest.raises(IncompatibleError, match="rolled back"):
        with surgery.edit(faster) as e:
            e.freeze("backbone*")
            e.replace("rpn.head.conv", nn.Sequential(nn.Conv2d(96, 7, 1)))
    assert fingerprint(faster) == before


# --------------------------------------------------------------------------- fault injection: leave no trace


class Vandal(nn.Module):
    """Disturbs everything "leave no trace" protects, then raises (when ``fail``)."""

    def __init__(self, fail: bool) -> None:
        super().__init__()
        self.fail = fail
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.lazy = nn.LazyConv2d(4, 1)
        self.head = nn.Linear(4, 3)
        self.min_size = (32,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            self.conv.weight.mul_(0.5)
        self.head.weight.requires_grad_(False)
        self.min_size = (999,)
        self.bn.train()
        self.register_forward_hook(lambda *a: None)
        y = self.lazy(self.bn(self.conv(x)))
        if self.fail:
            raise RuntimeError("injected fault")
        return self.head(y.mean((2, 3)))


def _vandal_state(model: Vandal) -> Any:
    return {
        "types": [type(m).__name__ for m in model.modules()],
        "lazy": model.lazy.has_uninitialized_params(),
        "values": [(n, p.detach().clone()) for n, p in model.named_parameters() if not isinstance(p, nn.parameter.UninitializedParameter)],
        "buffers": [(n, b.detach().clone()) for n, b in model.named_buffers() if not isinstance(b, nn.parameter.UninitializedBuffer)],
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "hooks": [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()],
        "min_size": model.min_size,
    }


def _same(a: Any, b: Any) -> bool:
    tensors = ("values", "buffers")
    plain = {k: v for k, v in a.items() if k not in tensors} == {k: v for k, v in b.items() if k not in tensors}
    return plain and all([n for n, _ in a[k]] == [n for n, _ in b[k]] and all(torch.equal(x, y) for (_, x), (_, y) in zip(a[k], b[k], strict=True))
                         for k in tensors)


_OPERATIONS = {
    "trace": lambda m: surgery.trace(m, torch.randn(2, 3, 32, 32), strict=False),
    "trace train": lambda m: surgery.trace(m, torch.randn(2, 3, 32, 32), mode="train", strict=False),
    "smoke": lambda m: surgery.smoke_test(m, device="cpu", image_size=32),
    "check --trace": lambda m: surgery.check(m, trace=True, probe_image_size=32),
    "render": lambda m: surgery.render(m, None, input=torch.randn(1, 3, 32, 32)),
    "render modules": lambda m: surgery.render(m, None, level="modules", input=torch.randn(1, 3, 32, 32)),
    "diff": lambda m: surgery.diff(m, Vandal(False), image_size=32, runs=1),
    "inspect": lambda m: surgery.inspect(m, input_size=(2, 3, 32, 32)),
    "components": lambda m: surgery.components(m),
}


@pytest.mark.parametrize("fail", [False, True], ids=["writes", "writes-then-raises"])
@pytest.mark.parametrize("operation", list(_OPERATIONS))
def test_fault_injection_leaves_no_trace(operation: str, fail: bool) -> None:
    model = Vandal(fail)
    model.eval()
    before = _vandal_state(model)
    try:
        _OPERATIONS[operation](model)
    except Exception as e:  # noqa: BLE001 - what matters here is the state after, whatever the operation did
        assert "injected fault" in str(e) or "Failed to run torchinfo" in str(e), f"{operation} raised {type(e).__name__}: {e}"
    assert _same(_vandal_state(model), before), operation


def test_lazy_modules_are_described_not_raised_on() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.LazyConv2d(8, 1))
    (first, second) = surgery.components(model)
    assert (first.lazy, first.params, second.lazy, second.params) == (False, 112, True, 0)
    assert str(second).startswith("1: LazyConv2d (uninitialized, 0 params materialized)")
    text = str(surgery.inspect(model))
    assert "└─ 1: LazyConv2d (0, uninitialized)" in text
    changes = str(surgery.diff(model, nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 8, 1)), cost=False))
    assert "LazyConv2d (uninitialized) → Conv2d 4→8 1×1" in changes


def test_parameter_copy_is_made_once_and_written_back_only_where_changed() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 1))
    untouched = model[1].weight
    version = untouched._version
    with preserved(model):
        with torch.no_grad():
            model[0].weight.zero_()
    assert bool(model[0].weight.abs().sum() > 0)
    assert untouched._version == version  # nothing written back into a parameter nobody touched


# --------------------------------------------------------------------------- malicious recipes


def test_recipe_naming_a_function_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    text = f'[[step]]\nreplace = "roi_heads.mask_head"\nmodule = "os:system"\nargs = ["touch {marker}"]\n'
    with pytest.raises(RecipeError, match=r"^r.toml, step 1 \(line 3\): os:system is a builtin_function_or_method, not an nn.Module subclass; "
                                          r"a recipe may only build modules: .*surgery:detection_backbone. Nothing was called$"):
        Recipe.parse(text, source="r.toml")
    for spec in ("builtins:eval", "subprocess:run", "builtins:dict", "torchvision.models.detection:maskrcnn_resnet50_fpn"):
        with pytest.raises(RecipeError, match=rf"{spec} is a .*not an nn.Module subclass"):
            Recipe.parse(f'[[step]]\nreplace = "backbone"\nmodule = "{spec}"\n', source="r.toml")
    assert not marker.exists()


def test_cli_apply_with_a_malicious_recipe_runs_nothing(tmp_path: Path, spec_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "ran"
    recipe = tmp_path / "evil.toml"
    recipe.write_text(f'[[step]]\nreplace = "conv"\nmodule = "os:system"\nargs = ["touch {marker}"]\n')
    code, out, err = run_cli(["apply", str(recipe), f"{spec_file}:build", "-o", str(tmp_path / "out.pt")], capsys)
    assert (code, marker.exists(), (tmp_path / "out.pt").exists()) == (2, False, False)
    assert "os:system is a builtin_function_or_method, not an nn.Module subclass" in err


def test_recipe_model_spec_may_not_name_the_standard_library(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    recipe = Recipe.parse(f'model = "subprocess:run"\nargs = {{ args = ["touch", "{marker}"] }}\n[[step]]\nfreeze = "x*"\n', source="r.toml")
    with pytest.raises(RecipeError, match=r"^r.toml: model 'subprocess:run' in r.toml names function 'run' of module 'subprocess', not a model builder"):
        recipe.model_spec()
    assert not marker.exists()


def _saved(tmp_path: Path, **changes: Any) -> Path:
    payload: dict[str, Any] = {"format": "surgery.recipe/1", "spec": "torch.nn:Identity", "args": {},
                               "recipe": '[[step]]\nfreeze = "*"\n', "state_dict": {}}
    payload.update(changes)
    file = tmp_path / "saved.pt"
    torch.save(payload, file)
    return file


def test_rebuild_of_a_malicious_saved_file_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    evil_step = f'[[step]]\nreplace = "x"\nmodule = "os:system"\nargs = ["touch {marker}"]\n'
    with pytest.raises(RecipeError, match="os:system is a builtin_function_or_method, not an nn.Module subclass"):
        rebuild(_saved(tmp_path, spec="torchvision.models:resnet18", recipe=evil_step))
    with pytest.raises(LoadError, match=r"model 'subprocess:run' .* names function 'run' of module 'subprocess', not a model builder"):
        rebuild(_saved(tmp_path, spec="subprocess:run", args={"args": ["touch", str(marker)]}))
    assert not marker.exists()


# --------------------------------------------------------------------------- malicious checkpoints


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 5))


def test_one_bad_tensor_loads_nothing(tmp_path: Path) -> None:
    model = _tiny()
    state = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    state["3.bias"] = torch.empty(5, device="meta")
    torch.save(state, tmp_path / "meta.pt")
    before = state_bytes(model)
    with pytest.raises(LoadError, match=r"meta.pt' cannot be loaded, nothing was changed:\n  '3.bias' is on the meta device"):
        load_weights(model, tmp_path / "meta.pt")
    assert state_bytes(model) == before


def test_integer_tensor_into_float_parameter_is_refused(tmp_path: Path) -> None:
    model = _tiny()
    state = dict(model.state_dict())
    state["0.weight"] = torch.ones(4, 3, 3, 3, dtype=torch.int64)
    torch.save(state, tmp_path / "int.pt")
    before = state_bytes(model)
    with pytest.raises(LoadError, match=r"'0.weight' is torch.int64 in the file but torch.float32 in the model; "
                                        r"an integer tensor is not loaded into a floating one"):
        load_weights(model, tmp_path / "int.pt")
    assert state_bytes(model) == before


def test_ddp_prefix_is_stripped_and_said(tmp_path: Path) -> None:
    source, model = _tiny(), _tiny()
    with torch.no_grad():
        source[0].weight.fill_(0.25)
    torch.save({f"module.{k}": v for k, v in source.state_dict().items()}, tmp_path / "ddp.pt")
    report = load_weights(model, tmp_path / "ddp.pt")
    assert report.notes == ["stripped the 'module.' prefix (a model saved from DDP) from all 9 keys"]
    assert (len(report.loaded), report.clean, state_bytes(model)) == (9, True, state_bytes(source))


@pytest.mark.parametrize("key", ["model_state_dict", "model_state"])
def test_nested_checkpoints_are_accepted(tmp_path: Path, key: str) -> None:
    source, model = _tiny(), nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 5))
    torch.save({key: source.state_dict(), "epoch": 3}, tmp_path / "ckpt.pt")
    assert len(load_weights(model, tmp_path / "ckpt.pt").loaded) == 9
    assert state_bytes(model) == state_bytes(source)


def test_unknown_nesting_lists_the_keys_found(tmp_path: Path) -> None:
    torch.save({"weights_here": _tiny().state_dict(), "epoch": 3}, tmp_path / "odd.pt")
    with pytest.raises(LoadError, match=r"not a state dict of tensors, nor has one under 'state_dict', 'model', 'model_state_dict', "
                                        r"'model_state'; its keys: 'weights_here' \(OrderedDict\), 'epoch' \(int\)"):
        load_weights(_tiny(), tmp_path / "odd.pt")


def test_class_count_mismatch_hints_num_classes(tmp_path: Path, faster: nn.Module) -> None:
    other = build("fasterrcnn_mobilenet_v3_large_320_fpn", num_classes=7)
    torch.save(other.state_dict(), tmp_path / "seven.pt")
    with pytest.raises(LoadError, match=r"(?s)shape mismatch roi_heads.box_predictor.cls_score.weight.*predict 7 classes.*--arg num_classes=7"):
        load_weights(faster, tmp_path / "seven.pt")


def test_cli_no_strict_loads_what_fits(tmp_path: Path, spec_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sys.path.insert(0, str(spec_file.parent))
    try:
        import tiny_model  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(spec_file.parent))
    torch.save(tiny_model.Tiny(5).state_dict(), tmp_path / "five.pt")
    capsys.readouterr()  # what the import printed
    spec = f"{spec_file}:build"
    code, out, err = run_cli(["inspect", spec, "--weights", str(tmp_path / "five.pt"), "--json"], capsys)
    assert (code, json.loads(out)["ok"]) == (2, False)
    assert "shape mismatch head.weight: model (3, 4) vs file (5, 4)" in err
    code, out, err = run_cli(["inspect", spec, "--weights", str(tmp_path / "five.pt"), "--no-strict", "--json"], capsys)
    assert (code, json.loads(out)["ok"]) == (0, True)
    assert "surgery: --no-strict: " in err and "2 tensors loaded" in err


# --------------------------------------------------------------------------- render: exit code and duplicate faults


class _DictHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> Any:
        return {"features": self.fc(x.mean((2, 3)))}


class _RaisingHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("the head broke")


class _DataDependent(nn.Module):
    """Its forward asks a value (``.item()``), which stops the static meta probe before the head runs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.head = _DictHead()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if y.sum().item() > -1e30:
            return self.head(y).flatten(1)
        return y


def test_render_reports_a_head_that_returns_a_non_tensor(tmp_path: Path) -> None:
    graph = surgery.render(_DataDependent(), tmp_path / "x.dot", input=torch.randn(1, 3, 16, 16))
    assert [(f.severity, f.code, f.message) for f in graph.findings] == [
        ("error", "shape-error", "<model> (_DataDependent) raised AttributeError during the eval forward: 'dict' object has no attribute 'flatten'; "
         "it received 0: 1×3×16×16. 3 module calls had completed before (the last: conv, head.fc, head)")]


def test_render_lists_a_raising_head_once(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), _RaisingHead())
    graph = surgery.render(model, tmp_path / "x.dot")
    keys = [f.key for f in graph.findings if f.code == "shape-error"]
    assert len(keys) == len(set(keys)) == 1


# --------------------------------------------------------------------------- fixes must not create new errors


def test_orphan_fix_proposes_the_whole_change() -> None:
    sys.path.insert(0, str(Path(__file__).parents[1] / "examples"))
    try:
        import deeper_mask_head
    finally:
        sys.path.pop(0)
    model = deeper_mask_head.broken_orphan("resnet18")
    before = fingerprint(model)
    (orphan,) = [f for f in surgery.check(model).findings if f.code == "orphan-module"]
    assert orphan.fix == ("model.roi_heads.mask_predictor = model.mask_predictor; del model.mask_predictor"
                          "  # and first: model.roi_heads.mask_head = <a module producing 1024 ch, such as the head built for it>")
    assert orphan.message.endswith("moving it there alone would not fit: roi_heads.mask_head produces 256 channels but "
                                   "roi_heads.mask_predictor (MaskRCNNPredictor) expects 1024 (in roi_heads.mask_predictor.conv5_mask)")
    assert fingerprint(model) == before
    both = deeper_mask_head.broken("resnet18")  # the head is attached there: moving the predictor is the whole fix
    (orphan,) = [f for f in surgery.check(both).findings if f.code == "orphan-module"]
    assert orphan.fix == "model.roi_heads.mask_predictor = model.mask_predictor; del model.mask_predictor"


def test_emit_writes_to_the_real_stdout_while_user_code_prints_to_stderr(spec_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["check", f"{spec_file}:build", "--format", "json"], capsys)
    assert code == 0 and json.loads(out)["ok"] is True
    assert "printed while building" in err


@pytest.mark.parametrize("replacement", [nn.Linear(2, 2), nn.Identity()], ids=["linear", "identity"])
def test_a_transform_that_is_no_transform_is_refused(replacement: nn.Module) -> None:
    model = build("fasterrcnn_mobilenet_v3_large_320_fpn")
    old = model.transform
    before = fingerprint(model)
    with pytest.raises(surgery.IncompatibleError, match=r"error \[shape-error\] transform: transform \((Linear|Identity)\) "):
        surgery.replace(model, "transform", replacement)
    assert model.transform is old and fingerprint(model) == before
