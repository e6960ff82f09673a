"""Plant one likely slip at a time in the reference sdpg.py, grade it, and show the grader's first failing line.

    python teaching/planted_bugs.py            # grade every planted bug; rewrite the table in teaching/README.md
    python teaching/planted_bugs.py --check    # the same, but fail (exit 1) where the table would change

Each bug is one edit of one blanked function, the kind of single-line slip a student makes (a sign, a bound, a
missing ½ or ε, a mean over the wrong axis, a missing detach, an off-by-one). For each, grade.py must fail the
bug's own equation first, and that line must say in words what is wrong. The table in teaching/README.md is this
script's output, so it never drifts from what the grader prints. About 80 s on 2 cores.
"""

import argparse
import ast
import contextlib
import multiprocessing
import os
import re
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import grade  # noqa: E402

# (tag of the line that must fail first, function, what the slip is, the reference text, the slip's text)
BUGS = [
    ("E1", "group_advantages", "no ε (all-equal groups masked by hand)",
     "centered / (groups.std(dim=1, keepdim=True) + eps)",
     "torch.where(groups.std(dim=1, keepdim=True) > 0, centered / groups.std(dim=1, keepdim=True), 0.0)"),
    ("E1", "group_advantages", "population std", "groups.std(dim=1, keepdim=True)",
     "groups.std(dim=1, keepdim=True, unbiased=False)"),
    ("E1", "group_advantages", "mean over the whole batch", "groups.mean(dim=1, keepdim=True)", "groups.mean()"),
    ("E1", "group_advantages", "sign flipped", "groups - groups.mean(dim=1, keepdim=True)",
     "groups.mean(dim=1, keepdim=True) - groups"),
    ("E1", "group_advantages", "std_scale ignored", "if std_scale:", "if True:"),
    ("E1", "group_advantages", "no check that G divides the rewards", "group_size < 2 or rewards.numel() % group_size",
     "group_size < 2"),
    ("E2", "clipped_pg_loss", "symmetric clip (1 + ε_low above)", "1 + clip_high", "1 + clip_low"),
    ("E2", "clipped_pg_loss", "clip bounds swapped", "ratio.clamp(1 - clip_low, 1 + clip_high)",
     "ratio.clamp(1 - clip_high, 1 + clip_low)"),
    ("E2", "clipped_pg_loss", "no dual clip",
     "torch.where(advantages < 0, torch.minimum(loss, -advantages * clip_c), loss)", "loss"),
    ("E2", "clipped_pg_loss", "min instead of max", "torch.maximum(unclipped, clipped)",
     "torch.minimum(unclipped, clipped)"),
    ("E2", "clipped_pg_loss", "dual clip on every token",
     "torch.where(advantages < 0, torch.minimum(loss, -advantages * clip_c), loss)",
     "torch.minimum(loss, -advantages * clip_c)"),
    ("E2", "clipped_pg_loss", "ratio inverted", "(logp - old_logp)", "(old_logp - logp)"),
    ("E2", "clipped_pg_loss", "no clamp of log r", ".clamp(-20.0, 20.0)", ""),
    ("E3", "reverse_kl", "forward KL", "(log_p.exp() * (log_p - log_q.detach())).sum(dim=-1)",
     "(log_q.detach().exp() * (log_q.detach() - log_p)).sum(dim=-1)"),
    ("E3", "reverse_kl", "a sampled-token-style sum without p", "(log_p.exp() * (log_p - log_q.detach())).sum(dim=-1)",
     "(log_p - log_q.detach()).sum(dim=-1)"),
    ("E3", "reverse_kl", "mean over the vocabulary", ".sum(dim=-1)", ".mean(dim=-1)"),
    ("E3", "reverse_kl", "sum over the wrong dim", ".sum(dim=-1)", ".sum(dim=0)"),
    ("E3", "reverse_kl", "teacher not detached", "log_q.detach()", "log_q"),
    ("E3", "reverse_kl", "weighted by q", "log_p.exp() *", "log_q.exp().detach() *"),
    ("E4", "sdpg_loss", "gate A ≥ 0", "advantages > 0 if cfg.gate", "advantages >= 0 if cfg.gate"),
    ("E4", "sdpg_loss", "gate ignores cfg.gate",
     "advantages > 0 if cfg.gate else torch.ones_like(advantages, dtype=torch.bool)", "advantages > 0"),
    ("E4", "sdpg_loss", "no gate", "(advantages > 0 if cfg.gate else torch.ones_like(advantages, dtype=torch.bool))",
     "torch.ones_like(advantages, dtype=torch.bool)"),
    ("E5", "beta_schedule", "off by one in the warm-up", "step / warmup_steps", "(step + 1) / warmup_steps"),
    ("E5", "beta_schedule", "negative past the last step", "max(0.0, min(1.0, (total_steps - step) / decay_steps))",
     "min(1.0, (total_steps - step) / decay_steps)"),
    ("E5", "beta_schedule", "decay over the whole run", "(total_steps - step) / decay_steps",
     "(total_steps - step) / total_steps"),
    ("E5", "beta_schedule", "warm-up not capped at 1", "min(1.0, step / warmup_steps)", "step / warmup_steps"),
    ("E5", "beta_schedule", "a zero window divides by 0", "if decay_steps > 0 else 1.0",
     "if decay_steps >= 0 else 1.0"),
    ("E6", "ref_kl", "urkl without ½", "return 0.5 * log_w**2", "return log_w**2"),
    ("E6", "ref_kl", "log w reversed", "log_w = logp - ref_logp", "log_w = ref_logp - logp"),
    ("E6", "ref_kl", "ufkl's sign", "torch.exp(-log_w) + log_w", "torch.exp(-log_w) - log_w"),
    ("E6", "ref_kl", "rkl's shift", "(log_w + 1)", "(log_w - 1)"),
    ("E6", "ref_kl", "an unknown mode falls back to urkl", "raise ValueError(", "return 0.5 * log_w**2  # ("),
    ("E7", "sdpg_loss", "a mean per response", "loss = (per_token * mask).sum() / num_tokens",
     "loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()"),
    ("E7", "sdpg_loss", "num_tokens ignored", "mask.sum().clamp(min=1) if num_tokens is None else num_tokens",
     "mask.sum().clamp(min=1)"),
    ("E7", "sdpg_loss", "the token count not clamped", "mask.sum().clamp(min=1)", "mask.sum()"),
    ("E7", "sdpg_loss", "padding counted", "(per_token * mask).sum()", "per_token.sum()"),
    ("E7", "sdpg_loss", "ℓ_t not clamped at 20", '.clamp(max=20.0)', ""),
    ("E7", "sdpg_loss", "β on E2 instead of E3", "pg + beta_k * kl", "beta_k * pg + kl"),
    ("E7", "sdpg_loss", "α missing", "cfg.alpha * anchor", "anchor"),
    ("E7", "sdpg_loss", "OPCD's outcome flag ignored", "pg if cfg.outcome else torch.zeros_like(pg)", "pg"),
    ("E7", "sdpg_loss", "RLSD's per-token advantages ignored",
     'terms.get("token_advantages", advantages[:, None].expand_as(logp))', "advantages[:, None].expand_as(logp)"),
    ("E7", "sdpg_loss", "parts not detached", "value.detach()", "value"),
    ("E7", "sdpg_loss", "cfg's clip not passed to E2", ", cfg.clip_low, cfg.clip_high, cfg.clip_c)", ")"),
    ("RLSD", "rlsd_advantages", "without sign(A)", "rlsd_evidence(advantages, old_logp, teacher_logp)",
     "torch.exp((teacher_logp - old_logp).clamp(-20.0, 20.0))"),
    ("RLSD", "rlsd_advantages", "u not clipped", ".clamp(1 - clip, 1 + clip)", ""),
    ("RLSD", "rlsd_advantages", "without the (1 − λ) term", "(1 - weight) + weight *", "weight *"),
    ("RLSD", "rlsd_advantages", "λ and 1 − λ swapped", "(1 - weight) + weight *", "weight + (1 - weight) *"),
    ("RLSD", "rlsd_advantages", "ratio inverted", "rlsd_evidence(advantages, old_logp, teacher_logp)",
     "rlsd_evidence(advantages, teacher_logp, old_logp)"),
    ("RLSD", "rlsd_advantages", "u_t written out, not detached",
     "scale = (1 - weight) + weight * rlsd_evidence(advantages, old_logp, teacher_logp).clamp(1 - clip, 1 + clip)\n"
     "    return (advantages[:, None] * scale).detach()",
     "u = torch.exp(torch.sign(advantages)[:, None] * (teacher_logp - old_logp).clamp(-20.0, 20.0))\n"
     "    return advantages[:, None] * ((1 - weight) + weight * u.clamp(1 - clip, 1 + clip))"),
]
BEGIN, END = "<!-- planted bugs: begin (teaching/planted_bugs.py writes this table) -->", "<!-- planted bugs: end -->"


