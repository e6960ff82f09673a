"""Do two versions of sdpg.py train the same runs? Five fixed-seed runs of the tiny model, each logged by both.

    git worktree add /tmp/before HEAD~3          # any earlier commit
    python benchmarks/same_numbers.py /tmp/before .

The runs: SDPG without the gate, SDPG gated with the unchunked projection, RLSD with λ acting, two updates per
rollout batch (π_old ≠ π_θ, E2's clip acting) and OPCD. A verifier that rewards a third of the texts (by length)
stands in for the real one, so that A ≠ 0 and every term acts on the random model. Prints the largest difference
between the two versions' logged numbers (step and rollout times aside) and each version's mean step time.
Refactors that must keep the numbers (a readable rewrite) are checked with it; `opd_kl` (E3's name in metrics.jsonl
before 2026-12) is compared as `reverse_kl`.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

RUNS = {
    "sdpg-nogate": dict(method="sdpg", gate=False, beta=1.0, beta_warmup_steps=0, beta_decay_steps=0),
    "sdpg-gate-chunk0": dict(method="sdpg", beta=1.0, beta_warmup_steps=0, beta_decay_steps=0, logits_chunk_size=0),
    "rlsd": dict(method="rlsd", rlsd_weight=0.5, rlsd_decay_steps=10),
    "two-updates": dict(method="sdpg", beta=0.5, beta_warmup_steps=0, beta_decay_steps=0, mini_batch_size=2, alpha=0.1),
    "opcd": dict(method="opcd"),
}
BASE = dict(model="tiny", steps=3, batch_size=4, mini_batch_size=4, group_size=4, max_new_tokens=24, lr=1e-3,
            warmup_steps=0, micro_batch_size=4, seed=3)  # the mini-batch given: its default changed on 2026-12-06
CHILD = """
import json, os, sys, tempfile
sys.path.insert(0, sys.argv[1])
import sdpg
sdpg.verify = lambda completion, answer, strict=False: float(len(completion) % 3 == 0)
out = {}
for name, extra in json.loads(sys.argv[2]).items():
    out[name] = sdpg.main(sdpg.Config(**{**json.loads(sys.argv[3]), **extra},
                                      output_dir=os.path.join(tempfile.mkdtemp(), "run")))
print(json.dumps(out))
"""


def run(tree: str) -> dict:
    """{run: [metrics record per step]} as the sdpg.py in `tree` logs them, in a process of its own."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    result = subprocess.run([sys.executable, "-c", CHILD, os.path.abspath(tree), json.dumps(RUNS), json.dumps(BASE)],
                            capture_output=True, text=True, env=env, cwd=tempfile.mkdtemp())
    if result.returncode:
        raise SystemExit(f"error: the runs of {tree} failed: {result.stderr.strip().splitlines()[-1:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", help="a folder holding the earlier sdpg.py")
    parser.add_argument("after", help="a folder holding the later sdpg.py")
    args = parser.parse_args()
    before, after = run(args.before), run(args.after)
    worst, count = 0.0, 0
    for name in RUNS:
        for old, new in zip(before[name], after[name], strict=True):
            for key, value in old.items():
                other = new["reverse_kl" if key == "opd_kl" else key]
                if key in ("step_time", "rollout_time") or (value is None and other is None):
                    continue
                if value is None or other is None:
                    raise SystemExit(f"{name} step {old['step']}: {key} is {value} before and {other} after")
                worst, count = max(worst, abs(value - other)), count + 1
    print(f"{count} logged numbers over {sum(map(len, before.values()))} steps of {len(RUNS)} runs: "
          f"max |before − after| = {worst:.3g}")
    for label, runs in (("before", before), ("after", after)):
        times = [record["step_time"] for records in runs.values() for record in records]
        print(f"{label}: mean step time {sum(times) / len(times):.3f} s")


if __name__ == "__main__":
    main()
