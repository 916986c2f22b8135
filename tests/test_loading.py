"""Model specs, --arg literals and safe weight loading."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

import surgery
from surgery import LoadError, WeightsReport, load_model, load_weights
from surgery.loading import DEFAULT_SPEC, parse_args
from tests.helpers import state_bytes


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to fetch pretrained weights fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a download of pretrained weights was attempted")

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)


def tiny(seed: int = 0) -> nn.Sequential:
    """Linear(4→3), BatchNorm1d(3), Linear(3→2): 7 state-dict entries."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))


TINY_KEYS = [
    "0.weight", "0.bias",
    "1.weight", "1.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked",
    "2.weight", "2.bias",
]


def write(tmp_path: Path, name: str, source: str) -> Path:
    file = tmp_path / name
    file.write_text(textwrap.dedent(source))
    return file


BUILDER_FILE = """
    from torch import nn

    def build(width=4, sizes=(1,), name=None, label="x"):
        model = nn.Sequential(nn.Linear(width, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
        model.received = {"width": width, "sizes": sizes, "name": name, "label": label}
        return model

    def offline(weights="DEFAULT", weights_backbone="DEFAULT", depth=1):
        model = nn.Linear(1, 1)
        model.received = {"weights": weights, "weights_backbone": weights_backbone, "depth": depth}
        return model

    BUILT = nn.Linear(2, 2)
    NOT_CALLABLE = 3

    def returns_int():
        return 42

    def raises():
        raise RuntimeError("the builder broke on purpose")
"""


@pytest.fixture
def builder_file(tmp_path: Path) -> Path:
    return write(tmp_path, "my_models.py", BUILDER_FILE)


# --------------------------------------------------------------------------- specs


def test_module_spec() -> None:
    model = load_model("torchvision.models:resnet18")
    assert isinstance(model, torchvision.models.ResNet)
    assert model.fc.out_features == 1000


def test_module_spec_with_args() -> None:
    model = load_model("torchvision.models:resnet18", args=["num_classes=7"])
    assert model.fc.out_features == 7


def test_default_spec_builds_maskrcnn_without_weights(maskrcnn: nn.Module) -> None:
    assert DEFAULT_SPEC == "torchvision.models.detection:maskrcnn_resnet50_fpn"
    model = load_model()
    assert type(model) is type(maskrcnn)
    assert [(n, type(m)) for n, m in model.named_modules()] == [(n, type(m)) for n, m in maskrcnn.named_modules()]
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in maskrcnn.state_dict().items()}
    # no backbone weights: plain BatchNorm (a pretrained backbone would use FrozenBatchNorm2d)
    assert type(model.backbone.body.bn1) is nn.BatchNorm2d
    assert model.roi_heads.box_predictor.cls_score.out_features == 91


def test_file_spec(builder_file: Path) -> None:
    model = load_model(f"{builder_file}:build")
    assert isinstance(model, nn.Sequential)
    assert model.received == {"width": 4, "sizes": (1,), "name": None, "label": "x"}


def test_file_spec_with_args(builder_file: Path) -> None:
    model = load_model(f"{builder_file}:build", args=["width=6", "sizes=(32, 64)", "name=None", "label='two words'"])
    assert model.received == {"width": 6, "sizes": (32, 64), "name": None, "label": "two words"}
    assert model[0].in_features == 6


def test_file_spec_args_as_mapping(builder_file: Path) -> None:
    model = load_model(f"{builder_file}:build", args={"width": 5, "label": "m"})
    assert model.received == {"width": 5, "sizes": (1,), "name": None, "label": "m"}


def test_builders_get_weights_none_unless_told(builder_file: Path) -> None:
    model = load_model(f"{builder_file}:offline")
    assert model.received == {"weights": None, "weights_backbone": None, "depth": 1}
    model = load_model(f"{builder_file}:offline", args=["weights='mine'", "depth=2"])
    assert model.received == {"weights": "mine", "weights_backbone": None, "depth": 2}


def test_spec_naming_a_built_module(builder_file: Path) -> None:
    first = load_model(f"{builder_file}:BUILT")
    assert isinstance(first, nn.Linear) and first.in_features == 2
    with pytest.raises(LoadError, match=r"is an already built Linear; it takes no --arg"):
        load_model(f"{builder_file}:BUILT", args=["x=1"])


# --------------------------------------------------------------------------- parse_args


