"""Publishing a finished bundle to a Hugging Face Hub repo, verified before a byte is sent.

The upload is one Hub commit (`HfApi.upload_folder`) of exactly the files the manifest lists
plus manifest.json, so a device pulling that commit gets a complete bundle or nothing. Files a
previous push left in the repo are not deleted: `edgemoe pull` copies only what the manifest
lists, so they are never installed, and deleting would also take the repo's `.gitattributes`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from contract.manifest import MANIFEST_NAME, read_manifest
from contract.verify import verify_bundle
from packager.errors import PackError
from runtime.bundles.open import open_bundle
from runtime.bundles.store import hub_errors


class PushError(PackError):
    """A bundle that may not be pushed (it fails verification) or a Hub that refused it."""


@dataclass(frozen=True)
class PushResult:
    repo_id: str
    files: tuple[str, ...]
    commit_url: str


def check_pushable(bundle: Path) -> tuple[str, ...]:
    """Every file's sha256 and each build's open-time checks, as `pull` will run them on the
    device; returns the files to upload. A corrupt bundle never leaves the build machine."""
    bundle = Path(bundle)
    report = verify_bundle(bundle)
    if not report.ok:
        raise PushError(f"{bundle}: not pushed, verification failed: {'; '.join(report.problems)}")
    manifest = read_manifest(bundle)
    for fmt in manifest.formats:
        open_bundle(bundle, fmt=fmt)
    return (MANIFEST_NAME, *sorted(manifest.files))


def push(
    bundle: Path,
    repo_id: str,
    *,
    revision: str | None = None,
    private: bool = False,
    token: str | None = None,
    endpoint: str | None = None,
    message: str | None = None,
) -> PushResult:
    """Verify `bundle`, then upload it to `repo_id` (created if missing) as one commit.

    `endpoint` and `token` default to huggingface_hub's own settings (HF_ENDPOINT, HF_TOKEN or
    the saved login)."""
    files = check_pushable(Path(bundle))
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint, token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=Path(bundle),
            revision=revision,
            allow_patterns=list(files),
            commit_message=message or f"edgemoe bundle {Path(bundle).name}",
        )
    except hub_errors() as e:
        text = str(e).strip()
        reason = text.splitlines()[0][:300] if text else type(e).__name__
        raise PushError(f"{repo_id}: upload failed: {reason}") from None
    return PushResult(repo_id, files, str(getattr(info, "commit_url", "")))
