"""Evaluate a model before and after SDPG, with the training prompt and verifier.

Reports mean@n accuracy (the paper's pass@1 at temperature 1.0, mean@32 in the paper), unbiased pass@k, greedy
accuracy with --temperature 0 (the usual GSM8K number), and the strict-format accuracy (only an explicit final
answer counts, as the authors' scorer). Several datasets at once print the paper's table: a row per model, a
column per dataset.

  python eval.py --model Qwen/Qwen2.5-0.5B-Instruct --dataset gsm8k --temperature 0
  python eval.py --compare Qwen/Qwen2.5-0.5B-Instruct runs/sdpg/final --n 8 --limit 500
  python eval.py --compare BASE runs/sdpg/final --dataset aime24,aime25,amc23 --n 32 --temperature 1.0 \
      --max-new-tokens 4096      # the paper's protocol
  python eval.py --plot runs/grpo runs/sdpg --plot-output runs/curves.png
  python eval.py --inspect runs/sdpg --dataset gsm8k --index 3 --output runs/inspect.html   # inspect_page.py
"""

import argparse
import json
import math
import os
import sys
import time


import inspect_page
import sdpg
from inspect_page import training_settings
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
             device="cpu", desc="eval", strict=False, style="qwen"):
    """(records, summary): one record per problem with its n completions, and the metrics over all."""
    from tqdm.auto import tqdm

    sdpg.seed_everything(seed)
    eos_ids, pad_id = sdpg.eos_token_ids(model, tokenizer), tokenizer.pad_token_id
    model.to(device).eval()
    records, lengths, verifier_errors, started = [], [], 0, time.time()
    for start in tqdm(range(0, len(rows), batch_size), desc=desc, dynamic_ncols=True):
        batch = rows[start:start + batch_size]
        # training's student prompt, token for token
        prompts = [sdpg.build_prompt(tokenizer, row["question"], style=style) for row in batch for _ in range(n)]
        prompt_ids, prompt_mask = sdpg.left_pad(prompts, pad_id, device)
        response_ids, response_mask = sdpg.sample_responses(model, tokenizer, dict(prompt_ids=prompt_ids,
                                                            prompt_mask=prompt_mask), max_new_tokens, temperature)
        completions = sdpg.decode_responses(tokenizer, response_ids, response_mask)
        truncated = sdpg.truncated_responses(response_ids, eos_ids).tolist()
        answers = [row["answer"] for row in batch for _ in range(n)]
        correct, errors = sdpg.score_responses(completions, answers, truncated, strict)
        # graded again only when it differs (and a verifier error is then counted once, from the first pass)
        strict_correct = correct if strict else sdpg.score_responses(completions, answers, truncated, strict=True)[0]
        verifier_errors += errors
        lengths += response_mask.sum(dim=1).tolist()
        for i, row in enumerate(batch):
            part = slice(i * n, (i + 1) * n)
            records.append(dict(question=row["question"], answer=row["answer"], completions=completions[part],
                                extracted=[extract(c, strict or cut)
                                           for c, cut in zip(completions[part], truncated[part])],
                                correct=correct[part], strict_correct=strict_correct[part], truncated=truncated[part],
                                formatted=[sdpg.has_answer_format(c) for c in completions[part]]))
    seconds = time.time() - started
    correct, samples = [sum(r["correct"]) for r in records], n * len(records)
    summary = dict(accuracy=sum(correct) / samples,
                   **{f"pass@{k}": sum(pass_at_k(n, int(c), k) for c in correct) / len(records) for k in k_values(n)},
                   strict_accuracy=sum(sum(r["strict_correct"]) for r in records) / samples,
                   format_rate=sum(sum(r["formatted"]) for r in records) / samples,
                   truncated_frac=sum(sum(r["truncated"]) for r in records) / samples,
                   mean_response_len=sum(lengths) / len(lengths), n=n, num_problems=len(records),
                   temperature=temperature, verifier_errors=verifier_errors,
                   problems_per_second=len(records) / seconds)
    return records, summary


def extract(completion: str, strict: bool) -> str | None:
    """The answer the verifier read, for the JSONL (None where it failed; score_responses already said why)."""
    try:
        return sdpg.extract_answer(completion, strict)
    except Exception:  # noqa: BLE001
        return None


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


CURVES = [("reward", "reward (mean accuracy)", "linear"), ("reverse_kl", "E3 reverse KL, gated tokens", "log"),
          ("ref_kl", "reference KL (E6)", "log"), ("entropy", "entropy (nats)", "linear"),
          ("response_len", "response length (tokens)", "linear")]


def run_labels(run_dirs: list[str]) -> list[str]:
    """Folder names, or the whole paths where two folder names clash (two `…/sdpg` runs stay two lines)."""
    names = [os.path.basename(os.path.normpath(d)) for d in run_dirs]
    return [name if names.count(name) == 1 else os.path.normpath(d) for name, d in zip(names, run_dirs)]


