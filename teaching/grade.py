"""Grade a student version of sdpg.py: one line per equation (E1 … E7), passed or failed with the first failing
assertion, and a total. Exit status 0 only when every equation passes.

    python teaching/grade.py OUT_DIR

The equations' tests are the reference tests whose names start with `test_e<N>_` (they need only that equation,
except E4/E7's, which also call E2's clipped_pg_loss and E6's ref_kl); they run on OUT_DIR's sdpg.py in a scratch
folder, with the reference test file, so a student's edits to the tests change nothing. It takes seconds.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ElementTree

HERE = os.path.dirname(os.path.abspath(__file__))
# the reference tests: the repository's (teaching/../) or, in a handed-out copy, the ones beside this file
SOURCE = os.path.dirname(HERE) if os.path.basename(HERE) == "teaching" else HERE
EQUATIONS = {"E1": "group_advantages", "E2": "clipped_pg_loss", "E3": "reverse_kl", "E4": "sdpg_loss (gate)",
             "E5": "beta_schedule", "E6": "ref_kl", "E7": "sdpg_loss", "RLSD": "rlsd_advantages"}


def run_equation_tests(student_sdpg: str, check: bool = True) -> dict[str, list[tuple[str, str | None]]]:
    """{tag: [(test name, failure message or None)]} from one pytest run of the `test_e<N>_` tests; check=False skips
    the one-line diagnosis of a file that does not import (planted_bugs.py's files always do)."""
    with tempfile.TemporaryDirectory() as scratch:
        copy_with_reference_tests(student_sdpg, scratch)
        if check:
            check_imports(scratch)
        report = os.path.join(scratch, "report.xml")
        subprocess.run([sys.executable, "-m", "pytest", *pytest_arguments(report)], cwd=scratch, env=grading_env(),
                       capture_output=True, text=True, timeout=600)
        return read_report(report)


def grading_env() -> dict[str, str]:
    """This environment, offline, and with no third-party pytest plugin: the tests need none, and loading them
    (hypothesis's, where installed) is seconds a run."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}


def copy_with_reference_tests(student_sdpg: str, scratch: str):
    """The student's sdpg.py beside the reference test file and the modules it imports."""
    shutil.copy(student_sdpg, os.path.join(scratch, "sdpg.py"))
    for name in ("test_sdpg.py", "math_equivalence.py", "tiny.py", "eval.py", "inspect_page.py",
                 "inspect_page.html", "pytest.ini"):
        shutil.copy(os.path.join(SOURCE, name), os.path.join(scratch, name))


def pytest_arguments(report: str) -> list[str]:
    """The equations' tests, one line per failure, results to the JUnit file `report`."""
    selection = " or ".join(f"test_{tag.lower()}_" for tag in EQUATIONS)
    return ["-q", "-p", "no:cacheprovider", "--tb=line", "-k", selection, f"--junitxml={report}", "test_sdpg.py"]


def read_report(report: str) -> dict[str, list[tuple[str, str | None]]]:
    if not os.path.isfile(report):
        raise SystemExit("error: the tests did not run (does sdpg.py import? try: python -c 'import sdpg')")
    results = {tag: [] for tag in EQUATIONS}
    for case in ElementTree.parse(report).iter("testcase"):
        tag = re.match(r"test_(e\d|rlsd)_", case.get("name", ""))
        if tag is None or tag.group(1).upper() not in results:
            continue
        problem = case.find("failure") if case.find("failure") is not None else case.find("error")
        message = None if problem is None else first_line(problem.get("message") or problem.text or "failed")
        results[tag.group(1).upper()].append((case.get("name"), message))
    return results


def check_imports(scratch: str):
    """One line on what stops the tests from running at all: no pytest here, or a student sdpg.py that does not
    parse or import (its error and line, not seven "no test ran")."""
    import importlib.util

    if importlib.util.find_spec("pytest") is None:
        raise SystemExit("error: grading runs the tests with pytest, which is not installed: pip install pytest")
    path = os.path.join(scratch, "sdpg.py")
    try:
        compile(open(path, encoding="utf-8").read(), "sdpg.py", "exec")
    except SyntaxError as error:
        raise SystemExit(f"error: sdpg.py line {error.lineno}: {error.msg}: {(error.text or '').strip()!r}; "
                         f"fix it, then grade again") from None
    result = subprocess.run([sys.executable, "-c", "import sdpg"], cwd=scratch, capture_output=True, text=True,
                            timeout=300)
    if result.returncode:
        last = (result.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise SystemExit(f"error: sdpg.py does not import: {last}")


def first_line(message: str) -> str:
    """The assertion's own words: pytest's message without the repeated expression it was made of."""
    text = message.strip().splitlines()[0] if message.strip() else "failed"
    text = text.removeprefix("AssertionError: ")  # the test's own sentence; other errors keep their type
    return text if len(text) <= 400 else text[:399] + "…"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("out_dir", help="the student's folder (with its sdpg.py)")
    args = parser.parse_args(argv)
    student = os.path.join(args.out_dir, "sdpg.py")
    if not os.path.isfile(student):
        raise SystemExit(f"error: {student!r} not found; pass the folder make_assignment.py wrote")
    results = run_equation_tests(student)
    passed = 0
    for tag, function in EQUATIONS.items():
        cases = results[tag]
        failures = [(name, message) for name, message in cases if message is not None]
        ok = bool(cases) and not failures
        passed += ok
        detail = (f"{len(cases)}/{len(cases)} tests" if ok else
                  f"{len(cases) - len(failures)}/{len(cases)} tests; first failure {failures[0][0]}: "
                  f"{failures[0][1]}" if failures else "no test ran")
        print(f"{tag:<4}  {function:<18} {'passed' if ok else 'FAILED'}  {detail}")
    print(f"total: {passed}/{len(EQUATIONS)} equations pass")
    return 0 if passed == len(EQUATIONS) else 1


if __name__ == "__main__":
    sys.exit(main())
