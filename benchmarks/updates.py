"""What the authors' 8 updates per rollout batch cost against one: the same run (same seed, same rollouts at step
0) with --mini-batch-size B (one update, ratio ≡ 1) and with the default (B/8 prompts per update: a π_old pass over
the batch, then 8 forward/backward passes over an eighth each and 8 AdamW steps).

    python benchmarks/updates.py                                  # tiny
    python benchmarks/updates.py --model PATH/SmolLM2-135M-Instruct.Q4_1.gguf --steps 2

Prints the mean step time of each (the first step aside when there are more) and their ratio. Time it on a quiet
machine: the two runs share it one after the other.
"""

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import sdpg  # noqa: E402


def mean_step_time(model: str, steps: int, batch_size: int, mini_batch_size: int | None, device: str) -> tuple:
    cfg = sdpg.Config(model=model, dataset="arithmetic-easy", steps=steps, batch_size=batch_size, group_size=4,
                      mini_batch_size=mini_batch_size, max_new_tokens=64, lr=1e-5, warmup_steps=0, device=device,
                      output_dir=os.path.join(tempfile.mkdtemp(), "run"))
    history = sdpg.main(cfg)
    timed = history[1:] or history
    return (sum(r["step_time"] for r in timed) / len(timed), sum(r["rollout_time"] for r in timed) / len(timed),
            cfg.batch_size // cfg.mini_batch_size)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="tiny, a .gguf file, a local folder or a hub id")
    parser.add_argument("--steps", type=int, default=3, help="steps per run (the first is not timed when > 1)")
    parser.add_argument("--batch-size", type=int, default=8, help="B prompts per step (G = 4, 64 new tokens)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    one = mean_step_time(args.model, args.steps, args.batch_size, args.batch_size, args.device)
    default = mean_step_time(args.model, args.steps, args.batch_size, None, args.device)
    for label, (step, rollout, updates) in (("one update", one), ("default", default)):
        print(f"{label:>10}: {updates} update(s) per step, {step:.2f} s a step ({rollout:.2f} s of it generating)")
    print(f"default / one update: {default[0] / one[0]:.2f}× the step time "
          f"({(default[0] - default[1]) / (one[0] - one[1]):.2f}× outside generation)")


if __name__ == "__main__":
    main()
