"""Evaluate a model before and after SDPG, with the training prompt and verifier.

Reports mean@n accuracy (the paper's pass@1 at temperature 1.0, mean@32 in the paper),
unbiased pass@k, and greedy accuracy with --temperature 0 (the usual GSM8K number).

  python eval.py --model Qwen/Qwen2.5-0.5B-Instruct --dataset gsm8k --temperature 0
  python eval.py --compare Qwen/Qwen2.5-0.5B-Instruct runs/sdpg/final --n 8 --limit 500
  python eval.py --plot runs/grpo runs/sdpg --plot-output curves.png
"""

import argparse
import json
import math
import os
import time

import torch

import sdpg
from sdpg import fail


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k = 1 − C(n−c, k) / C(n, k) for c correct among n samples (Chen et al., 2021)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))  # the ratio of binomials, without overflow


def k_values(n: int) -> list[int]:
    """1, 2, 4, … up to n, and n itself."""
    return sorted({2**i for i in range(n.bit_length()) if 2**i <= n} | {n})


def evaluate(model, tokenizer, rows, n=1, temperature=0.0, max_new_tokens=512, batch_size=16, seed=0,
             device="cpu", autocast=None, desc="eval", strict=False):
    """(records, summary): one record per problem with its n completions, and the metrics over all."""
    from tqdm.auto import tqdm

    sdpg.seed_everything(seed)
    autocast = autocast or torch.autocast(torch.device(device).type, enabled=False)
    eos_ids, pad_id = sdpg.eos_token_ids(model, tokenizer), tokenizer.pad_token_id
    model.to(device).eval()
    records, lengths, started = [], [], time.time()
    for start in tqdm(range(0, len(rows), batch_size), desc=desc, dynamic_ncols=True):
        batch = rows[start:start + batch_size]
        prompts = [sdpg.build_prompt(tokenizer, row["question"]) for row in batch for _ in range(n)]  # training's student prompt
        prompt_ids, prompt_mask = sdpg.left_pad(prompts, pad_id, device)
        response_ids, response_mask = sdpg.sample_responses(model, prompt_ids, prompt_mask, eos_ids, pad_id,
                                                            max_new_tokens, temperature, autocast)
        completions = sdpg.decode_responses(tokenizer, response_ids, response_mask)
        truncated = sdpg.truncated_responses(response_ids, eos_ids).tolist()
        correct = sdpg.score_responses(completions, [row["answer"] for row in batch for _ in range(n)], truncated, strict)
        lengths += response_mask.sum(dim=1).tolist()
        for i, row in enumerate(batch):
            part = slice(i * n, (i + 1) * n)
            records.append(dict(question=row["question"], answer=row["answer"], completions=completions[part],
                                extracted=[sdpg.extract_answer(c, strict or cut) for c, cut in zip(completions[part], truncated[part])],
                                correct=correct[part], truncated=truncated[part],
                                formatted=[sdpg.has_answer_format(c) for c in completions[part]]))
    seconds = time.time() - started
    correct = [sum(r["correct"]) for r in records]
    summary = dict(accuracy=sum(correct) / (n * len(records)),
                   **{f"pass@{k}": sum(pass_at_k(n, int(c), k) for c in correct) / len(records) for k in k_values(n)},
                   format_rate=sum(sum(r["formatted"]) for r in records) / (n * len(records)),
                   truncated_frac=sum(sum(r["truncated"]) for r in records) / (n * len(records)),
                   mean_response_len=sum(lengths) / len(lengths), n=n, num_problems=len(records),
                   temperature=temperature, problems_per_second=len(records) / seconds)
    return records, summary


def write_results(path: str, records: list[dict], summary: dict):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.writelines(json.dumps(record) + "\n" for record in records)
    with open(path + ".summary.json", "w") as f:
        json.dump(summary, f, indent=2)


def format_table(summaries: dict[str, dict]) -> str:
    """metric | model A | (model B | B − A)."""
    names = list(summaries)
    header = ["metric"] + names + (["difference"] if len(names) == 2 else [])
    lines = [header]
    for key in summaries[names[0]]:
        values = [summaries[name][key] for name in names]
        row = [key] + [f"{v:.4f}" if isinstance(v, float) else str(v) for v in values]
        if len(names) == 2:
            row.append(f"{values[1] - values[0]:+.4f}")
        lines.append(row)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)) for line in lines)


CURVES = [("reward", "reward (mean accuracy)", "linear"), ("opd_kl", "OPD KL to teacher, gated tokens (E3)", "log"),
          ("ref_kl", "reference KL (E6)", "log"), ("entropy", "entropy (nats)", "linear"),
          ("response_len", "response length (tokens)", "linear")]


def run_labels(run_dirs: list[str]) -> list[str]:
    """Folder names, or the whole paths where two folder names clash (two `…/sdpg` runs stay two lines)."""
    names = [os.path.basename(os.path.normpath(d)) for d in run_dirs]
    return [name if names.count(name) == 1 else os.path.normpath(d) for name, d in zip(names, run_dirs)]


