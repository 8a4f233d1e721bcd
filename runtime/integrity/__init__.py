"""Weights checked as they are read: the manifest's xxh3 checksums verified per expert on its
first read (`reads.py`) and per dense tensor in the background after load (`background.py`),
storage faults while paging in turned into errors, and what is known recorded per model
(`state.py`)."""

from __future__ import annotations

import logging

from contract.checksums import known
from contract.manifest import Build, Manifest
from runtime.integrity.background import BackgroundCheck, ranges_to_check
from runtime.integrity.reads import ExpertReader, Populate
from runtime.integrity.state import IntegrityState

__all__ = ["BackgroundCheck", "ExpertReader", "IntegrityState", "Populate", "integrity_for",
           "ranges_to_check"]

log = logging.getLogger("edgemoe.integrity")


def integrity_for(manifest: Manifest, build: Build, enabled: bool) -> IntegrityState:
    """The books for a model of `build`, saying how its weights will be checked."""
    if not enabled:
        state = IntegrityState(False, "off (check_reads=False): sampled blocks at open only")
        state.dense = "off"
        return state
    if known(manifest.checksums.get(build.expert_file)):
        return IntegrityState(True, "xxh3-64: each expert on first read, dense in the background")
    log.warning("%s has no weight checksums (packed before they were recorded): only the "
                "sampled blocks were checked at open; pack it again to verify every read",
                build.expert_file)
    return IntegrityState(False, "none in this bundle (packed before they were recorded): "
                                 "sampled blocks at open only")