def plant(source: str, function: str, reference: str, slip: str) -> str:
    """source with `reference` replaced by `slip` inside `function`, where it must occur exactly once."""
    node = next((n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name == function), None)
    if node is None:
        raise SystemExit(f"error: sdpg.py has no function {function}; update BUGS")
    lines = source.splitlines(keepends=True)
    before, body, after = "".join(lines[:node.lineno - 1]), "".join(lines[node.lineno - 1:node.end_lineno]), \
        "".join(lines[node.end_lineno:])
    docstring_end = len("".join(lines[node.lineno - 1:node.body[0].end_lineno]))  # never edit the docstring
    code = body[docstring_end:]
    if code.count(reference) != 1:
        raise SystemExit(f"error: {function} holds {reference!r} {code.count(reference)} times, not once; update BUGS")
    return before + body[:docstring_end] + code.replace(reference, slip) + after


def grade_bug(source: str, bug, in_this_process: bool = False) -> tuple[str, str, list[str]]:
    """(the first failing tag, its first failure's message, every failing tag) of grade.py on the planted slip."""
    tag, function, _, reference, slip = bug
    with tempfile.TemporaryDirectory() as scratch:
        path = os.path.join(scratch, "sdpg.py")
        with open(path, "w", encoding="utf-8") as f:
            f.write(plant(source, function, reference, slip))
        results = run_here(path) if in_this_process else grade.run_equation_tests(path, check=False)
    failing = [t for t in grade.EQUATIONS if any(message for _, message in results[t])]
    if not failing:
        return "", "no test failed", []
    message = next(message for _, message in results[failing[0]] if message)
    return failing[0], message, failing


