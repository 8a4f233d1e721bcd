"""Driving fuzz cases through the fork server and keeping what failed, for tests and the bench.

The driver (pytest, or bench/fuzz_bundles.py) never loads llama.cpp or reads a damaged file: it
writes each case's files, hands the case to `tests.fuzz.worker`, and reads back one outcome per
entry point. A
failing case's folder (mutated files, each step's stdout/stderr/result, case.json with the
seed and index that regenerate it) is copied under `failures/`; passing ones are deleted.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tests.fuzz.cases import build_case
from tests.fuzz.draw import RandomDraw
from tests.fuzz.outcomes import CaseResult, Outcome, Tally
from tests.fuzz.seeds import ROOT, Seeds


class HarnessError(RuntimeError):
    """The fuzzer itself failed (not the code under test)."""


class Worker:
    """One `tests.fuzz.worker` process; restarted if it ever dies or stops answering."""

    def __init__(self, log: Path, python: str = sys.executable) -> None:
        self.log_path, self.python = log, python
        self.proc: subprocess.Popen[str] | None = None
        self._log: IO[bytes] | None = None

    def start(self, timeout: float = 180) -> None:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [self.python, "-m", "tests.fuzz.worker"], cwd=ROOT, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self._log, text=True, bufsize=1,
            start_new_session=True,
        )
        hello = self._read(timeout)
        if not hello.get("ready"):
            raise HarnessError(f"fuzz worker did not start (see {self.log_path})")

    def _read(self, timeout: float) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            raise HarnessError(f"fuzz worker gave no answer in {timeout:.0f}s "
                               f"(exit code {self.proc.poll()}; see {self.log_path})")
        return json.loads(line)

    def run(self, spec: dict[str, Any]) -> dict[str, Any]:
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(spec) + "\n")
        self.proc.stdin.flush()
        budget = float(spec.get("timeout", 30)) * (len(spec["steps"]) + 1) + 30
        try:
            return self._read(budget)
        except HarnessError:
            self.stop()
            raise

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None


@dataclass
class Campaign:
    """Cases `start`..`start+n-1` of each kind for one seed; see `run`."""

    seeds: Seeds
    workdir: Path
    seed: int = 0
    timeout: float = 30.0
    memory: int = 4 << 30
    real_cli: bool = False
    quick: bool = False  # skip `edgemoe run` where the API step loaded and generated fine
    keep: Path | None = None  # where failing cases are copied (default: workdir/failures)
    tally: Tally = field(default_factory=Tally)
    failures: list[CaseResult] = field(default_factory=list)

    def run(self, kind: str, indices: Iterable[int], worker: Worker,
            report: Callable[[CaseResult], None] | None = None) -> list[CaseResult]:
        results = []
        for index in indices:
            r = self.run_one(kind, index, worker)
            self.tally.add(r)
            results.append(r)
            if report:
                report(r)
        return results

    def run_one(self, kind: str, index: int, worker: Worker) -> CaseResult:
        case_dir = self.workdir / f"{kind}-{index}"
        if case_dir.exists():
            shutil.rmtree(case_dir)
        try:
            case = build_case(kind, index, RandomDraw.for_case(self.seed, kind, index),
                              self.seeds, case_dir)
        except Exception as e:  # a mutator bug must not end a long campaign silently
            shutil.rmtree(case_dir, ignore_errors=True)
            detail = f"harness: building the case failed: {type(e).__name__}: {e}"
            result = CaseResult(kind, index, detail, {"harness": (Outcome.CRASH, detail[:300])},
                                ["harness error"])
            self.failures.append(result)
            return result
        spec = {**case.spec, "timeout": self.timeout, "memory": self.memory,
                "real_cli": self.real_cli, "quick": self.quick}
        started = time.monotonic()
        try:
            answer = worker.run(spec)
        except HarnessError as e:
            answer = {"harness_error": str(e)}
        if "harness_error" in answer:
            steps = {"harness": (Outcome.CRASH, answer["harness_error"][:300])}
            notes = ["harness error"]
        else:
            steps = {k: (Outcome(v[0]), v[1]) for k, v in answer["steps"].items()}
            notes = answer["notes"]
        result = CaseResult(kind, index, case.description, steps, notes)
        meta = {"kind": kind, "index": index, "seed": self.seed, "description": case.description,
                "spec": spec, "outcome": result.outcome.value, "steps": answer.get("steps"),
                "notes": notes, "seconds": round(time.monotonic() - started, 3),
                "step_seconds": answer.get("seconds"),
                "reproduce": f"{sys.executable} bench/fuzz_bundles.py --seed {self.seed} "
                             f"--kinds {kind} --only {index}"}
        (case_dir / "case.json").write_text(json.dumps(meta, indent=1, default=str))
        if result.outcome.bad:
            keep = (self.keep or self.workdir / "failures") / f"{kind}-{index}-{result.outcome}"
            if keep.exists():
                shutil.rmtree(keep)
            shutil.copytree(case_dir, keep, symlinks=True, copy_function=_copy_regular)
            result.saved = str(keep)
            self.failures.append(result)
        shutil.rmtree(case_dir, ignore_errors=True)
        return result


def _copy_regular(src: str, dst: str) -> None:
    """Copy a file, but only a regular one: a FIFO case would block the copy forever."""
    if stat.S_ISREG(os.lstat(src).st_mode):
        shutil.copy2(src, dst)
    else:
        Path(dst + ".not-a-regular-file").write_text("the case had a special file here\n")


def failure_report(results: Iterable[CaseResult], limit: int = 20) -> str:
    """The failing cases, one block each: what was mutated, which entry point broke, where."""
    lines = []
    for r in list(results)[:limit]:
        lines.append(f"- {r.kind} #{r.index}: {r.outcome.value}: {r.description[:200]}")
        for step, (outcome, detail) in r.failing_steps().items():
            lines.append(f"    {step}: {outcome.value}: {detail[:300]}")
        if r.saved:
            lines.append(f"    saved: {r.saved}")
    return "\n".join(lines)
