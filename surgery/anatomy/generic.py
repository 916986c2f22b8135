"""Fallback anatomy for any ``nn.Module``: its top-level children are its components."""

from __future__ import annotations

from torch import nn

from surgery.anatomy._base import Anatomy, Slot

__all__ = ["GenericAnatomy"]


class GenericAnatomy(Anatomy):
    """Lists top-level children; checks nothing family-specific."""

    name = "generic"

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return True

    def declared_slots(self, model: nn.Module) -> list[Slot]:
        return [
            Slot(name, f"{type(child).__name__} submodule", "a module with the same inputs and outputs")
            for name, child in model.named_children()
        ]
