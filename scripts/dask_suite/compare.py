"""Run Dask's own test files on Dask's schedulers and on fanflow's; fail if fanflow loses a test.

The files come from the installed ``dask`` package (``--pyargs``). fanflow's side
routes every scheduler to :func:`fanflow.dask.get` with the plugin
``fanflow_schedulers.py`` beside this script. Dask's side is read from the
baseline beside it (``dask-<version>.json``, the outcomes on Dask's own
schedulers) when it matches the installed Dask, and run otherwise, which doubles
the time. A test that passes on Dask and fails on fanflow, or that Dask ran and
fanflow did not, fails the comparison (exit status 1).

    python scripts/dask_suite/compare.py                 # the comparison CI runs
    python scripts/dask_suite/compare.py --write-baseline  # run Dask's side, save it for this Dask version
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent

MODULES = (
    "dask.tests.test_delayed",
    "dask.array.tests.test_reductions",
    "dask.array.tests.test_array_core",
    "dask.array.tests.test_linalg",
    "dask.bag.tests.test_bag",
)
"""The Dask test files CI compares (the issue's five)."""

KNOWN_DIFFERENCES = {
    "dask/bag/tests/test_bag.py::test_temporary_directory": (
        "asserts partd files that objects living in Dask's process-pool workers leave behind; on fanflow's "
        "in-process workers the run's values are released when it ends, and their files with them"
    ),
}
"""Tests that pass on Dask's schedulers and fail on fanflow's for a reason that is not a fanflow bug."""

DESELECT = (
    # Runs on dask.distributed's own scheduler (a Client), not on the schedulers compared here, and
    # fails on a loaded machine when its 30 s timeout is hit.
    "dask/tests/test_delayed.py::test_p2p_as_delayed",
)
"""Test ids left out of both sides: they exercise nothing of the schedulers compared."""


def run_side(schedulers: str, modules: tuple[str, ...], workdir: Path) -> dict[str, str]:
    """Each test's outcome with ``schedulers`` ("dask" or "fanflow")."""
    import dask

    site = Path(dask.__file__).resolve().parent.parent
    outcomes = workdir / f"{schedulers}.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("FANFLOW_METADATA", "none")  # correctness is compared here; history has its own tests
    command = [
        sys.executable, "-m", "pytest", "-c", str(HERE / "pytest.ini"), "--rootdir", str(site),
        "-p", "fanflow_schedulers", f"--schedulers={schedulers}", f"--outcomes={outcomes}", "-q",
        "--no-header", "-p", "no:randomly", "--durations=10", *(f"--deselect={t}" for t in DESELECT),
        "--pyargs", *modules,
    ]  # fmt: skip
    print(f"== Dask's tests on {schedulers}'s schedulers: {' '.join(modules)}", flush=True)
    began = time.monotonic()
    done = subprocess.run(command, cwd=workdir, env=env, check=False)
    print(f"== {schedulers}'s schedulers: {time.monotonic() - began:.0f} s", flush=True)
    if not outcomes.exists():
        raise SystemExit(f"pytest on {schedulers}'s schedulers wrote no outcomes (exit {done.returncode})")
    return dict(json.loads(outcomes.read_text()))


def _path(module: str) -> str:
    """The test file of ``module``, as test ids name it (``dask/tests/test_delayed.py``)."""
    return module.replace(".", "/") + ".py"


def baseline_path() -> Path:
    import dask

    return HERE / f"dask-{dask.__version__}.json"


def compare(dask_side: dict[str, str], fanflow_side: dict[str, str]) -> list[str]:
    """Tests that pass on Dask's schedulers and fail (or were not run) on fanflow's."""
    lost = []
    for test, outcome in sorted(dask_side.items()):
        theirs = fanflow_side.get(test, "not run")
        if test in DESELECT:
            continue  # left out of both sides; a baseline recorded before it was deselected still lists it
        if test in KNOWN_DIFFERENCES:
            print(f"known difference, not counted: {test}: {KNOWN_DIFFERENCES[test]}")
        elif outcome == "passed" and theirs not in ("passed", "skipped"):
            lost.append(f"{test}: passes on Dask, {theirs} on fanflow")
    return lost


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--write-baseline", action="store_true", help="run Dask's side and save it in the baseline (per module)"
    )
    parser.add_argument("--run-dask", action="store_true", help="run Dask's side even when the baseline has it")
    parser.add_argument("modules", nargs="*", default=list(MODULES), help="test modules (default: the issue's)")
    args = parser.parse_args(argv)
    modules = tuple(args.modules)
    with tempfile.TemporaryDirectory(prefix="fanflow-dask-suite-") as tmp:
        workdir = Path(tmp)
        baseline = baseline_path()
        known = json.loads(baseline.read_text()) if baseline.exists() and not args.run_dask else {}
        recorded = {t.split("::", 1)[0] for t in known}
        missing = tuple(m for m in modules if _path(m) not in recorded)
        if args.write_baseline or missing:
            run = modules if args.write_baseline else missing
            if not args.write_baseline:
                print(f"{baseline.name} lacks {' '.join(run)}: running Dask's side for them too", flush=True)
            ran = run_side("dask", run, workdir)
            if args.write_baseline:  # merged into what the file holds for other modules
                kept = {t: o for t, o in known.items() if t.split("::", 1)[0] not in {_path(m) for m in run}}
                baseline.write_text(json.dumps({**kept, **ran}, indent=0, sort_keys=True) + "\n")
                print(f"wrote {baseline}")
                return 0
            known.update(ran)
        dask_side = known
        wanted = {_path(m) for m in modules}
        dask_side = {t: o for t, o in dask_side.items() if t.split("::", 1)[0] in wanted}
        fanflow_side = run_side("fanflow", modules, workdir)
    lost = compare(dask_side, fanflow_side)
    passed = [t for t, o in dask_side.items() if o == "passed" and fanflow_side.get(t) == "passed"]
    both = len(passed)
    for module in modules:
        print(f"{_path(module)}: {sum(1 for t in passed if t.startswith(_path(module) + '::'))} pass on both")
    for line in lost:
        print(line)
    print(f"{both} tests pass on both schedulers, {len(lost)} pass on Dask's only")
    print(f"dask-suite: {both} passed, {len(lost)} failed")  # the closing line CI reads
    return 1 if lost else 0


if __name__ == "__main__":
    raise SystemExit(main())