def test_parse_args_literals() -> None:
    got = parse_args([
        "num_classes=3",
        "min_size=(320,)",
        "sizes=((32,), (64,))",
        "weights=None",
        "name='resnet50'",
        'label="two words"',
        "scale=0.5",
        "offset=-2",
        "flag=True",
        "layers=[1, 2]",
        "spaced = 4",
    ])
    assert got == {
        "num_classes": 3,
        "min_size": (320,),
        "sizes": ((32,), (64,)),
        "weights": None,
        "name": "resnet50",
        "label": "two words",
        "scale": 0.5,
        "offset": -2,
        "flag": True,
        "layers": [1, 2],
        "spaced": 4,
    }
    assert type(got["num_classes"]) is int and type(got["min_size"]) is tuple


def test_parse_args_none_and_mapping() -> None:
    assert parse_args(None) == {}
    assert parse_args([]) == {}
    source = {"a": 1}
    copy = parse_args(source)
    assert copy == {"a": 1} and copy is not source


def test_parse_args_value_with_equals_sign() -> None:
    assert parse_args(["expr='a=b'"]) == {"expr": "a=b"}


@pytest.mark.parametrize(
    ("pair", "match"),
    [
        ("num_classes=three", r"--arg num_classes='three': 'three' is not a Python literal \(ValueError\)"),
        ("min_size=(320,", r"--arg min_size='\(320,': '\(320,' is not a Python literal \(SyntaxError\)"),
        ("x=__import__('os')", r"is not a Python literal"),
        ("x=", r"--arg x='': '' is not a Python literal"),
    ],
)
def test_parse_args_bad_literal(pair: str, match: str) -> None:
    with pytest.raises(LoadError, match=match) as info:
        parse_args([pair])
    assert "quoted strings work" in str(info.value)
    assert info.value.details == {"arg": pair}


@pytest.mark.parametrize("pair", ["num_classes", "=3", "1x=3", "a b=3", ""])
def test_parse_args_bad_key_value(pair: str) -> None:
    with pytest.raises(LoadError, match=rf"--arg {pair!r} is not key=value; write e.g. --arg num_classes=3"):
        parse_args([pair])


def test_bad_args_through_load_model(builder_file: Path) -> None:
    with pytest.raises(LoadError, match=r"--arg width='four': 'four' is not a Python literal"):
        load_model(f"{builder_file}:build", args=["width=four"])
    with pytest.raises(LoadError, match=r"--arg 'width' is not key=value"):
        load_model(f"{builder_file}:build", args=["width"])


# --------------------------------------------------------------------------- LoadError for every bad spec


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("torchvision.models.detection", r"model spec 'torchvision.models.detection' must be 'pkg.module:callable' or 'path/to/file.py:callable'"),
        (":build", r"model spec ':build' needs both a module and a callable around ':'"),
        ("torchvision.models.detection:", r"needs both a module and a callable around ':'"),
    ],
)
def test_malformed_spec(spec: str, match: str) -> None:
    with pytest.raises(LoadError, match=match):
        load_model(spec)


def test_missing_module() -> None:
    with pytest.raises(LoadError, match=r"cannot import module 'no_such_package_xyz' of spec 'no_such_package_xyz:build'") as info:
        load_model("no_such_package_xyz:build")
    assert "path/to/file.py:build" in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.py"
    with pytest.raises(LoadError, match=rf"spec file {str(missing)!r} does not exist"):
        load_model(f"{missing}:build")


def test_missing_callable_did_you_mean() -> None:
    with pytest.raises(
        LoadError,
        match=r"'torchvision.models.detection' has no attribute 'maskrcnn_resnet50_fp' "
        r"\(spec 'torchvision.models.detection:maskrcnn_resnet50_fp'\)\. Did you mean maskrcnn_resnet50_fpn, ",
    ):
        load_model("torchvision.models.detection:maskrcnn_resnet50_fp")


def test_missing_callable_in_file(builder_file: Path) -> None:
    with pytest.raises(LoadError, match=r"has no attribute 'biuld' .* Did you mean build\?"):
        load_model(f"{builder_file}:biuld")


def test_callable_returning_a_non_module(builder_file: Path) -> None:
    with pytest.raises(LoadError, match=r":returns_int' returned a builtins.int, not a torch.nn.Module"):
        load_model(f"{builder_file}:returns_int")


def test_attribute_that_is_not_callable(builder_file: Path) -> None:
    with pytest.raises(LoadError, match=r":NOT_CALLABLE' is a int, not a callable that builds an nn.Module"):
        load_model(f"{builder_file}:NOT_CALLABLE")


