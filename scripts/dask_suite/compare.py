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
    "dask.bag.tests.test_bag",
    "dask.array.tests.test_reductions",
    "dask.array.tests.test_array_core",
    "dask.array.tests.test_linalg",
)
"""The Dask test files of the comparison (issue #13)."""

DESELECT = ()
"""Test ids left out of both sides (slow ones that exercise nothing of the scheduler)."""


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
        "--no-header", "-p", "no:randomly", *(f"--deselect={t}" for t in DESELECT), "--pyargs", *modules,
    ]  # fmt: skip
    began = time.monotonic()
    done = subprocess.run(command, cwd=workdir, env=env, stdout=subprocess.PIPE, text=True, check=False)
    tail = done.stdout.strip().splitlines()[-1:] or ["(no output)"]
    print(f"{schedulers} schedulers: {tail[0]} [{time.monotonic() - began:.0f} s]", flush=True)
    if not outcomes.exists():
        sys.stdout.write(done.stdout[-4000:])
        raise SystemExit(f"pytest on {schedulers}'s schedulers wrote no outcomes (exit {done.returncode})")
    return dict(json.loads(outcomes.read_text()))


def baseline_path() -> Path:
    import dask

    return HERE / f"dask-{dask.__version__}.json"


def compare(dask_side: dict[str, str], fanflow_side: dict[str, str]) -> list[str]:
    """Tests that pass on Dask's schedulers and fail (or were not run) on fanflow's."""
    lost = []
    for test, outcome in sorted(dask_side.items()):
        theirs = fanflow_side.get(test, "not run")
        if outcome == "passed" and theirs not in ("passed", "skipped"):
            lost.append(f"{test}: passes on Dask, {theirs} on fanflow")
    return lost


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write-baseline", action="store_true", help="run Dask's side and save it as the baseline")
    parser.add_argument("--run-dask", action="store_true", help="run Dask's side even when a baseline matches")
    parser.add_argument("modules", nargs="*", default=list(MODULES), help="test modules (default: the issue's)")
    args = parser.parse_args(argv)
    modules = tuple(args.modules)
    with tempfile.TemporaryDirectory(prefix="fanflow-dask-suite-") as tmp:
        workdir = Path(tmp)
        baseline = baseline_path()
        if args.write_baseline or args.run_dask or not baseline.exists():
            if not baseline.exists():
                print(f"no baseline for this Dask ({baseline.name}): running Dask's side too", flush=True)
            dask_side = run_side("dask", modules, workdir)
            if args.write_baseline:
                baseline.write_text(json.dumps(dask_side, indent=0, sort_keys=True) + "\n")
                print(f"wrote {baseline}")
                return 0
        else:
            dask_side = json.loads(baseline.read_text())
        wanted = {m.replace(".", "/") + ".py" for m in modules}
        dask_side = {t: o for t, o in dask_side.items() if t.split("::", 1)[0] in wanted}
        fanflow_side = run_side("fanflow", modules, workdir)
    lost = compare(dask_side, fanflow_side)
    both = sum(1 for t, o in dask_side.items() if o == "passed" and fanflow_side.get(t) == "passed")
    for line in lost:
        print(line)
    print(f"dask suite: {both} pass on both schedulers, {len(lost)} pass on Dask's only")
    return 1 if lost else 0


if __name__ == "__main__":
    raise SystemExit(main())
