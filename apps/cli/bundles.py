"""`edgemoe pull | push`: install, update and roll back a bundle on a device; publish one."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from apps.cli.errors import friendly


@friendly
def pull(
    source: Annotated[
        str | None,
        typer.Argument(help="Hub repo id (org/name) or bundle folder; omit with --rollback.",
                       show_default=False),
    ] = None,
    dest: Annotated[
        Path | None,
        typer.Argument(help="Install path: a symlink into DEST.versions/ that edgemoe manages.",
                       show_default=False),
    ] = None,
    rollback: Annotated[
        bool, typer.Option("--rollback", help="Point DEST back at the version before it.")
    ] = False,
    revision: Annotated[str | None, typer.Option(help="Hub branch, tag or commit.")] = None,
    keep: Annotated[
        int | None, typer.Option(help="Versions kept after a pull, at least 2 (default 3).")
    ] = None,
) -> None:
    """Install or update a bundle: verified in full, then swapped in atomically.

    `edgemoe pull org/name /opt/kiosk/model` (HF_HUB_OFFLINE=1: from the local Hub cache) or
    `edgemoe pull ./bundle /opt/kiosk/model`; `edgemoe pull --rollback /opt/kiosk/model`.
    """
    from runtime.bundles import store

    if rollback:
        if source is None or dest is not None:
            raise typer.BadParameter("--rollback takes DEST only: edgemoe pull --rollback DEST")
        target = Path(source)
    elif source is None or dest is None:
        raise typer.BadParameter("expected SOURCE and DEST: edgemoe pull SOURCE DEST")
    else:
        target = dest
    try:
        if rollback:
            done = store.rollback(target)
        else:
            done = store.pull(
                source, target, revision=revision, keep=keep or store.KEEP
            )
    except KeyboardInterrupt:
        now = store.current(target)
        raise store.StoreError(
            f"interrupted; {target} points at {now.id if now else 'nothing'}"
        ) from None
    if not done.changed:
        typer.echo(f"{target}: already at {done.version.id}")
        return
    was = done.previous.id if done.previous else "nothing"
    typer.echo(f"{target} -> {done.version.id} (was {was})")
    if done.pruned:
        typer.echo(f"removed old versions: {', '.join(done.pruned)}")


@friendly
def push(
    bundle: Path,
    repo: Annotated[str, typer.Argument(help="Hub repo id (org/name); created if missing.")],
    revision: Annotated[str | None, typer.Option(help="Branch to commit to.")] = None,
    private: Annotated[bool, typer.Option(help="Create the repo private.")] = False,
    message: Annotated[str | None, typer.Option(help="Commit message.")] = None,
) -> None:
    """Verify a bundle, then upload it to a Hugging Face Hub repo as one commit (token:
    HF_TOKEN or `hf auth login`)."""
    from packager.push import push as do_push

    done = do_push(bundle, repo, revision=revision, private=private, message=message)
    typer.echo(f"pushed {len(done.files)} files to {done.repo_id} {done.commit_url}".rstrip())
