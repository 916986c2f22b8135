"""Recipes: TOML steps applied as one transaction, saved, rebuilt; bad recipes named by step and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import surgery
from surgery import IncompatibleError, LoadError, Recipe, RecipeError, load_model
from surgery.cli import main
from tests.helpers import build, fingerprint

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "recipes" / "deeper_mask_head.toml"

HEADS = "torchvision.models.detection.mask_rcnn:MaskRCNNHeads"
GOOD = f"""\
model = "torchvision.models.detection:maskrcnn_resnet50_fpn"

[[step]]
replace = "roi_heads.mask_head"
module = "{HEADS}"
kwargs = {{ in_channels = 256, layers = [256, 512], dilation = 1 }}
adapt = true

[[step]]
set_num_classes = 4
keep = [0, 1, 3, 18]

[[step]]
freeze = ["roi_heads.mask_head.0*"]

[[step]]
freeze_backbone_layers = 3
"""


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- round trip


def test_apply_save_rebuild_round_trip(tmp_path: Path) -> None:
    recipe = Recipe.parse(GOOD, source="good.toml")
    assert [s.action for s in recipe.steps] == ["replace", "set_num_classes", "freeze", "freeze_backbone_layers"]
    assert [s.line for s in recipe.steps] == [3, 9, 13, 16]
    spec, args = recipe.model_spec()
    assert (spec, args) == ("torchvision.models.detection:maskrcnn_resnet50_fpn", {})
    model = load_model(spec, args)
    result = recipe.apply(model)
    assert result.report is not None and result.report.findings == []
    assert [s.summary.splitlines()[0] for s in result.steps] == [
        "replace roi_heads.mask_head: MaskRCNNHeads → MaskRCNNHeads",
        "set_num_classes: 91 → 4 classes (kept new←old: 0←0, 1←1, 2←3, 3←18)",
        "freeze ['roi_heads.mask_head.0*']: 2 parameter tensor(s) changed",
        "freeze_backbone_layers 3: 33 parameter tensor(s) changed",
    ]
    assert model.roi_heads.mask_predictor.conv5_mask.in_channels == 512
    assert model.roi_heads.box_predictor.cls_score.out_features == 4

    file = recipe.save(model, tmp_path / "out.pt", spec=spec, args=args)
    payload = torch.load(file, weights_only=True)
    assert sorted(payload) == ["args", "format", "recipe", "spec", "state_dict"]
    assert (payload["format"], payload["spec"], payload["args"], payload["recipe"]) == ("surgery.recipe/1", spec, {}, GOOD)

    rebuilt = surgery.rebuild(file)
    assert same_state(rebuilt.state_dict(), model.state_dict())
    assert [(n, type(m).__name__) for n, m in rebuilt.named_modules()] == [(n, type(m).__name__) for n, m in model.named_modules()]
    assert [(n, p.requires_grad) for n, p in rebuilt.named_parameters()] == [(n, p.requires_grad) for n, p in model.named_parameters()]
    assert surgery.check(rebuilt).findings == []


def test_model_spec_precedence() -> None:
    recipe = Recipe.parse('model = "a.b:c"\nargs = { num_classes = 3 }\n[[step]]\nset_num_classes = 2\n')
    assert recipe.model_spec() == ("a.b:c", {"num_classes": 3})
    assert recipe.model_spec(None, {"min_size": 320}) == ("a.b:c", {"num_classes": 3, "min_size": 320})
    assert recipe.model_spec("x.y:z") == ("x.y:z", {})  # another model: the recipe's args do not apply
    assert Recipe.parse("[[step]]\nset_num_classes = 2\n").model_spec() == (surgery.DEFAULT_SPEC, {})


def test_keep_table_keys_are_new_indices() -> None:
    recipe = Recipe.parse("[[step]]\nset_num_classes = 3\nkeep = { 0 = 0, 2 = 17 }\n")
    assert recipe.steps[0].options["keep"] == {0: 0, 2: 17}


def test_save_refuses_non_literal_args(tmp_path: Path) -> None:
    recipe = Recipe.parse("[[step]]\nset_num_classes = 2\n")
    with pytest.raises(TypeError, match=r"args\['norm'\] must hold only literals .*got type"):
        recipe.save(nn.Linear(2, 2), tmp_path / "x.pt", spec="a:b", args={"norm": nn.BatchNorm2d})
    assert not (tmp_path / "x.pt").exists()


def test_rebuild_refuses_other_files(tmp_path: Path) -> None:
    with pytest.raises(LoadError, match=r"'.*missing.pt' does not exist"):
        surgery.rebuild(tmp_path / "missing.pt")
    plain = tmp_path / "plain.pt"
    torch.save({"weight": torch.zeros(2)}, plain)
    with pytest.raises(LoadError, match=r"is not a file written by Recipe.save / surgery apply \(no format 'surgery.recipe/1'\)"):
        surgery.rebuild(plain)


# --------------------------------------------------------------------------- bad recipes (nothing is built)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[[step]]\nset_num_classes = \n", r"^r.toml: not valid TOML: Invalid value \(at line 2, column 19\)"),
        ('modle = "a:b"\n[[step]]\nset_num_classes = 3\n',
         r"^r.toml \(line 1\): unknown top-level key 'modle'; allowed: model, args, description, step. Did you mean 'model'\?"),
        ('model = "a:b"\n', r"^r.toml: a recipe needs at least one \[\[step\]\] table"),
        ('model = "resnet"\n[[step]]\nset_num_classes = 3\n', r"^r.toml \(line 1\): model must be a spec string like"),
        ("args = 3\n[[step]]\nset_num_classes = 3\n", r"^r.toml \(line 1\): args must be a table of keyword arguments, got 3"),
        ('[[step]]\nrepalce = "roi_heads.mask_head"\n',
         r"^r.toml, step 1 \(line 1\): no action: a step needs exactly one of replace, adapt, set_num_classes, freeze, unfreeze, "
         r"freeze_backbone_layers; it has 'repalce'. Did you mean 'replace'\?"),
        ('[[step]]\nset_num_classes = 3\nfreeze = "x*"\n',
         r"^r.toml, step 1 \(line 3\): a step has exactly one action, this one has set_num_classes, freeze"),
        (f'[[step]]\nset_num_classes = 3\n\n[[step]]\nreplace = "roi_heads.mask_head"\nmodul = "{HEADS}"\n',
         r"^r.toml, step 2 \(line 6\): unknown key 'modul' in a replace step; allowed: module, args, kwargs, adapt. Did you mean 'module'\?"),
        ('[[step]]\nset_num_classes = "3"\n', r"^r.toml, step 1 \(line 2\): set_num_classes must be an integer in 1..100000, got str '3'"),
        ("[[step]]\nfreeze_backbone_layers = -1\n", r"^r.toml, step 1 \(line 2\): freeze_backbone_layers must be an integer >= 0, got int -1"),
        ("[[step]]\nfreeze = 3\n", r"^r.toml, step 1 \(line 2\): freeze must be a glob string or a non-empty list of them"),
        (f'[[step]]\nreplace = "roi_heads.mask_head"\nmodule = "{HEADS}"\nadapt = "yes"\n',
         r"^r.toml, step 1 \(line 4\): adapt must be true or false, got str 'yes'"),
        (f'[[step]]\nreplace = "roi_heads.mask_head"\nmodule = "{HEADS}"\nkwargs = [1]\n',
         r"^r.toml, step 1 \(line 4\): kwargs must be a table, got list \[1\]"),
        ('[[step]]\nreplace = "roi_heads.mask_head"\n', r"^r.toml, step 1 \(line 1\): a replace step needs 'module'"),
        ('[[step]]\nreplace = "roi_heads..mask_head"\nmodule = "a:b"\n', r"^r.toml, step 1 \(line 2\): replace path 'roi_heads..mask_head' has an empty segment"),
        ('[[step]]\nreplace = "roi_heads.mask_head"\nmodule = "MaskRCNNHeads"\n', r"^r.toml, step 1 \(line 3\): module must be 'pkg.module:Callable'"),
        ('[[step]]\nreplace = "roi_heads.mask_head"\nmodule = "torchvision.nope:Head"\n',
         r"^r.toml, step 1 \(line 3\): cannot import module 'torchvision.nope'"),
        ('[[step]]\nreplace = "roi_heads.mask_head"\nmodule = "torchvision.models.detection.mask_rcnn:MaskRCNNHead"\n',
         r"^r.toml, step 1 \(line 3\): .*has no attribute 'MaskRCNNHead'.*Did you mean MaskRCNNHeads"),
        ('[[step]]\nset_num_classes = 3\nkeep = "all"\n', r"^r.toml, step 1 \(line 3\): keep must be a list of old indices or a table"),
        ("[[step]]\nset_num_classes = 3\nkeep = { 1 = 1, 01 = 2 }\n", r"^r.toml, step 1 \(line 3\): keep names new class 1 twice"),
    ],
)
def test_bad_recipe_names_step_and_line(text: str, match: str) -> None:
    with pytest.raises(RecipeError, match=match):
        Recipe.parse(text, source="r.toml")


def test_missing_recipe_file(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match=r"nope.toml: cannot read the recipe: No such file or directory"):
        Recipe.load(tmp_path / "nope.toml")


# --------------------------------------------------------------------------- failures while applying: nothing changes


@pytest.fixture(scope="module")
def pristine() -> nn.Module:
    return build("maskrcnn_resnet50_fpn")


@pytest.mark.parametrize(
    ("text", "error", "match"),
    [
        (f'[[step]]\nreplace = "roi_heads.mask_hed"\nmodule = "{HEADS}"\nkwargs = {{ in_channels = 256, layers = [256], dilation = 1 }}\n',
         RecipeError, r"^r.toml, step 1 \(line 2\): replace roi_heads.mask_hed with .*PathError: .*Did you mean 'roi_heads.mask_head'"),
        (f'[[step]]\nreplace = "roi_heads.mask_head"\nmodule = "{HEADS}"\nkwargs = {{ in_channels = 256, layers = [256], bogus = 1 }}\n',
         RecipeError, r"^r.toml, step 1 \(line 4\): .*calling .*MaskRCNNHeads\(\*\[\], \*\*\{.*\}\) raised TypeError"),
        (f'[[step]]\nreplace = "roi_heads.mask_head"\nmodule = "{HEADS}"\nargs = [256, [512], 1]\nadapt = true\n\n'
         "[[step]]\nset_num_classes = 3\nkeep = [0, 200]\n",
         RecipeError, r"^r.toml, step 2 \(line 9\): set_num_classes 3, keep=\[0, 200\]: ValueError: keep: old class index for new class 1 "
                   r"\(the model has 91 classes\) must be an int in 0\.\.90, got 200$"),
        ('[[step]]\nadapt = "backbone.fpn"\n', RecipeError, r"^r.toml, step 1 \(line 2\): adapt backbone.fpn: ValueError: .*has no such rule"),
        ('[[step]]\nfreeze = ["backbone.body.layer1*", "roi_heads.mask_hed*"]\n',
         RecipeError, r"^r.toml, step 1 \(line 2\): .*pattern 'roi_heads.mask_hed\*' matches no module"),
        (f'[[step]]\nfreeze = "backbone*"\n\n[[step]]\nreplace = "roi_heads.mask_head"\nmodule = "{HEADS}"\nargs = [256, [512], 1]\n',
         IncompatibleError, r"(?s)recipe r.toml was rolled back and the model is unchanged: it introduced 1 incompatibility:\n"
                            r"error \[channel-mismatch\] roi_heads.mask_head -> roi_heads.mask_predictor"),
    ],
)
def test_failing_recipe_changes_nothing(pristine: nn.Module, text: str, error: type[Exception], match: str) -> None:
    recipe = Recipe.parse(text, source="r.toml")
    before = fingerprint(pristine)
    with pytest.raises(error, match=match):
        recipe.apply(pristine)
    assert fingerprint(pristine) == before


# --------------------------------------------------------------------------- the CLI


def test_cli_apply_example_and_rebuild(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "deeper.pt"
    assert main(["apply", str(EXAMPLE), "-o", str(out), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["ok"], data["findings"], data["output"], data["model"]) == (True, [], str(out), "torchvision.models.detection:maskrcnn_resnet50_fpn")
    assert [s["action"] for s in data["steps"]] == ["replace", "set_num_classes", "freeze_backbone_layers"]
    model = surgery.rebuild(out)
    assert same_state(model.state_dict(), torch.load(out, weights_only=True)["state_dict"])
    predictor = model.roi_heads.mask_predictor
    assert (predictor.conv5_mask.in_channels, predictor.mask_fcn_logits.out_channels) == (1024, 20)
    assert [n for n, p in model.named_parameters() if not p.requires_grad] == ["backbone.body.conv1.weight", "backbone.body.bn1.weight", "backbone.body.bn1.bias"]
    assert surgery.check(model).findings == []


def test_cli_apply_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[step]]\nset_num_classes = "3"\n')
    out = tmp_path / "out.pt"
    assert main(["apply", str(bad), "-o", str(out)]) == 2
    assert f"surgery: RecipeError: {bad}, step 1 (line 2): set_num_classes must be an integer" in capsys.readouterr().err

    broken = tmp_path / "broken.toml"
    broken.write_text(f'[[step]]\nreplace = "roi_heads.mask_head"\nmodule = "{HEADS}"\nargs = [256, [512], 1]\n')
    assert main(["apply", str(broken), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "error [channel-mismatch] roi_heads.mask_head -> roi_heads.mask_predictor" in err
    assert err.rstrip().endswith("nothing was saved")
    assert main(["apply", str(broken), "-o", str(out), "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert (data["ok"], [f["code"] for f in data["findings"]], data["output"]) == (False, ["channel-mismatch"], None)
    assert not out.exists()
