"""Networks written for this project with the parameter names of the official checkpoints they mirror
(e.g. `resshift_unet.ResShiftUNet` and `vqgan.VQModel` load zsyOAOA/ResShift's released files strictly),
so official weights and our bundled "mini" weights run through the same code.  Import the submodules
directly; nothing is imported here so that one network never pays for another's imports."""
