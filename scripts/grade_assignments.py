#!/usr/bin/env python
"""Grade submitted notebooks as ``otter run`` does (no containers), one after the other.

Each submission is executed from top to bottom in the smoke profile (the exercises do not depend
on the profile, and a full cpu or gpu run would retrain every model), then every test, hidden ones
included, runs against its variables. Errors in the student's cells do not stop the grading; they
cost the points of the tests they break.

Usage:
  python scripts/grade_assignments.py AUTOGRADER_ZIP SUBMISSION.ipynb [...] [--csv grades.csv]
e.g.
  python scripts/grade_assignments.py assignments/autograder/01_forward_process/01_forward_process-autograder.zip \\
      submissions/*.ipynb --csv grades_01.csv
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import NamedTuple

import nbformat

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def course_environment(profile: str):
    """The environment the grading kernels start with: the profile, and this checkout's library."""
    saved = dict(os.environ)
    os.environ["DIFFUSION_PROFILE"] = profile
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


class Score(NamedTuple):
    score: float
    possible: float
    hidden_tests: int  # how many of the question's tests the student could not see
    report: str  # otter's account of the question's tests


def with_assignment_name(submission: Path, autograder_zip: Path, folder: str) -> Path:
    """``submission``, or a copy in ``folder`` named for the autograder's assignment when an editor
    dropped otter's metadata (otter refuses a notebook without the name it expects)."""
    nb = nbformat.read(submission, as_version=4)
    if nb.metadata.get("otter", {}).get("assignment_name"):
        return submission  # otter checks that it matches the autograder's
    with zipfile.ZipFile(autograder_zip) as archive:
        name = json.loads(archive.read("otter_config.json")).get("assignment_name")
    if name is None:
        return submission
    nb.metadata.setdefault("otter", {})["assignment_name"] = name
    copy = Path(folder, submission.name)
    nbformat.write(nb, copy)
    return copy


def grade(submission: Path, autograder_zip: Path, *, profile: str = "smoke") -> dict[str, Score]:
    """``{question: Score}`` for one submitted notebook (``otter run``, in this process)."""
    from otter.api import grade_submission

    submission, autograder_zip = Path(submission).resolve(), Path(autograder_zip).resolve()
    with course_environment(profile), tempfile.TemporaryDirectory() as folder:
        submission = with_assignment_name(submission, autograder_zip, folder)
        results = grade_submission(str(submission), str(autograder_zip), quiet=True)
    if results.catastrophic_error:
        raise RuntimeError(f"otter could not grade {submission}: {results.catastrophic_error}")
    return {name: Score(test.score, test.possible, sum(case.hidden for case in test.test_cases), repr(test))
            for name, test in results.results.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("autograder_zip", type=Path)
    parser.add_argument("submissions", nargs="+", type=Path)
    parser.add_argument("--csv", type=Path, help="write one row per submission here")
    parser.add_argument("--profile", default="smoke", help="DIFFUSION_PROFILE for the runs (default: smoke)")
    args = parser.parse_args(argv)
    rows = []
    for submission in args.submissions:
        try:
            scores = grade(submission, args.autograder_zip, profile=args.profile)
        except Exception as error:  # noqa: BLE001  (one broken file must not stop the others)
            print(f"{submission.name}: not graded: {error}")
            rows.append({"submission": submission.name, "error": str(error).splitlines()[0]})
            continue
        total, possible = sum(s.score for s in scores.values()), sum(s.possible for s in scores.values())
        print(f"{submission.name}: {total:g} / {possible:g}  "
              + ", ".join(f"{name} {s.score:g}/{s.possible:g}" for name, s in scores.items()))
        rows.append({"submission": submission.name, **{name: s.score for name, s in scores.items()},
                     "total": total, "possible": possible})
    if args.csv:
        with args.csv.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for row in rows for k in row)))
            writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
