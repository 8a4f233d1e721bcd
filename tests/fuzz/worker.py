"""The fork server that runs fuzz cases: `python -m tests.fuzz.worker` (cwd: the repo root).

Importing edgemoe, llama.cpp and typer costs a second or two, so this process imports them once
and forks a child per step; the child runs one real entry point (open_bundle + load + generate,
a CLI command, a loader) on the case's files with its stdout/stderr in files, under a memory
limit and without core dumps. The parent waits with a time limit, so a crash is a signal
observed here, a hang is a kill, and the next case starts from a clean image either way.

Protocol: one JSON case spec per stdin line (`tests.fuzz.cases.Case.spec` plus the campaign's
limits, see `tests.fuzz.runner`), one JSON result line per case on stdout:
{"steps": {name: [outcome, detail]}, "notes": [...], "seconds": {name: s}}.
"""

from __future__ import annotations

import json
import os
import re
import resource
import select
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.fuzz.outcomes import Outcome, classify_cli, one_line_problem, signal_name
from tests.fuzz.sync import step_sync

ROOT = Path(__file__).resolve().parents[2]
TAIL = 20_000  # bytes of a child's stderr kept for classification
PROMPT = "Hello"


# --- steps: each runs inside a forked child and returns a JSON-able result -----------------
class _Stage(dict):
    """How far a step got, also written to a file so a killed or crashed child still says."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self["reached"] = "start"

    def __setitem__(self, key: str, value: str) -> None:
        super().__setitem__(key, value)
        self.path.write_text(value)


def _guarded(fn: Callable[[dict, dict], Any], case: dict, stage_file: Path) -> dict:
    """EdgemoeError is the promised clean error; anything else escaping is a traceback."""
    from contract.errors import EdgemoeError

    stage = _Stage(stage_file)
    try:
        extra = fn(case, stage) or {}
        return {"status": "ok", "reached": stage["reached"], **extra}
    except EdgemoeError as e:
        return {"status": "clean", "reached": stage["reached"], "type": type(e).__name__,
                "message": str(e)[:4000]}
    except BaseException as e:  # noqa: B036 - classifying everything is the point
        frames = [f.filename for f in traceback.extract_tb(e.__traceback__)]
        return {"status": "traceback", "reached": stage["reached"], "type": type(e).__name__,
                "message": str(e)[:2000], "origin": origin(frames),
                "traceback": traceback.format_exc()[-TAIL:]}


def origin(filenames: list[str]) -> str:
    """The innermost frame in edgemoe's own code: whose file a traceback is a bug in."""
    ours = [
        f for f in filenames
        if f.startswith(str(ROOT)) and "/.venv/" not in f and "/tests/fuzz/" not in f
    ]
    return str(Path(ours[-1]).relative_to(ROOT)) if ours else "?"


_FRAME = re.compile(r'^\s*File "([^"]+)", line \d+', re.MULTILINE)


def step_api(case: dict, stage: dict) -> dict:
    import runtime
    from runtime.bundles.open import open_bundle

    bundle = Path(case["dir"]) / "bundle"
    open_bundle(bundle)
    stage["reached"] = "open"
    with runtime.load(bundle, budget=case.get("budget", "25%")) as model:
        stage["reached"] = "load"
        r = model.generate(PROMPT, max_tokens=2, temperature=0.0)
        stage["reached"] = "generate"
        "".join(model.stream(PROMPT, max_tokens=2))  # the CLI's path, on the same load
        stage["reached"] = "stream"
        # The chat path renders the manifest's own chat template (a bundle-supplied program).
        model.chat([{"role": "user", "content": PROMPT}], max_tokens=2)
        stage["reached"] = "chat"
    return {"tokens": len(r.tokens)}


def step_profile(case: dict, stage: dict) -> None:
    from contract.device_profile import DeviceProfile
    from device_profiles import load_profile_file, render_profile

    profile = load_profile_file(Path(case["dir"]) / case["input"])
    stage["reached"] = "load"
    render_profile(profile)
    DeviceProfile.from_dict(profile.to_dict())  # the manifest's snapshot must read back
    stage["reached"] = "use"


def step_trace(case: dict, stage: dict) -> None:
    from runtime.experts.routing_trace import RoutingTrace
    from runtime.tracing import replay_budgets

    trace = RoutingTrace.load(Path(case["dir"]) / case["input"])
    stage["reached"] = "load"
    trace.summary()
    trace.usage_frequencies()
    for layer in trace.moe_layers[:4]:
        trace.top_experts(layer, 2)
    trace.coverage({layer: (0,) for layer in trace.moe_layers[:4]})
    stage["reached"] = "stats"
    if case.get("replay_bundle"):  # what `edgemoe trace` does with a trace of this bundle
        replay_budgets(case["replay_bundle"], trace, ["25%"], ["lru", "lfu"])
        stage["reached"] = "replay"


