"""edgemoe packager: Hugging Face MoE checkpoint -> device bundle.

Importing this package is cheap; heavy dependencies (torch, transformers) load only in the
modules that need them. What the runtime reads (the manifest, hashing, quant types) lives in
`contract`, which the packager writes to and never the other way round.
"""

__version__ = "0.1.0"
