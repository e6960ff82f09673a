"""Seconds per training step: sdpg.py vs TRL's SDPOTrainer and GRPOTrainer, and SDPG's overhead over GRPO at
gate fractions 100 % (--no-gate), about 50 % and 0 %, each beside its FLOP expectation.

Same tiny model (tiny.build_tiny_model), same prompts (the arithmetic task with sdpg's student
prompt; TRL's teacher gets the same privileged context), same group size, completion length and
one optimizer update per step. TRL is only needed here: pip install trl (tested with 1.16.0).

  python benchmarks/speed.py                  # CPU: B=4 prompts, G=8, 128 new tokens, 6 steps
  python benchmarks/speed.py --vocab 151936   # the same with Qwen's vocabulary size
  python benchmarks/speed.py --skip-trl       # only our SDPG vs our β = α = 0 step

The random tiny model earns no reward, so the gate is set by a stand-in verifier: every response rewarded 0
(gate 0 %), every other response rewarded 1 (each group of 8 has 4 with A > 0: gate 50 %), or --no-gate (100 %).
The GRPO baseline runs before and after every SDPG run (four times); each SDPG run is divided by the mean of the
two GRPO runs around it, so a machine that drifts faster or slower biases no ratio; all four are printed (the noise).
"""
import argparse
import copy
import itertools
import os
import statistics
import sys
import tempfile
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
warnings.filterwarnings("ignore")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import sdpg  # noqa: E402
import tiny  # noqa: E402
import torch  # noqa: E402