def step_usage(case: dict, stage: dict) -> None:
    from packager.usage import UsageProfile

    profile = UsageProfile.load(Path(case["dir"]) / case["input"])
    stage["reached"] = "load"
    profile.frequencies()
    profile.mean_weight()
    profile.weight_share()
    profile.to_planner_usage()
    stage["reached"] = "views"


def step_usage_planner(case: dict, stage: dict) -> None:
    """What `edgemoe pack/plan --usage FILE` reads: another reader of the same file."""
    from packager.planning import load_usage

    load_usage(Path(case["dir"]) / case["input"])
    stage["reached"] = "load"


API_STEPS: dict[str, Callable[[dict, dict], Any]] = {
    "api": step_api, "profile": step_profile, "trace": step_trace, "usage": step_usage,
    "usage:planner": step_usage_planner, "sync": step_sync,
}
CLI_ARGS: dict[str, list[str]] = {
    "cli:inspect": ["inspect", "{bundle}"],
    "cli:verify": ["verify", "{bundle}"],
    "cli:run": ["run", "{bundle}", "--prompt", PROMPT, "--max-tokens", "2", "--budget", "25%"],
    "cli:profiles-show": ["profiles", "show", "{input}"],
}


def cli_argv(step: str, case: dict) -> list[str]:
    where = {"bundle": str(Path(case["dir"]) / "bundle"),
             "input": str(Path(case["dir"]) / case.get("input", ""))}
    return [a.format(**where) for a in CLI_ARGS[step]]


def _run_cli_in_child(argv: list[str]) -> int:
    """`python -m apps.cli.main ARGV` without a new interpreter: same code, same exit rules."""
    from apps.cli.main import main

    sys.argv = ["edgemoe", *argv]
    try:
        main()
        return 0
    except SystemExit as e:
        code = e.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        print(code, file=sys.stderr)
        return 1
    except BaseException:  # noqa: B036 - what the interpreter would do with an escape
        traceback.print_exc()
        return 1


# --- the parent side -------------------------------------------------------------------------
def _limit_child(memory_bytes: int) -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if memory_bytes:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 30, 1 << 30))
    sys.setrecursionlimit(1000)  # the default; a test runner may have raised it


def _fork(body: Callable[[], int], out: Path, err: Path, memory: int) -> int:
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    code = 70
    try:
        os.setpgid(0, 0)
        _limit_child(memory)
        for fd, path in ((1, out), (2, err)):
            f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(f, fd)
            os.close(f)
        code = body()
    except BaseException:  # noqa: B036
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _wait(pid: int, timeout: float) -> tuple[int | None, bool]:
    """(return code as subprocess reports it, timed out?)."""
    fd = os.pidfd_open(pid)
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
    finally:
        os.close(fd)
    if not ready:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(pid, 0)
        return None, True
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), False


