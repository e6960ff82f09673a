"""Write a student version of this project: sdpg.py with the paper's equations blanked, and a handout.

    python teaching/make_assignment.py OUT_DIR                     # blank E1–E7 and RLSD (every function below)
    python teaching/make_assignment.py OUT_DIR --blank E3,E5       # only these equations

Generated from the reference sdpg.py by its syntax tree, never kept by hand: each blanked function keeps its
signature and docstring (the tag's formula) and its body becomes `raise NotImplementedError("E3: …")`.
Everything else — data, verifier, rollouts, the training loop — is the reference code. OUT_DIR also gets eval.py,
the tests, the equations (docs/algorithm.md), grade.py, kl_variance.py (lab B2) and ASSIGNMENT.md.
"""

import argparse
import ast
import os
import shutil
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))
# tag → (function, what the student writes); sdpg_loss carries both E4 (the gate) and E7 (the total)
EQUATIONS = {"E1": ("group_advantages", "group-relative advantages"),
             "E2": ("clipped_pg_loss", "the DAPO dual-clip surrogate"),
             "E3": ("reverse_kl", "the exact full-vocabulary reverse KL to the teacher"),
             "E5": ("beta_schedule", "the β warm-up/decay schedule"),
             "E6": ("ref_kl", "the reference-policy anchor"),
             "E7": ("sdpg_loss", "the gated (E4), token-mean total loss"),
             "RLSD": ("rlsd_advantages", "RLSD's token advantage (the paper's Appendix B baseline)")}
COPIED = ["math_equivalence.py", "tiny.py", "eval.py", "inspect_page.py", "inspect_page.html", "test_sdpg.py",
          "pytest.ini", "requirements.txt", "docs/algorithm.md", "docs/metrics.md", "testdata"]


def blank_functions(source: str, tags: list[str]) -> str:
    """source with the body of each tagged function (after its docstring) replaced by a NotImplementedError."""
    names = {EQUATIONS[tag][0]: tag for tag in tags}
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    found = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in names}
    missing = set(names) - set(found)
    if missing:
        raise SystemExit(f"error: sdpg.py has no top-level function {', '.join(sorted(missing))}; update EQUATIONS")
    for name in sorted(found, key=lambda n: found[n].lineno, reverse=True):  # bottom up: line numbers stay valid
        node, tag = found[name], names[name]
        docstring = node.body[0]
        if not (isinstance(docstring, ast.Expr) and isinstance(docstring.value, ast.Constant)):
            raise SystemExit(f"error: {name} has no docstring to keep; the student needs its formula")
        indent = " " * (docstring.col_offset)
        stub = (f'{indent}raise NotImplementedError("{tag}: implement {name} ({EQUATIONS[tag][1]}); '
                f'see ASSIGNMENT.md and docs/algorithm.md")\n')
        lines[docstring.end_lineno:node.end_lineno] = [stub]
    return "".join(lines)


def write_assignment(out_dir: str, tags: list[str]):
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise SystemExit(f"error: {out_dir!r} is a file; pass a new or empty folder for the student version")
    if os.path.exists(out_dir) and os.listdir(out_dir):
        raise SystemExit(f"error: {out_dir!r} is not empty; pass a new folder (a student version is never written "
                         f"over existing work)")
    os.makedirs(os.path.join(out_dir, "docs"), exist_ok=True)
    with open(os.path.join(REPO, "sdpg.py"), encoding="utf-8") as f:
        student = blank_functions(f.read(), tags)
    with open(os.path.join(out_dir, "sdpg.py"), "w", encoding="utf-8") as f:
        f.write(student)
    for name in COPIED:
        source, target = os.path.join(REPO, name), os.path.join(out_dir, name)
        shutil.copytree(source, target) if os.path.isdir(source) else shutil.copy(source, target)
    for script in ("grade.py", "kl_variance.py"):
        shutil.copy(os.path.join(HERE, script), os.path.join(out_dir, script))
    with open(os.path.join(HERE, "ASSIGNMENT.md"), encoding="utf-8") as f:
        handout = f.read()
    blanked = "\n".join(f"- **{tag}** `{EQUATIONS[tag][0]}`: {EQUATIONS[tag][1]}" for tag in tags)
    with open(os.path.join(out_dir, "ASSIGNMENT.md"), "w", encoding="utf-8") as f:
        f.write(handout.replace("@BLANKED@", blanked))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("out_dir", help="an empty or new folder for the student version")
    parser.add_argument("--blank", default=",".join(EQUATIONS),
                        help=f"comma-separated tags to blank, of {', '.join(EQUATIONS)} (E4 lives in E7's sdpg_loss; "
                             f"default: all of them)")
    args = parser.parse_args(argv)
    tags = [tag.strip().upper() for tag in args.blank.split(",") if tag.strip()]
    unknown = [tag for tag in tags if tag not in EQUATIONS]
    if unknown:
        raise SystemExit(f"error: --blank {','.join(unknown)}: choose among {', '.join(EQUATIONS)} "
                         f"(E4, the gate, is part of E7's sdpg_loss)")
    write_assignment(args.out_dir, tags)
    print(f"wrote {args.out_dir}: sdpg.py with {', '.join(tags)} blanked; hand out the folder, then "
          f"python {os.path.join(HERE, 'grade.py')} {args.out_dir}")


if __name__ == "__main__":
    sys.exit(main())