def test_builder_raising(builder_file: Path) -> None:
    with pytest.raises(LoadError, match=r":raises' raised RuntimeError: the builder broke on purpose") as info:
        load_model(f"{builder_file}:raises")
    assert isinstance(info.value.__cause__, RuntimeError)


def test_builder_called_with_unknown_argument(builder_file: Path) -> None:
    with pytest.raises(LoadError, match=r"calling .*:build\(width=4, .*\) with \{'depth': 3\} failed: .*unexpected keyword argument 'depth'"):
        load_model(f"{builder_file}:build", args=["depth=3"])


def test_file_raising_on_import(tmp_path: Path) -> None:
    file = write(tmp_path, "broken.py", "raise ImportError('cannot find the backbone package')\n")
    with pytest.raises(LoadError, match=rf"running {str(file)!r} raised ImportError: cannot find the backbone package"):
        load_model(f"{file}:build")


# --------------------------------------------------------------------------- weights


def test_state_dict_loads(tmp_path: Path) -> None:
    source = tiny(seed=1)
    source[1].running_mean.fill_(0.25)
    file = tmp_path / "tiny.pt"
    torch.save(source.state_dict(), file)
    target = tiny(seed=2)
    assert not torch.equal(target[0].weight, source[0].weight)
    report = load_weights(target, file)
    assert isinstance(report, WeightsReport)
    assert report.file == str(file)
    assert report.loaded == TINY_KEYS
    assert (report.missing, report.unexpected, report.mismatched, report.clean) == ([], [], {}, True)
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    assert str(report) == f"{file}: 9 tensors loaded"


def test_load_model_with_weights(tmp_path: Path, builder_file: Path) -> None:
    source = tiny(seed=3)
    file = tmp_path / "w.pt"
    torch.save(source.state_dict(), file)
    model = load_model(f"{builder_file}:build", weights=file)
    assert state_bytes(model) == state_bytes(source)


def mismatched_state(seed: int = 4) -> dict[str, torch.Tensor]:
    state = dict(tiny(seed).state_dict())
    del state["2.bias"]  # missing
    state["3.weight"] = torch.ones(2, 2)  # unexpected
    state["0.weight"] = torch.ones(3, 5)  # shape mismatch: the model has (3, 4)
    return state


def test_mismatched_state_strict_raises_and_changes_nothing(tmp_path: Path) -> None:
    file = tmp_path / "bad.pt"
    torch.save(mismatched_state(), file)
    target = tiny(seed=5)
    before = state_bytes(target)
    with pytest.raises(LoadError, match=r"weights do not match the model \(pass strict=False to load what fits\)") as info:
        load_weights(target, file)
    msg = str(info.value)
    assert "1 missing from file: 2.bias" in msg
    assert "1 not in model: 3.weight" in msg
    assert "shape mismatch 0.weight: model (3, 4) vs file (3, 5)" in msg
    assert state_bytes(target) == before


def test_mismatched_state_not_strict_loads_the_rest(tmp_path: Path) -> None:
    file = tmp_path / "bad.pt"
    state = mismatched_state()
    torch.save(state, file)
    target = tiny(seed=5)
    kept = {k: v.clone() for k, v in target.state_dict().items()}
    report = load_weights(target, file, strict=False)
    assert report.missing == ["2.bias"]
    assert report.unexpected == ["3.weight"]
    assert report.mismatched == {"0.weight": ((3, 4), (3, 5))}
    assert report.loaded == ["0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked", "2.weight"]
    assert not report.clean
    after = target.state_dict()
    for key in report.loaded:
        assert torch.equal(after[key], state[key]), key
    for key in ("0.weight", "2.bias"):
        assert torch.equal(after[key], kept[key]), key
    assert report.to_dict() == {
        "file": str(file),
        "loaded": 7,
        "missing": ["2.bias"],
        "unexpected": ["3.weight"],
        "mismatched": {"0.weight": [[3, 4], [3, 5]]},
        "notes": [],
    }


def test_load_model_passes_strict(tmp_path: Path, builder_file: Path) -> None:
    file = tmp_path / "bad.pt"
    torch.save(mismatched_state(), file)
    with pytest.raises(LoadError, match="weights do not match the model"):
        load_model(f"{builder_file}:build", weights=file)
    model = load_model(f"{builder_file}:build", weights=file, strict=False)
    assert torch.equal(model[2].weight, mismatched_state()["2.weight"])


