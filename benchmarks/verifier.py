"""sdpg.verify against HF math-verify: agreement and completions per second.

Two corpora from ../shared (same rows as the Hub datasets):
- GSM8K: OpenAI's 5 276 real model completions with their own is_correct labels
  (shared/gsm8k/example_model_solutions.jsonl); both graders are also scored against those labels;
- MATH-500: each problem's reference solution (which ends in a \\boxed{} answer) graded against its `answer`
  field: every one is correct, so the agreement with 1 is each grader's recall on MATH-style answers.
And the two hand-labelled tables in testdata/ (MATH-style answers written the way Qwen writes them, correct and
wrong; labels written before the verifier ran on them): `= label` there is accuracy, split into the share of
correct answers accepted and of wrong answers rejected.

  pip install math-verify            # optional, only for this script
  python benchmarks/verifier.py
"""

import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
import sdpg  # noqa: E402

SHARED = os.path.join(HERE, "..", "..", "shared")


def gsm8k_cases():
    cases = []
    for line in open(os.path.join(SHARED, "gsm8k", "example_model_solutions.jsonl")):
        row = json.loads(line)
        gold = row["ground_truth"].rsplit("A:", 1)[1].strip()
        for key in ("6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification"):
            cases.append((row[key]["solution"], gold, bool(row[key]["is_correct"])))
    return cases


def math500_cases():
    rows = [json.loads(line) for line in open(os.path.join(SHARED, "math500", "test.jsonl"))]
    return [(row["solution"], row["answer"], True) for row in rows]


def table_cases(name):
    rows = [json.loads(line) for line in open(os.path.join(HERE, "..", "testdata", name))]
    return [(row["completion"], row["answer"], row["correct"], row.get("truncated", False)) for row in rows]


def math_verify_grader():
    try:
        from math_verify import parse, verify
    except ImportError:
        return None

    def grade(completion, answer, truncated=False):
        if truncated:  # no strict mode there: a cut response gets 0 (ours still counts an answer stated before the cut)
            return 0.0
        try:
            return float(verify(parse(f"${answer}$"), parse(completion)))
        except Exception:
            return 0.0
    return grade


def timed(grader, cases):
    started = time.perf_counter()
    scores = [grader(completion, answer, *rest[1:]) for completion, answer, *rest in cases]
    return scores, len(cases) / (time.perf_counter() - started)


def main():
    if not os.path.isdir(SHARED):
        raise SystemExit(f"error: {SHARED} not found; this benchmark reads ../shared/gsm8k and ../shared/math500")
    reference = math_verify_grader()
    print(f"{'corpus':<14} {'cases':>6} {'grader':<12} {'= label':>8} {'accepts':>8} {'rejects':>8} "
          f"{'= math-verify':>14} {'per second':>11}")
    corpora = (("GSM8K", gsm8k_cases()), ("MATH-500", math500_cases()), ("table", table_cases("math_answers.jsonl")),
               ("fresh table", table_cases("math_answers_fresh.jsonl")))
    for name, cases in corpora:
        ours, ours_speed = timed(sdpg.verify, cases)
        theirs, theirs_speed = timed(reference, cases) if reference else (None, 0.0)
        for grader, scores, speed in (("sdpg.verify", ours, ours_speed), ("math-verify", theirs, theirs_speed)):
            if scores is None:
                print(f"{name:<14} {len(cases):>6} {grader:<12} (not installed: pip install math-verify)")
                continue
            hits = [score == float(case[2]) for score, case in zip(scores, cases)]
            correct, wrong = ([hit for hit, case in zip(hits, cases) if case[2] == label] for label in (True, False))
            rate = lambda values: f"{sum(values) / len(values):.4f}" if values else "—"  # noqa: E731
            agree = f"{sum(a == b for a, b in zip(scores, theirs)) / len(cases):.4f}" if theirs else "—"
            print(f"{name:<14} {len(cases):>6} {grader:<12} {rate(hits):>8} {rate(correct):>8} {rate(wrong):>8} "
                  f"{agree:>14} {speed:>11.0f}")


if __name__ == "__main__":
    main()
