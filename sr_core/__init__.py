"""sr_core: diffusion super-resolution methods behind one facade.

    from sr_core import upscale, Settings
    result = upscale("photo.png", "bicubic", Settings(scale=4))
    result.image.save("photo_x4.png")

Nothing here imports gradio; the app (`app.py`) is a thin layer over `upscale` and the registry.
"""

from .api import check_settings, resolve_device, run_method, upscale
from .registry import Registry, default_registry
from .types import (Availability, InputError, MethodInfo, Result, RunContext, Settings, SRError, SRMethod, StepsSpec,
                    WeightSpec, WeightsUnavailable)

__all__ = [
    "upscale", "run_method", "check_settings", "resolve_device", "Registry", "default_registry", "Availability",
    "InputError", "MethodInfo", "Result", "RunContext", "Settings", "SRError", "SRMethod", "StepsSpec",
    "WeightSpec", "WeightsUnavailable",
]
__version__ = "0.1.0"