def _tail(path: Path) -> str:
    """The first 4 KB and last 20 KB of a child's output: a RecursionError's traceback is
    longer than any tail, and its first line is what says "traceback"."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(min(size, 4096))
            f.seek(max(len(head), size - TAIL))
            return (head + b"\n" + f.read()).decode("utf-8", "replace")
    except OSError:
        return ""


def run_step(step: str, case: dict, notes: list[str]) -> tuple[Outcome, str]:
    d = Path(case["dir"])
    out, err, res = d / f"{step}.stdout", d / f"{step}.stderr", d / f"{step}.result.json"
    stage_file = d / f"{step}.stage"
    timeout, memory = float(case.get("timeout", 30)), int(case.get("memory", 4 << 30))
    if step.startswith("cli:") and case.get("real_cli"):
        return _real_cli(step, case, out, err, timeout, notes)
    if step.startswith("cli:"):
        argv = cli_argv(step, case)
        pid = _fork(lambda: _run_cli_in_child(argv), out, err, memory)
        rc, timed_out = _wait(pid, timeout)
        stderr = _tail(err)
        return _cli_outcome(step, rc, stderr, timed_out, notes)

    def body() -> int:
        result = _guarded(API_STEPS[step], case, stage_file)
        res.write_text(json.dumps(result))
        return 0

    pid = _fork(body, out, err, memory)
    rc, timed_out = _wait(pid, timeout)
    reached = stage_file.read_text() if stage_file.is_file() else "start"
    if timed_out:
        return Outcome.HANG, f"killed after the time limit (after {reached})"
    if rc is not None and rc < 0:
        return Outcome.CRASH, f"{signal_name(rc)} (after {reached})"
    if not res.is_file():
        return Outcome.CRASH, (f"exit code {rc} before a result was written (after {reached}): "
                               f"{_tail(err)[-300:]}")
    result = json.loads(res.read_text())
    if result["status"] == "ok":
        return Outcome.OK, result.get("reached", "")
    message = result.get("message", "")
    if result["status"] == "clean":
        if "\n" in message.strip():
            notes.append(f"{step}: multi-line error")
        if not message.strip():
            notes.append(f"{step}: empty error message")
        return Outcome.CLEAN, f"{result['type']} at {result['reached']}: {message[:200]}"
    return Outcome.TRACEBACK, (f"{result['type']} at {result['reached']} [{result['origin']}]: "
                               f"{message[:300]}")


def _cli_notes(step: str, outcome: Outcome, stderr: str, notes: list[str]) -> None:
    if outcome is Outcome.CLEAN and step != "cli:verify":
        problem = one_line_problem(stderr)
        if problem:
            notes.append(f"{step}: error output is not one 'error:' line ({problem})")
    if outcome is Outcome.OK and stderr.strip():  # warnings on a run that "succeeded"
        first = stderr.strip().splitlines()[0].split(": ", 1)[-1]  # without the file name
        notes.append(f"{step}: exit 0 with stderr output: {re.sub(r'[0-9]+', 'N', first)[:80]}")


def _real_cli(step: str, case: dict, out: Path, err: Path, timeout: float,
              notes: list[str]) -> tuple[Outcome, str]:
    """The CLI as a user runs it: a fresh interpreter, `python -m apps.cli.main`."""
    argv = [sys.executable, "-m", "apps.cli.main", *cli_argv(step, case)]
    memory = int(case.get("memory", 4 << 30))
    with open(out, "wb") as fo, open(err, "wb") as fe:
        p = subprocess.Popen(argv, stdout=fo, stderr=fe, cwd=ROOT, start_new_session=True,
                             preexec_fn=lambda: _limit_child(memory))
        try:
            rc, timed_out = p.wait(timeout), False
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            rc, timed_out = None, True
    return _cli_outcome(step, rc, _tail(err), timed_out, notes)


def _cli_outcome(step: str, rc: int | None, stderr: str, timed_out: bool,
                 notes: list[str]) -> tuple[Outcome, str]:
    outcome, detail = classify_cli(rc, stderr, timed_out=timed_out)
    _cli_notes(step, outcome, stderr, notes)
    if outcome is Outcome.TRACEBACK:
        detail = f"{detail} [{origin(_FRAME.findall(stderr))}]"
    return outcome, detail


def run_case(case: dict) -> dict:
    steps: dict[str, list[str]] = {}
    notes: list[str] = []
    seconds: dict[str, float] = {}
    for step in case["steps"]:
        started = time.monotonic()
        if step == "sync":  # preparation: its outcome is not the case's
            run_step(step, case, [])
        elif step == "cli:run" and case.get("quick") and steps.get("api", [""])[0] == "ok":
            continue  # quick mode: the API already loaded and streamed from this bundle
        else:
            outcome, detail = run_step(step, case, notes)
            steps[step] = [outcome.value, detail]
        seconds[step] = round(time.monotonic() - started, 3)
    return {"steps": steps, "notes": notes, "seconds": seconds}


def _preload() -> None:
    """Everything the steps import, once, so each fork starts warm."""
    import apps.cli.main  # noqa: F401
    import device_profiles  # noqa: F401
    import packager.api  # noqa: F401
    import packager.planning  # noqa: F401
    import packager.usage  # noqa: F401
    import runtime.api  # noqa: F401
    import runtime.backends.llama_cpp.backend  # noqa: F401
    import runtime.tracing  # noqa: F401


def main() -> None:
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything else printing to stdout must not corrupt the protocol
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("GGML_NO_BACKTRACE", "1")  # ggml would attach gdb on every abort
    _preload()
    proto.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        if not line.strip():
            continue
        case = json.loads(line)
        try:
            result = run_case(case)
        except Exception as e:  # a harness bug: report it, keep serving
            result = {"harness_error": f"{type(e).__name__}: {e}",
                      "traceback": traceback.format_exc()}
        proto.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
