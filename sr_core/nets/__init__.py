"""Networks written for this project with the parameter names of the official checkpoints they mirror
(e.g. `rrdbnet.RRDBNet` = the `rrdb.*` part of LeiaLi/SRDiff `models/diffsr_modules.py`), so official
weights and our bundled "mini" weights run through the same code."""

from .rrdbnet import RRDB, RRDBNet, ResidualDenseBlock

__all__ = ["RRDBNet", "RRDB", "ResidualDenseBlock"]
