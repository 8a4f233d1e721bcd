"""Fuzz fixtures: the seeds (from the session's tiny bundle) and one fork-server worker.

Case counts and the seed can be raised without editing tests: EDGEMOE_FUZZ_SCALE multiplies
every kind's count, EDGEMOE_FUZZ_SEED picks another seed (default 0, so CI is reproducible).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fuzz.known import split_known
from tests.fuzz.outcomes import render_table
from tests.fuzz.runner import Campaign, Worker, failure_report
from tests.fuzz.seeds import Seeds, load_seeds

SEED = int(os.environ.get("EDGEMOE_FUZZ_SEED", "0"))
SCALE = float(os.environ.get("EDGEMOE_FUZZ_SCALE", "1"))


class FuzzSession:
    """Runs N cases of a kind and turns the outcome into pass / xfail (known) / fail."""

    def __init__(self, seeds: Seeds, worker: Worker, workdir: Path) -> None:
        self.seeds, self.worker, self.workdir = seeds, worker, workdir

    def campaign(self, kind: str, cases: int, **options) -> Campaign:
        workdir = self.workdir / kind
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)
        c = Campaign(self.seeds, workdir, seed=SEED, **{"quick": True, "timeout": 30, **options})
        c.run(kind, range(max(1, int(cases * SCALE))), self.worker)
        return c

    def check(self, kind: str, cases: int, **options) -> Campaign:
        """No crash, traceback, hang or exit-0-after-error; known issues of others -> xfail."""
        c = self.campaign(kind, cases, **options)
        steps = {s: n for (k, s), n in c.tally.by_step.items() if k == kind}
        table = render_table(c.tally.by_kind) + "\n\n" + render_table(steps, "step")
        notes = c.tally.notes.get(kind)
        print(f"\nfuzz {kind} (seed {SEED}):\n{table}\nnotes: {dict(notes or {})}")
        unknown, known = split_known(c.failures)
        assert not unknown, f"{kind}: {len(unknown)} failing case(s)\n{table}\n" + failure_report(
            unknown
        )
        if known:
            pytest.xfail("known failures in others' code: " + "; ".join(
                f"{k.key} ({k.owner})" for k in sorted(known, key=lambda k: k.key)))
        return c


@pytest.fixture(scope="session")
def fuzz_worker(tmp_path_factory) -> Iterator[Worker]:
    worker = Worker(tmp_path_factory.mktemp("fuzz-log") / "worker.log")
    worker.start()
    yield worker
    worker.stop()


@pytest.fixture(scope="session")
def fuzz(tiny_bundle: Path, fuzz_worker: Worker, tmp_path_factory) -> FuzzSession:
    return FuzzSession(load_seeds(tiny_bundle), fuzz_worker, tmp_path_factory.mktemp("fuzz"))