def plot_runs(run_dirs: list[str], output: str):
    """One panel per metric of metrics.jsonl, one line per run (e.g. GRPO vs SDPG). A metric a run never computed
    (null: GRPO's reverse_kl and ref_kl) is left out of its panel rather than drawn as a measured zero."""
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
            points = [(r["step"], r[key]) for r in records
                      if r.get(key) is not None and (scale == "linear" or r[key] > 0)]
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


def paper_table(summaries: dict[str, dict[str, dict]]) -> str:
    """The paper's layout: one row per model, one column group per dataset: mean@n, pass@n, strict accuracy."""
    models = list(summaries)
    datasets = list(summaries[models[0]])
    header = ["model"]
    for name in datasets:
        n = summaries[models[0]][name]["n"]
        header += [f"{name} mean@{n}", f"pass@{n}", "strict"]
    lines = [header]
    for model in models:
        row = [model]
        for name in datasets:
            summary = summaries[model][name]
            pass_at_n = summary[f"pass@{summary['n']}"]
            row += [f"{summary['accuracy']:.3f}", f"{pass_at_n:.3f}", f"{summary['strict_accuracy']:.3f}"]
        lines.append(row)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)) for line in lines)


def dataset_label(name: str) -> str:
    """A column name: the dataset's name, or a local file's name without folder and extension."""
    return os.path.splitext(os.path.basename(name))[0] if os.path.splitext(name)[1] else name


def output_path(base: str, dataset: str, model_index: int, datasets: int, models: int) -> str:
    """--output as given for one model on one dataset; else <output>.<dataset>.<A|B>.jsonl."""
    parts = ([dataset_label(dataset)] if datasets > 1 else []) + (["AB"[model_index]] if models > 1 else [])
    return ".".join([base, *parts, "jsonl"]) if parts else base


def given(argv: list[str], flag: str) -> bool:
    return any(word == flag or word.startswith(flag + "=") for word in argv)