def save_model(vocab_size: int, hidden_size: int, path: str) -> str:
    """The tiny model, its embedding optionally grown to `vocab_size` (ids past the tokenizer's 259
    decode to nothing): the vocabulary projection then costs what Qwen's 151 936 entries cost. With
    `hidden_size` its two layers take that width (896 and 14 heads of 64 = Qwen2.5-0.5B's), so the matmuls
    weigh against the vocabulary-sized elementwise work as they do in the real model."""
    model, tokenizer = tiny.build_tiny_model(seed=0)
    if hidden_size:
        config = copy.deepcopy(model.config)
        config.update(dict(hidden_size=hidden_size, intermediate_size=hidden_size * 11 // 2,
                           num_attention_heads=hidden_size // 64, num_key_value_heads=2, head_dim=64))
        torch.manual_seed(0)
        model = type(model)(config)
    if vocab_size > model.config.vocab_size:
        model.resize_token_embeddings(vocab_size, mean_resizing=False)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# (a hash of the response text would not do: ids past the tokenizer's 259 decode to nothing, so most responses
# of the large-vocabulary model are the same empty string and their groups have no variance)
GATES = {"0 %": lambda completion, answer, strict=False: 0.0,
         "50 %": lambda completion, answer, strict=False, calls=itertools.count(): float(next(calls) % 2)}


def ours(args, beta, alpha, output_dir, gate="0 %"):
    """Median step time and update time (s, step minus generation), mean response length, mean gate fraction."""
    sdpg.verify = GATES.get(gate, GATES["0 %"])  # stand-in verifier: decides which rollouts have A > 0
    cfg = sdpg.parse_config(["--model", args.model_dir, "--dataset", "arithmetic", "--steps", str(args.steps),
                             "--batch-size", str(args.prompts), "--group-size", str(args.group_size),
                             "--micro-batch-size", str(args.prompts * args.group_size),
                             "--max-new-tokens", str(args.tokens),
                             "--beta", str(beta), "--alpha", str(alpha), "--beta-warmup-steps", "0",
                             "--beta-decay-steps", "0", "--device", args.device, "--output-dir", output_dir]
                            + (["--no-gate"] if gate == "100 %" else []))
    history = sdpg.main(cfg)[1:]
    return (statistics.median(r["step_time"] for r in history),
            statistics.median(r["step_time"] - r["rollout_time"] for r in history),
            statistics.mean(r["response_len"] for r in history),
            statistics.mean(r["gate_frac"] or 0.0 for r in history))  # null where β = 0: no E3


def trl_run(args, kind, output_dir):
    """Median step time (s) and mean completion length of TRL's trainer on the same model and prompts."""
    import datasets
    from transformers import TrainerCallback

    rows = sdpg.arithmetic_rows(64)
    dataset = datasets.Dataset.from_list([
        {"prompt": [{"role": "user", "content": f"{r['question']}\n{sdpg.INSTRUCTION}"}],
         "answer": r["answer"], "privileged_context": sdpg.ANSWER_CONTEXT.format(answer=r["answer"])} for r in rows])

    def reward(completions, answer, **_):
        return [sdpg.verify(c[0]["content"] if isinstance(c, list) else c, a) for c, a in zip(completions, answer)]

    common = dict(output_dir=output_dir, per_device_train_batch_size=args.prompts * args.group_size,
                  num_generations=args.group_size, max_completion_length=args.tokens, gradient_accumulation_steps=1,
                  learning_rate=1e-6, max_steps=args.steps, temperature=1.0, top_k=0, top_p=1.0, beta=0.001,
                  logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, bf16=False, seed=0)
    if kind == "sdpo":
        from trl.experimental.sdpo import SDPOConfig, SDPOTrainer

        config = SDPOConfig(**common, distillation_mode="full_logits", teacher_model_kind="live",
                            distillation_weight=0.5, include_environment_feedback=True)
        trainer_class = SDPOTrainer
    else:
        from trl import GRPOConfig, GRPOTrainer

        config, trainer_class = GRPOConfig(**common), GRPOTrainer

    stamps = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *_, **__):
            stamps.append(time.time()) if not stamps else None

        def on_step_end(self, *_, **__):
            stamps.append(time.time())

    tokenizer = sdpg.load_model(args.model_dir)[1]
    trainer = trainer_class(model=args.model_dir, reward_funcs=reward, args=config, train_dataset=dataset,
                            processing_class=tokenizer, callbacks=[Clock()])
    trainer.train()
    lengths = [log["completions/mean_length"] for log in trainer.state.log_history if "completions/mean_length" in log]
    steps = [b - a for a, b in zip(stamps, stamps[1:])]
    return statistics.median(steps[1:]), statistics.mean(lengths) if lengths else float("nan")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=4, help="prompts per step (B)")
    parser.add_argument("--group-size", type=int, default=8, help="G")
    parser.add_argument("--tokens", type=int, default=128, help="max new tokens")
    parser.add_argument("--steps", type=int, default=6, help="steps per run; the first is not timed")
    parser.add_argument("--vocab", type=int, default=0,
                        help="grow the tiny model's 259-entry vocabulary to this; 151936 = Qwen's")
    parser.add_argument("--hidden", type=int, default=0,
                        help="give the tiny model's two layers this width; 896 = Qwen2.5-0.5B's")
    parser.add_argument("--skip-trl", action="store_true", help="only our SDPG vs GRPO-mode step")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (bf16 autocast, as sdpg.py's default there); "
                        "TRL runs only on the CPU here, so --device cuda needs --skip-trl")
    args = parser.parse_args()
    if args.device != "cpu" and not args.skip_trl:
        parser.error("--device cuda compares sdpg.py with itself only: add --skip-trl")

    work = tempfile.mkdtemp()
    # TRL builds its reference model from a path
    args.model_dir = save_model(args.vocab, args.hidden, os.path.join(work, "model"))
    model, tokenizer = sdpg.load_model(args.model_dir)
    vocab = model.config.vocab_size
    results, updates, grpo_runs = {}, {}, []
    grpo = lambda: grpo_runs.append(ours(args, 0.0, 0.0, os.path.join(work, f"grpo{len(grpo_runs)}")))  # noqa: E731
    grpo()
    for gate in ("100 %", "50 %", "0 %"):
        seconds, update, length, fraction = ours(args, 0.001, 0.001, os.path.join(work, f"sdpg{len(updates)}"), gate)
        grpo()
        results[f"sdpg.py SDPG, gate {gate}"] = (seconds, length)
        updates[gate] = (update, length, fraction, statistics.mean(run[1] for run in grpo_runs[-2:]))
    grpo_time, grpo_len = (statistics.mean(run[i] for run in grpo_runs) for i in (0, 2))
    results = {"sdpg.py β = α = 0 (GRPO/DAPO), mean of 4": (grpo_time, grpo_len), **results}
    sdpg_time = results["sdpg.py SDPG, gate 100 %"][0]
    if not args.skip_trl:
        results["TRL SDPOTrainer (full_logits, live teacher)"] = trl_run(args, "sdpo", os.path.join(work, "trl-sdpo"))
        results["TRL GRPOTrainer"] = trl_run(args, "grpo", os.path.join(work, "trl-grpo"))

    where = f"CPU, {torch.get_num_threads()} threads" if args.device == "cpu" else torch.cuda.get_device_name()
    print(f"\n{where}; tiny Qwen2 (H={model.config.hidden_size}, 2 layers, V={vocab}); B={args.prompts} prompts × "
          f"G={args.group_size}, ≤{args.tokens} new tokens, 1 optimizer update per step; "
          f"median of steps 2..{args.steps}")
    print(f"{'trainer':<46} {'s/step':>8} {'mean len':>9} {'÷ SDPG 100 %':>13}")
    for name, (seconds, length) in results.items():
        print(f"{name:<46} {seconds:>8.3f} {length:>9.1f} {seconds / sdpg_time:>13.2f}")
    if not args.skip_trl:
        key = "TRL SDPOTrainer (full_logits, live teacher)"
        print(f"sdpg.py SDPG step / TRL SDPO step = {sdpg_time / results[key][0]:.2f}  (target ≤ 0.5)")

    # Overhead of SDPG's extra passes against the FLOPs of the update (generation excluded). Per token a forward
    # costs 2·N FLOPs: N = the decoder's parameters at every position, H·V for the vocabulary projection, which only
    # response positions get. The update is forward + recompute + backward (×4, GRPO and SDPG alike); SDPG adds
    # the reference forward (every row) and, for the rows whose gate is open, the teacher forward plus the teacher
    # projection again in the chunk's backward recompute. Response lengths differ a little between runs (sampling),
    # so each expectation uses its own run's length.
    rows = sdpg.tokenize_rows(tokenizer, sdpg.arithmetic_rows(64), "paper", 10**6)
    prompt, teacher = (statistics.mean(len(r[key]) for r in rows) for key in ("prompt_ids", "teacher_ids"))
    head = model.config.hidden_size * model.config.vocab_size
    body = sum(p.numel() for p in model.parameters()) - head  # tied embedding: the head is counted once

    def flops(response, gate_fraction):
        base = 4 * (body * (prompt + response) + head * response)
        reference = body * (prompt + response) + head * response
        teacher_pass = body * (teacher + response) + 2 * head * response
        return base, base + reference + gate_fraction * teacher_pass

    grpo_base = flops(grpo_len, 0)[0]
    print(f"\nupdate time (step − generation), SDPG (β = α = 0.001) ÷ GRPO (β = α = 0) around it; the four GRPO runs: "
          f"{', '.join(f'{run[1]:.2f}' for run in grpo_runs)} s; "
          f"prompt {prompt:.0f}, teacher prompt {teacher:.0f} tokens")
    print(f"{'gate':<8} {'open':>6} {'SDPG s':>8} {'GRPO s':>8} {'ratio':>7} {'FLOP expectation':>17} "
          f"{'ratio ÷ expectation':>20}")
    for gate in ("100 %", "50 %", "0 %"):
        seconds, length, fraction, grpo_seconds = updates[gate]
        base, total = flops(length, fraction)
        measured, expected = seconds / grpo_seconds, total / base * base / grpo_base
        print(f"{gate:<8} {fraction:>6.2f} {seconds:>8.2f} {grpo_seconds:>8.2f} {measured:>7.2f} {expected:>17.2f} "
              f"{measured / expected:>20.2f}")


if __name__ == "__main__":
    main()
