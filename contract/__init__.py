"""The bundle contract: what the packager writes and the runtime reads, owned by neither.

Manifest schema and validation, file hashing and verification, the quant-type vocabulary, the
device-profile schema and the root error. Imports nothing from `packager`, `runtime` or `apps`,
and nothing heavy (no torch, transformers, safetensors or llama.cpp), so a device can load it.
"""
