"""Run Dask's own test files on Dask's schedulers and on fanflow's; fail if fanflow loses a test.

The files come from the installed ``dask`` package (``--pyargs``). fanflow's side
routes every scheduler to :func:`fanflow.dask.get` with the plugin
``fanflow_schedulers.py`` beside this script. Dask's side is read from the
baseline beside it (``dask-<version>.json``, the outcomes on Dask's own
schedulers) when it matches the installed Dask, and run otherwise, which doubles
the time. A test that passes on Dask and does not pass on fanflow (it fails,
errors, skips, xfails or is not run) is lost and fails the comparison (exit
status 1), unless it skips on Dask too. The baseline was recorded on another
machine, so the tests it says pass and fanflow skips here (an optional dependency
missing) are run again on Dask's schedulers here: only those that skip there too
are let off.

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
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
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


def run_side(schedulers: str, workdir: Path, modules: Sequence[str] = (), tests: Sequence[str] = ()) -> dict[str, str]:
    """Each test's outcome with ``schedulers`` ("dask" or "fanflow"): of whole ``modules``, or of ``tests`` (ids)."""
    import dask

    site = Path(dask.__file__).resolve().parent.parent
    outcomes = workdir / f"{schedulers}-{'modules' if modules else 'tests'}.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("FANFLOW_METADATA", "none")  # correctness is compared here; history has its own tests
    targets = ["--pyargs", *modules] if modules else [str(site / t) for t in tests]  # ids are relative to site
    command = [
        sys.executable, "-m", "pytest", "-c", str(HERE / "pytest.ini"), "--rootdir", str(site),
        "-p", "fanflow_schedulers", f"--schedulers={schedulers}", f"--outcomes={outcomes}", "-q",
        "--no-header", "-p", "no:randomly", "--durations=10", *(f"--deselect={t}" for t in DESELECT), *targets,
    ]  # fmt: skip
    what = " ".join(modules) if modules else f"{len(tests)} tests"
    print(f"== Dask's tests on {schedulers}'s schedulers: {what}", flush=True)
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


def compare(dask_side: Mapping[str, str], fanflow_side: Mapping[str, str]) -> dict[str, str]:
    """Tests that pass on Dask's schedulers and not on fanflow's, with what they did there.

    Anything but a pass is a loss: failed, error, skipped, xfailed, or "not run"
    (not in ``fanflow_side``). A test that does not pass on Dask is not compared,
    nor one in :data:`KNOWN_DIFFERENCES` or :data:`DESELECT`.
    """
    lost = {}
    for test, outcome in sorted(dask_side.items()):
        if outcome != "passed" or test in DESELECT or test in KNOWN_DIFFERENCES:
            continue  # a baseline recorded before a test was deselected still lists it
        theirs = fanflow_side.get(test, "not run")
        if theirs != "passed":
            lost[test] = theirs
    return lost


def skipped_on_both(lost: Mapping[str, str], run_dask: Callable[[list[str]], dict[str, str]]) -> set[str]:
    """The tests of ``lost`` that fanflow skipped and that skip on Dask's schedulers too when ``run_dask`` runs them.

    For a Dask side read from a baseline recorded elsewhere: a test the baseline
    says passes may skip on both here (an optional dependency missing), which is
    no loss; one that passes on Dask here is.
    """
    skipped = [t for t, outcome in lost.items() if outcome == "skipped"]
    if not skipped:
        return set()
    again = run_dask(skipped)
    return {t for t in skipped if again.get(t) == "skipped"}


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
            ran = run_side("dask", workdir, modules=run)
            if args.write_baseline:  # merged into what the file holds for other modules
                kept = {t: o for t, o in known.items() if t.split("::", 1)[0] not in {_path(m) for m in run}}
                baseline.write_text(json.dumps({**kept, **ran}, indent=0, sort_keys=True) + "\n")
                print(f"wrote {baseline}")
                return 0
            known.update(ran)
        dask_side = known
        wanted = {_path(m) for m in modules}
        dask_side = {t: o for t, o in dask_side.items() if t.split("::", 1)[0] in wanted}
        fanflow_side = run_side("fanflow", workdir, modules=modules)
        lost = compare(dask_side, fanflow_side)
        ran_here = {_path(m) for m in missing}  # Dask's side of these was run now, not read
        here = skipped_on_both(
            {t: o for t, o in lost.items() if t.split("::", 1)[0] not in ran_here},
            lambda tests: run_side("dask", workdir, tests=tests),
        )
    for test in sorted(here):
        print(f"skips on both schedulers on this machine, not compared (the baseline has it passing): {test}")
        del lost[test]
    for test in sorted(KNOWN_DIFFERENCES.keys() & dask_side.keys()):
        print(f"known difference, not counted: {test}: {KNOWN_DIFFERENCES[test]}")
    passed = [t for t, o in dask_side.items() if o == "passed" and fanflow_side.get(t) == "passed"]
    for module in modules:
        print(f"{_path(module)}: {sum(1 for t in passed if t.startswith(_path(module) + '::'))} pass on both")
    for test, theirs in lost.items():
        print(f"{test}: passes on Dask, {theirs} on fanflow")
    kinds = Counter(lost.values())
    how = f" ({', '.join(f'{n} {kind}' for kind, n in sorted(kinds.items()))} on fanflow)" if lost else ""
    print(f"{len(passed)} tests pass on both schedulers, {len(lost)} pass on Dask's only{how}")
    print(f"dask-suite: {len(passed)} passed, {len(lost)} failed")  # the closing line CI reads
    return 1 if lost else 0


if __name__ == "__main__":
    raise SystemExit(main())