def run_here(student_sdpg: str) -> dict[str, list[tuple[str, str | None]]]:
    """grade.run_equation_tests's pytest run, in this process (a fresh fork: see table)."""
    import pytest

    with tempfile.TemporaryDirectory() as scratch, open(os.devnull, "w") as quiet:
        grade.copy_with_reference_tests(student_sdpg, scratch)
        report = os.path.join(scratch, "report.xml")
        os.environ.update(grade.grading_env())
        os.chdir(scratch)
        sys.path.insert(0, scratch)
        with contextlib.redirect_stdout(quiet):
            pytest.main(grade.pytest_arguments(report))
        os.chdir(HERE)
        return grade.read_report(report)


def table(source: str) -> tuple[str, list[str]]:
    """The markdown table, and the bugs whose first failing line is not their own equation's."""
    if sys.platform.startswith("linux"):
        # grade.run_equation_tests starts a new interpreter per bug, and importing torch and pytest is ~2 s of its
        # ~5 s. Here they are imported once and each bug is graded in a process forked from this one: the same
        # pytest run of the same files, in a fresh process per bug (maxtasksperchild=1 and chunksize=1), so no
        # planted sdpg.py is ever imported where another was. Linux only: macOS's system libraries are not safe
        # to fork once loaded (its Python spawns by default).
        import pytest  # noqa: F401
        import torch  # noqa: F401

        with multiprocessing.get_context("fork").Pool(2, maxtasksperchild=1) as pool:
            graded = pool.starmap(grade_bug, [(source, bug, True) for bug in BUGS], chunksize=1)
    else:  # macOS, Windows: a new interpreter per bug
        with ThreadPoolExecutor(max_workers=2) as pool:
            graded = list(pool.map(lambda bug: grade_bug(source, bug), BUGS))
    rows, wrong = ["| planted in | the slip | first failing line | its first failure says | other lines failing |",
                   "| --- | --- | --- | --- | --- |"], []
    for bug, (first, message, failing) in zip(BUGS, graded):
        if first != bug[0]:
            wrong.append(f"{bug[0]} {bug[2]}: first failing line {first or 'none'}")
        message = re.sub(r"\s+", " ", message).replace("|", "\\|")
        others = ", ".join(t for t in failing if t != first) or "—"
        rows.append(f"| {bug[0]} `{bug[1]}` | {bug[2]} | {first or '—'} | {message} | {others} |")
    return "\n".join(rows) + "\n", wrong


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--check", action="store_true", help="fail where teaching/README.md's table would change")
    args = parser.parse_args(argv)
    with open(os.path.join(REPO, "sdpg.py"), encoding="utf-8") as f:
        source = f.read()
    text, wrong = table(source)
    readme_path = os.path.join(HERE, "README.md")
    with open(readme_path, encoding="utf-8") as f:
        readme = f.read()
    if BEGIN not in readme or END not in readme:
        raise SystemExit(f"error: {readme_path} has no {BEGIN} … {END} markers for the table")
    head, rest = readme.split(BEGIN, 1)
    updated = head + BEGIN + "\n" + text + END + rest.split(END, 1)[1]
    for line in wrong:
        print(f"not on its own line first: {line}", file=sys.stderr)
    if args.check:
        if updated != readme:
            print("teaching/README.md's table differs from what the grader prints now: run "
                  "python teaching/planted_bugs.py", file=sys.stderr)
            return 1
        return 1 if wrong else 0
    with open(readme_path, "w", encoding="utf-8") as f:
        f.write(updated)
    print(f"{len(BUGS)} planted bugs graded; {len(BUGS) - len(wrong)} fail their own equation's line first; table "
          f"written to {readme_path}")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