@pytest.mark.parametrize("key", ["model", "state_dict"])
def test_checkpoint_dict(tmp_path: Path, key: str) -> None:
    source = tiny(seed=6)
    file = tmp_path / "ckpt.pt"
    torch.save({key: source.state_dict(), "epoch": 3, "optimizer": {"lr": 0.01}}, file)
    target = tiny(seed=7)
    report = load_weights(target, file)
    assert report.loaded == TINY_KEYS
    assert state_bytes(target) == state_bytes(source)


def test_pickled_model_refused_without_trust(tmp_path: Path) -> None:
    source = tiny(seed=8)
    file = tmp_path / "whole.pt"
    torch.save(source, file)
    target = tiny(seed=9)
    before = state_bytes(target)
    with pytest.raises(LoadError, match=r"holds pickled Python objects \(e.g. a whole model\).*pass --trust \(trust=True\)"):
        load_weights(target, file)
    assert state_bytes(target) == before
    with pytest.raises(LoadError, match=r"--trust"):
        load_model("torch.nn:Identity", weights=file)


def test_pickled_model_accepted_with_trust(tmp_path: Path, builder_file: Path) -> None:
    source = tiny(seed=8)
    file = tmp_path / "whole.pt"
    torch.save(source, file)
    target = tiny(seed=9)
    report = load_weights(target, file, trust=True)
    assert report.loaded == TINY_KEYS
    assert state_bytes(target) == state_bytes(source)
    model = load_model(f"{builder_file}:build", weights=file, trust=True)
    assert state_bytes(model) == state_bytes(source)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        # torch reports these bytes with the same UnpicklingError as a pickled model
        (b"not a checkpoint", r"is not a readable PyTorch checkpoint \(UnpicklingError: "),
        (b"this is not a checkpoint", r"is not a readable PyTorch checkpoint \(\w+Error: "),
        (b"PK\x03\x04 truncated zip", r"is not a readable PyTorch checkpoint \(RuntimeError: "),
        (b"", r"is not a readable PyTorch checkpoint \(EOFError"),
    ],
    ids=["garbage", "garbage-opcodes", "broken-zip", "empty"],
)
def test_corrupt_weights_file(tmp_path: Path, content: bytes, match: str) -> None:
    file = tmp_path / "corrupt.pt"
    file.write_bytes(content)
    target = tiny()
    before = state_bytes(target)
    with pytest.raises(LoadError, match=match) as info:
        load_weights(target, file)
    assert "torch.save(model.state_dict(), path)" in str(info.value)
    assert "--trust" not in str(info.value)  # a corrupt file is not a reason to trust it
    assert state_bytes(target) == before


def test_corrupt_weights_file_with_trust(tmp_path: Path) -> None:
    file = tmp_path / "corrupt.pt"
    file.write_bytes(b"this is not a checkpoint")
    with pytest.raises(LoadError, match="is not a readable PyTorch checkpoint"):
        load_weights(tiny(), file, trust=True)


def test_missing_weights_file(tmp_path: Path, builder_file: Path) -> None:
    missing = tmp_path / "absent.pt"
    with pytest.raises(LoadError, match=rf"weights file {str(missing)!r} does not exist"):
        load_weights(tiny(), missing)
    with pytest.raises(LoadError, match="does not exist"):
        load_model(f"{builder_file}:build", weights=missing)


def test_file_that_is_not_a_state_dict(tmp_path: Path) -> None:
    file = tmp_path / "list.pt"
    torch.save([torch.ones(1)], file)
    with pytest.raises(LoadError, match=r"holds a list, not a state dict of tensors"):
        load_weights(tiny(), file)


def test_errors_are_surgery_errors() -> None:
    with pytest.raises(surgery.SurgeryError, match="must be 'pkg.module:callable'"):
        load_model("no-colon")


def test_loading_a_detection_model_with_args_and_weights(tmp_path: Path, shared: Callable[..., nn.Module]) -> None:
    source = shared("fasterrcnn_mobilenet_v3_large_320_fpn", num_classes=3)
    file = tmp_path / "det.pt"
    torch.save(source.state_dict(), file)
    model = load_model("torchvision.models.detection:fasterrcnn_mobilenet_v3_large_320_fpn", args=["num_classes=3"], weights=file)
    assert model.roi_heads.box_predictor.cls_score.out_features == 3
    assert state_bytes(model) == state_bytes(source)
