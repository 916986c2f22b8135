"""Fallback anatomy for any ``nn.Module``: its top-level children are its components."""

from __future__ import annotations

from torch import nn

from surgery.anatomy._base import Anatomy, AttrUpdate, ClassLayer, Slot

__all__ = ["GenericAnatomy"]


class GenericAnatomy(Anatomy):
    """Lists top-level children; checks nothing family-specific."""

    name = "generic"
    knows_model = False

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return True

    def declared_slots(self, model: nn.Module) -> list[Slot]:
        return [
            Slot(name, f"{type(child).__name__} submodule", "a module with the same inputs and outputs")
            for name, child in model.named_children()
        ]

    def class_layers(self, model: nn.Module) -> tuple[list[ClassLayer], list[AttrUpdate]]:
        from surgery.anatomy import REGISTRY  # the registry imports this module

        known = ", ".join(a.name for a in REGISTRY)
        raise ValueError(
            f"set_num_classes() knows the class-dependent layers of {known}; {type(model).__name__} is none of these. "
            "Replace its classifier yourself with surgery.replace()"
        )
