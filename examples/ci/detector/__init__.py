"""A Mask R-CNN whose mask branch uses :class:`~detector.heads.WideMaskHead`."""

from __future__ import annotations

from detector.heads import WideMaskHead
from detector.model import build_model, build_stock_model

__all__ = ["WideMaskHead", "build_model", "build_stock_model"]