def plot_runs(run_dirs: list[str], output: str):
    """One panel per metric of metrics.jsonl, one line per run (e.g. GRPO vs SDPG). A metric a run never computed
    (null: GRPO's opd_kl and ref_kl) is left out of its panel rather than drawn as a measured zero."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        fail("--plot needs matplotlib, an optional dependency: pip install matplotlib")
    runs = {}
    for label, run_dir in zip(run_labels(run_dirs), run_dirs):
        path = os.path.join(run_dir, "metrics.jsonl")
        if not os.path.isfile(path):
            fail(f"{path} not found; pass the --output-dir of a sdpg.py run")
        runs[label] = sdpg.read_metrics(path)  # a half-written last line (run still going, or killed) is skipped
        if not runs[label]:
            fail(f"{path} holds no complete step yet; plot it once the run has logged a step")
    figure, axes = plt.subplots(1, len(CURVES), figsize=(4 * len(CURVES), 3.2))
    for axis, (key, title, scale) in zip(axes, CURVES):
        for index, (name, records) in enumerate(runs.items()):
            points = [(r["step"], r[key]) for r in records if r.get(key) is not None and (scale == "linear" or r[key] > 0)]
            if points:  # same colour for a run in every panel, even where it is absent from some
                axis.plot(*zip(*points), label=name, color=f"C{index}")
        axis.set_yscale(scale)
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("step")
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    figure.savefig(output, dpi=100)
    plt.close(figure)
    return output


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Evaluate models with SDPG's prompt and verifier.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", action="append", help="hub id, local directory, .gguf file or `tiny`; twice to compare")
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"), help="evaluate A and B on the same problems and seed")
    parser.add_argument("--dataset", default="gsm8k", help="gsm8k | math500 | arithmetic | arithmetic-easy | a .jsonl/.json/"
                        ".csv/.parquet file (e.g. ../shared/gsm8k/test.jsonl, ../shared/math500/test.jsonl)")
    parser.add_argument("--question-field", default="question", help="problem column of a local file (`problem` is "
                        "picked up by itself when there is no `question`, as in MATH-500)")
    parser.add_argument("--answer-field", default="answer", help="ground-truth column of a local file")
    parser.add_argument("--split", default="test", help="dataset split (math500 has only test)")
    parser.add_argument("--limit", type=int, default=0, help="first N problems only; 0 = all")
    parser.add_argument("--n", type=int, default=1, help="samples per problem (the paper: 32)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy; the paper samples at 1.0")
    parser.add_argument("--max-new-tokens", type=int, default=512, help="maximum response length in tokens")
    parser.add_argument("--batch-size", type=int, default=16, help="problems per generate call (each with n samples)")
    parser.add_argument("--seed", type=int, default=0, help="seeds sampling; the same for every model compared")
    parser.add_argument("--strict-format", action="store_true", help="only an explicit final answer counts (as sdpg.py "
                        "--strict-format); a response cut at --max-new-tokens is always graded so")
    parser.add_argument("--output", default="", help="per-problem JSONL; the summary goes to <output>.summary.json")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA) | bfloat16 | float32")
    parser.add_argument("--plot", nargs="+", metavar="RUN_DIR", help="plot metrics.jsonl of these sdpg.py runs instead")
    parser.add_argument("--plot-output", default="curves.png", help="PNG written by --plot")
    args = parser.parse_args(argv)
    args.models = args.compare or args.model or []
    if not args.plot and not args.models:
        fail("nothing to do: pass --model M, --compare A B or --plot RUN_DIR")
    if len(args.models) > 2:
        fail("at most two models at once (--compare A B)")
    if args.n < 1 or args.batch_size < 1 or args.limit < 0:
        fail(f"--n {args.n} and --batch-size {args.batch_size} must be ≥ 1, --limit ≥ 0")
    if args.temperature == 0 and args.n > 1:
        fail(f"--temperature 0 is greedy: its {args.n} samples would be identical; use --n 1 or a temperature > 0")
    if args.temperature < 0:
        fail("--temperature must be ≥ 0")
    return args


def main(args) -> dict:
    if args.plot:
        print(plot_runs(args.plot, args.plot_output))
        return {}
    device = sdpg.resolve_device(args.device)
    rows = sdpg.load_rows(args.dataset, args.question_field, args.answer_field, split=args.split)
    rows = rows[:args.limit] if args.limit else rows
    summaries = {}
    for index, name in enumerate(args.models):
        model, tokenizer = sdpg.load_model(name, seed=args.seed)
        records, summary = evaluate(model, tokenizer, rows, args.n, args.temperature, args.max_new_tokens, args.batch_size,
                                    args.seed, device, sdpg.make_autocast(device, args.dtype), desc=name,
                                    strict=args.strict_format)
        label = name if name not in summaries else f"{name} ({index + 1})"
        summaries[label] = summary
        if args.output:
            write_results(args.output if len(args.models) == 1 else f"{args.output}.{'AB'[index]}.jsonl", records, summary)
        del model
    print(format_table(summaries))
    return summaries


if __name__ == "__main__":
    main(parse_args())
