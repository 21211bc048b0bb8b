"""Training kit for the project's bundled "mini" models: degradations (MATLAB bicubic, Real-ESRGAN
second-order, a mix), seeded training packs, an accelerate-based trainer (EMA, clipping, checkpoints,
resume, CSV logs, Set5 validation), recipes as code and export to `assets/weights/<id>/` with a model
card.  Run `python -m sr_core.training --help`.  Heavy imports (accelerate) happen inside functions,
so importing this package is cheap."""

from .degradations import DegradationMix, RealESRGANDegrader, RealESRGANParams, bicubic_lr
from .recipes import RECIPES, Recipe, RRDBRecipe, apply_overrides, get_recipe

__all__ = [
    "DegradationMix", "RealESRGANDegrader", "RealESRGANParams", "bicubic_lr", "RECIPES", "Recipe", "RRDBRecipe",
    "apply_overrides", "get_recipe",
]
