"""edgemoe packager: Hugging Face MoE checkpoint -> device bundle.

Importing this package is cheap; heavy dependencies (torch, transformers) load only in the
modules that need them, so the runtime can import `packager.manifest` on a device.
"""

__version__ = "0.1.0"