def parse_args(argv=None):
    """One parser per mode, each with its own flags: --inspect MODEL (inspect_page.py's), --plot RUN_DIR … (with
    --plot-output), else evaluation (--model, --compare)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if given(argv, "--inspect"):
        return argparse.Namespace(**vars(inspect_page.parse_args(argv)), mode="inspect")
    if given(argv, "--plot"):
        parser = argparse.ArgumentParser(description="Plot the metrics.jsonl of sdpg.py runs, one line per run.",
                                         formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)
        parser.add_argument("--plot", nargs="+", required=True, metavar="RUN_DIR", help="sdpg.py --output-dir folders")
        parser.add_argument("--plot-output", default="runs/curves.png", help="the image written: .png, .pdf or .svg")
        args = parser.parse_args(argv)
        if os.path.splitext(args.plot_output)[1].lower() not in (".png", ".pdf", ".svg"):
            fail(f"--plot-output {args.plot_output!r}: name an image file ending in .png, .pdf or .svg")
        return argparse.Namespace(**vars(args), mode="plot")
    parser = argparse.ArgumentParser(description="Evaluate models with SDPG's prompt and verifier. Two other modes "
                                     "own their flags: --plot RUN_DIR … (curves of runs) and --inspect MODEL (the "
                                     "token page, inspect_page.py).",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)
    parser.add_argument("--model", action="append", help="hub id, local directory, sdpg.py run folder (its final/), "
                        ".gguf file or `tiny`; twice to compare")
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"), help="evaluate A and B on the same problems and seed")
    parser.add_argument("--dataset", default=None, help="one or several, comma-separated: gsm8k | math500 | aime24 "
                        "| aime25 | amc23 (from the Hub) | arithmetic | arithmetic-easy | a .jsonl/.json/.csv/.parquet "
                        "file with the fields `question` (or `problem`) and `answer`; default: the dataset of the "
                        "first sdpg.py run folder among the models (its test split), else gsm8k")
    parser.add_argument("--question-field", default="question", help="problem column of a local file (`problem` is "
                        "picked up by itself when there is no `question`, as in MATH-500 and AIME)")
    parser.add_argument("--answer-field", default="answer", help="ground-truth column of a local file")
    parser.add_argument("--split", default="test", help="dataset split (math500, aime and amc have one split)")
    parser.add_argument("--limit", type=int, default=0, help="first N problems only; 0 = all")
    parser.add_argument("--n", type=int, default=1, help="samples per problem (the paper: 32)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy; the paper samples at 1.0")
    parser.add_argument("--max-new-tokens", type=int, default=512, help="maximum response length in tokens")
    parser.add_argument("--batch-size", type=int, default=16, help="problems per generate call (each with n samples)")
    parser.add_argument("--seed", type=int, default=0, help="seeds sampling; the same for every model compared")
    parser.add_argument("--strict-format", action="store_true", help="only an explicit final answer counts for "
                        "`accuracy` (as sdpg.py --strict-format; `strict_accuracy` is always reported); a response cut "
                        "at --max-new-tokens is always graded so")
    parser.add_argument("--output", default="", help="per-problem JSONL; the summary goes to <output>.summary.json "
                        "(several datasets or models: <output>.<dataset>.<A|B>.jsonl)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA) | bfloat16 | float32")
    parser.add_argument("--student-prompt", default=None, help="qwen | paper (sdpg.py --student-prompt); default: "
                        "the run's own for a run folder, else qwen")
    args = parser.parse_args(argv)
    args.mode = "evaluate"
    args.models = args.compare or args.model or []
    if args.dataset is None:  # a run folder is evaluated on its own data, as sdpg.py --model RUN_FOLDER trains on it
        run = next(filter(None, map(sdpg.run_config, args.models)), {})  # the first run folder's config
        args.dataset = run.get("eval_dataset") or run.get("dataset") or "gsm8k"
        if run:
            trained_on = " (a local file: the problems the run trained on)" if not run.get("eval_dataset") and \
                os.path.splitext(args.dataset)[1] else f" (split {args.split})"
            print(f"evaluating on {args.dataset}{trained_on}, the run's own data; --dataset to choose")
    args.datasets = [name.strip() for name in args.dataset.split(",") if name.strip()]
    if args.student_prompt not in (None, *sdpg.STUDENT_PROMPTS):
        fail(f"--student-prompt {args.student_prompt!r} is unknown; choose one of {', '.join(sdpg.STUDENT_PROMPTS)}")
    if args.output and os.path.isdir(args.output):
        fail(f"--output {args.output!r} is a folder; name a file for the per-problem JSONL, e.g. "
             f"{os.path.join(args.output, 'eval.jsonl')}")
    if not args.models:
        fail("nothing to do: pass --model M, --compare A B, --inspect MODEL or --plot RUN_DIR")
    if len(args.models) > 2:
        fail("at most two models at once (--compare A B)")
    for flag, value, least in (("--n", args.n, 1), ("--batch-size", args.batch_size, 1), ("--limit", args.limit, 0),
                               ("--max-new-tokens", args.max_new_tokens, 1)):
        if value < least:
            fail(f"{flag} {value} must be ≥ {least}")
    if args.temperature == 0 and args.n > 1:
        fail(f"--temperature 0 is greedy: its {args.n} samples would be identical; use --n 1 or a temperature > 0")
    if args.temperature < 0:
        fail(f"--temperature {args.temperature} must be ≥ 0")
    return args


def main(args) -> dict:
    """{model: {dataset: summary}}; prints a metric table per dataset (with the difference for two models) and the
    paper's table."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # problems are independent: processes need not talk
        fail("eval.py runs as one process; to use several GPUs run one per dataset or model, e.g. "
             "CUDA_VISIBLE_DEVICES=0 python eval.py --dataset aime24 … & CUDA_VISIBLE_DEVICES=1 python eval.py "
             "--dataset aime25 …")
    if args.mode == "plot":
        print(plot_runs(args.plot, args.plot_output))
        return {}
    if args.mode == "inspect":
        return inspect_page.main(args)
    device = sdpg.resolve_device(args.device)
    sdpg.ctx = sdpg.make_autocast(device, args.dtype)  # the compute context of every forward, as in training
    tables = {name: sdpg.load_rows(name, args.question_field, args.answer_field, split=args.split)
              for name in args.datasets}  # every dataset read before the first model loads: errors come first
    tables = {name: rows[:args.limit] if args.limit else rows for name, rows in tables.items()}
    summaries = {}
    for index, name in enumerate(args.models):
        model, tokenizer = sdpg.load_model(name, seed=args.seed)
        label = name if name not in summaries else f"{name} ({index + 1})"
        summaries[label] = {}
        for dataset, rows in tables.items():
            style = args.student_prompt or training_settings(name)["student_prompt"]  # the prompt it trained with
            records, summary = evaluate(model, tokenizer, rows, args.n, args.temperature, args.max_new_tokens,
                                        args.batch_size, args.seed, device,
                                        desc=f"{name} · {dataset_label(dataset)}", strict=args.strict_format,
                                        style=style)
            summaries[label][dataset_label(dataset)] = summary
            if args.output:
                write_results(output_path(args.output, dataset, index, len(tables), len(args.models)), records, summary)
        del model
    for dataset in summaries[next(iter(summaries))]:
        print(f"\n{dataset}\n" + format_table({model: per[dataset] for model, per in summaries.items()}))
    print("\n" + paper_table(summaries))
    return summaries


if __name__ == "__main__":
    main(parse_args())
