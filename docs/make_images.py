"""Regenerate the diagrams under ``docs/img/`` used by ``docs/render.md``.

Run it from anywhere (it needs Graphviz's ``dot`` on ``PATH``)::

    python docs/make_images.py
    python docs/make_images.py --format png --out /tmp/img   # e.g. to look at them

Every model is built offline (``weights=None``); edge labels come from one traced eval
forward on the default synthetic 320×320 image. The DOT text is deterministic, so re-running
the script reproduces the same files.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

import surgery

OUT = Path(__file__).resolve().parent / "img"


def build(name: str) -> nn.Module:
    return torchvision.models.get_model(name, weights=None, weights_backbone=None)


def broken(stock: nn.Module) -> nn.Module:
    """A deeper, wider mask head attached at roi_heads.mask_head, the stock predictor kept."""
    model: Any = copy.deepcopy(stock)
    model.roi_heads.mask_head = MaskRCNNHeads(256, (256, 256, 512, 512, 1024), 1)
    return model


def fixed(stock: nn.Module) -> nn.Module:
    """The same head with a predictor rebuilt for its 1024 channels."""
    model: Any = broken(stock)
    model.roi_heads.mask_predictor = MaskRCNNPredictor(1024, 256, 91)
    return model


def orphan(stock: nn.Module) -> nn.Module:
    """The recipe as often copied: the new predictor hung on the model root, never called."""
    model: Any = copy.deepcopy(stock)
    model.mask_predictor = MaskRCNNPredictor(1024, 256, 91)
    return model


def jobs() -> list[tuple[str, nn.Module, dict[str, Any]]]:
    """(file stem, model, render options) of every diagram of docs/render.md."""
    stock = build("maskrcnn_resnet50_fpn")
    return [
        ("maskrcnn", stock, {}),
        ("maskrcnn_broken", broken(stock), {}),
        ("maskrcnn_orphan", orphan(stock), {}),
        ("deeper_mask_head_diff", fixed(stock), {"before": stock}),
        ("maskrcnn_modules_depth2", stock, {"level": "modules", "depth": 2}),
        ("keypointrcnn", build("keypointrcnn_resnet50_fpn"), {}),
        ("retinanet", build("retinanet_resnet50_fpn"), {}),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Regenerate the diagrams of docs/render.md.")
    parser.add_argument("--out", type=Path, default=OUT, help=f"output folder (default: {OUT})")
    parser.add_argument("--format", choices=("svg", "png", "pdf", "dot"), default="svg", help="file format (default: svg)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    args.out.mkdir(parents=True, exist_ok=True)
    for stem, model, options in jobs():
        path = args.out / f"{stem}.{args.format}"
        graph = surgery.render(model, path, **options)
        print(f"{path}: {len(graph.nodes)} nodes, {len(graph.edges)} edges, labels from the {graph.flow} flow")
    return 0


if __name__ == "__main__":
    sys.exit(main())
