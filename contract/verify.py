"""Verifying a bundle against its manifest: every listed file present, the right size and hash.

Two depths: the full check re-hashes every file with sha256 (what `edgemoe pull` and `push`
trust); `fast=True` re-hashes the weight files by the manifest's xxh3 checksums, one per dense
tensor and expert slice (`contract/checksums.py`), naming the tensor that differs, and the
other (small) files by sha256. A bundle packed before checksums existed falls back to sha256.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from contract.checksums import check_file, known
from contract.errors import ManifestError
from contract.files import sha256_file
from contract.manifest import read_manifest


@dataclass
class VerifyReport:
    bundle: Path
    checked: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_bundle(bundle: Path, fast: bool = False) -> VerifyReport:
    """Re-hash every file the manifest lists; any mismatch or missing file is a problem."""
    report = VerifyReport(Path(bundle))
    try:
        manifest = read_manifest(bundle)
    except ManifestError as e:
        report.problems.append(str(e))
        return report
    if fast and not manifest.checksums:
        report.notes.append("this bundle has no checksums (packed before they were recorded): "
                            "every file is checked by sha256")
    for name, entry in sorted(manifest.files.items()):
        path = Path(bundle) / name
        if not path.is_file():
            report.problems.append(f"{name}: missing")
            continue
        size = path.stat().st_size
        if size != entry.bytes:
            report.problems.append(
                f"{name}: {size} bytes, manifest says {entry.bytes} (truncated?)"
            )
            continue
        if fast and known(manifest.checksums.get(name)):
            bad = check_file(path, manifest)
            report.problems.extend(bad)
            if not bad:
                report.checked.append(name)
            continue
        if sha256_file(path) != entry.sha256:
            report.problems.append(f"{name}: sha256 mismatch (file changed or corrupt)")
            continue
        report.checked.append(name)
    return report
