"""The README's seed table: held-out accuracy per arm as mean ± standard deviation over seeds, each SDPG arm's
difference from GRPO with a 95 % Welch t-interval over seeds, and a figure with every seed (thin) and each arm's
mean (thick).

Reads what experiments/smollm2_arithmetic.sh writes under docs/results/: one folder per run named ARM-sSEED
(config.json, metrics.jsonl, trained_by) and its summaries ARM-sSEED-{greedy,mean4-t0.3,mean4-t1}.summary.json.
Only runs trained by one and the same sdpg.py are compared (trained_by names it); a folder without trained_by
(a run from before the seed protocol) is listed and left out.

Why a t-interval over seeds: every model is scored on the same 100 held-out problems, so what varies between runs
of one arm is the training seed (data order, samples); the interval says how far apart the arms' means over
seeds could be, given the spread between seeds. With three seeds an arm it is wide (t = 2.78 at 4 degrees of
freedom with equal spreads): that width is the honest answer to "can three seeds separate the arms".

  python experiments/seed_table.py docs/results --figure docs/smollm2_curves.png
"""

import argparse
import json
import math
import os
import re
import statistics
import sys

EVALS = [("greedy", "greedy"), ("mean4-t0.3", "mean@4 τ=0.3"), ("mean4-t1", "mean@4 τ=1")]
CURVES = [("reward", "training reward (5-step mean)", "linear"), ("response_len", "response length", "linear"),
          ("reverse_kl", "reverse_kl (E3, gated tokens)", "log"), ("ref_kl", "ref_kl (E6)", "log")]
RUN_NAME = re.compile(r"(?P<arm>.+)-s(?P<seed>\d+)")
ARM_ORDER = ["grpo", "sdpg", "sdpg-beta0.1-nogate", "sdpg-lora16"]  # experiments/smollm2_arithmetic.sh's arms


def student_t_quantile(probability: float, dof: float) -> float:
    """The t distribution's quantile by bisection on its CDF (Simpson's rule over the density); no scipy needed."""
    log_norm = math.lgamma((dof + 1) / 2) - math.lgamma(dof / 2) - 0.5 * math.log(dof * math.pi)

    def density(x):
        return math.exp(log_norm - (dof + 1) / 2 * math.log1p(x * x / dof))

    def cdf(x, intervals=2000):
        h = x / intervals
        inner = sum((4 if i % 2 else 2) * density(i * h) for i in range(1, intervals))
        return 0.5 + h / 3 * (density(0) + inner + density(x))

    low, high = 0.0, 1000.0
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if cdf(middle) < probability else (low, middle)
    return (low + high) / 2


def welch_interval(a: list[float], b: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """mean(a) − mean(b) and its Welch t-interval (unequal variances, Welch–Satterthwaite degrees of freedom)."""
    difference = statistics.mean(a) - statistics.mean(b)
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    if va + vb == 0:
        return difference, difference, difference
    dof = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = student_t_quantile(1 - (1 - level) / 2, dof) * math.sqrt(va + vb)
    return difference, difference - half, difference + half


def read_runs(results: str) -> tuple[dict, list[str]]:
    """{arm: {seed: {"trained_by", "metrics", eval: summary}}} for runs with trained_by; names of those without."""
    runs, older = {}, []
    for name in sorted(os.listdir(results)):
        folder, match = os.path.join(results, name), RUN_NAME.fullmatch(name)
        if not (match and os.path.isfile(os.path.join(folder, "metrics.jsonl"))):
            continue
        if not os.path.isfile(os.path.join(folder, "trained_by")):
            older.append(name)
            continue
        runs.setdefault(match["arm"], {})[int(match["seed"])] = {**read_run(folder), **read_summaries(results, name)}
    ordered = sorted(runs, key=lambda arm: (ARM_ORDER.index(arm) if arm in ARM_ORDER else len(ARM_ORDER), arm))
    return {arm: runs[arm] for arm in ordered}, older


def read_run(folder: str) -> dict:
    """One run's {"trained_by": [commit, C, sdpg.py, BLOB], "metrics": [one record per step]} (paper_table.py too)."""
    with open(os.path.join(folder, "trained_by")) as file:
        run = {"trained_by": file.read().split()}
    with open(os.path.join(folder, "metrics.jsonl")) as file:
        run["metrics"] = [json.loads(line) for line in file if line.strip()]
    for record in run["metrics"]:  # E3's mean was logged as `opd_kl` until 2026-12 (sdpg.read_metrics does the same)
        if "opd_kl" in record:
            record["reverse_kl"] = record.pop("opd_kl")
    return run


def read_summaries(results: str, name: str) -> dict:
    """{eval: summary} of the model NAME (a run, or smollm2-base: the table's "before" row), those that exist."""
    summaries = {}
    for key, _ in EVALS:
        path = os.path.join(results, f"{name}-{key}.summary.json")
        if os.path.isfile(path):
            with open(path) as file:
                summaries[key] = json.load(file)
    return summaries


def one_trainer(runs: dict) -> str:
    """The sdpg.py blob that trained every run; exits with one line when two versions are mixed."""
    versions = {}
    for arm, seeds in runs.items():
        for seed, run in seeds.items():
            blob = run["trained_by"][run["trained_by"].index("sdpg.py") + 1]
            versions.setdefault(blob, []).append(f"{arm}-s{seed}")
    if len(versions) > 1:
        sys.exit("error: runs trained by different sdpg.py versions: " + "; ".join(
            f"{blob[:10]}: {', '.join(names)}" for blob, names in versions.items()) + " — retrain one group")
    return next(iter(versions), "")


def mean_sd(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:  # the seeds column says there is one
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def accuracies(seeds: dict, key: str, field: str) -> list[float]:
    return [run[key][field] for _, run in sorted(seeds.items()) if key in run and field in run[key]]


def tables(runs: dict, base: dict | None = None, baseline: str = "grpo") -> str:
    lines = ["| arm | seeds | " + " | ".join(f"{label} | strict" for _, label in EVALS) + " | format rate (greedy) |",
             "| --- | --- | " + " | ".join("--- | ---" for _ in EVALS) + " | --- |"]
    if base:
        cells = [mean_sd([base[key][field]] if field in base.get(key, {}) else [])
                 for key, _ in EVALS for field in ("accuracy", "strict_accuracy")]
        cells.append(mean_sd([base["greedy"]["format_rate"]] if "greedy" in base else []))
        lines.append("| base model, before training | – | " + " | ".join(cells) + " |")
    for arm, seeds in runs.items():
        cells = []
        for key, _ in EVALS:
            cells += [mean_sd(accuracies(seeds, key, "accuracy")), mean_sd(accuracies(seeds, key, "strict_accuracy"))]
        cells.append(mean_sd(accuracies(seeds, "greedy", "format_rate")))
        lines.append(f"| {arm} | {', '.join(map(str, sorted(seeds)))} | " + " | ".join(cells) + " |")
    if baseline in runs and (len(runs[baseline]) < 2 or all(len(seeds) < 2 for seeds in runs.values())):
        lines += ["", f"No difference from {baseline} with an interval yet: that needs two seeds of an arm and of "
                  f"{baseline}."]
    elif baseline in runs:
        lines += ["", f"Difference from {baseline}, mean over seeds and 95 % Welch t-interval over seeds:", "",
                  "| arm | " + " | ".join(f"{label} | strict" for _, label in EVALS) + " |",
                  "| --- | " + " | ".join("--- | ---" for _ in EVALS) + " |"]
        for arm, seeds in runs.items():
            if arm == baseline:
                continue
            cells = []
            for key, _ in EVALS:
                for field in ("accuracy", "strict_accuracy"):
                    a, b = accuracies(seeds, key, field), accuracies(runs[baseline], key, field)
                    if len(a) < 2 or len(b) < 2:
                        cells.append("– (needs 2 seeds each)")
                        continue
                    difference, low, high = welch_interval(a, b)
                    cells.append(f"{difference:+.3f} [{low:+.3f}, {high:+.3f}]")
            lines.append(f"| {arm} − {baseline} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_run_table(runs: dict) -> str:
    lines = ["| run | " + " | ".join(f"{label} | strict" for _, label in EVALS)
             + " | training reward, first → last 10 steps | response length, last 10 | median s/step |",
             "| --- | " + " | ".join("--- | ---" for _ in EVALS) + " | --- | --- | --- |"]
    for arm, seeds in runs.items():
        for seed, run in sorted(seeds.items()):
            cells = []
            for key, _ in EVALS:
                summary = run.get(key, {})
                cells += [f"{summary['accuracy']:.3f}" if summary else "–",
                          f"{summary['strict_accuracy']:.3f}" if "strict_accuracy" in summary else "–"]
            metrics = run["metrics"]
            reward = [m["reward"] for m in metrics]
            length = [m["response_len"] for m in metrics[-10:]]
            cells += [f"{statistics.mean(reward[:10]):.2f} → {statistics.mean(reward[-10:]):.2f} "
                      f"({len(metrics)} steps)",
                      f"{statistics.mean(length):.0f}", f"{statistics.median(m['step_time'] for m in metrics):.0f}"]
            lines.append(f"| {arm}-s{seed} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def moving_mean(values: list[float], window: int = 5) -> list[float]:
    return [statistics.mean(values[max(0, i - window + 1):i + 1]) for i in range(len(values))]


def figure(runs: dict, output: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CURVES), figsize=(4.2 * len(CURVES), 3.4))
    for axis, (key, title, scale) in zip(axes, CURVES):
        for index, (arm, seeds) in enumerate(runs.items()):
            curves = []
            for run in seeds.values():
                values = {m["step"]: m[key] for m in run["metrics"] if m.get(key) is not None}
                if key == "reward":
                    values = dict(zip(values, moving_mean(list(values.values()))))
                if scale == "log":
                    values = {step: value for step, value in values.items() if value > 0}
                if values:
                    axis.plot(list(values), list(values.values()), color=f"C{index}", alpha=0.3, linewidth=0.8)
                    curves.append(values)
            steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
            if steps:  # the arm's mean over seeds, at the steps every seed logged
                axis.plot(steps, [statistics.mean(c[s] for c in curves) for s in steps], color=f"C{index}",
                          linewidth=2.2, label=f"{arm} ({len(curves)} seed{'s' if len(curves) > 1 else ''})")
        axis.set_yscale(scale)
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("step")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(output, dpi=100)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", help="the folder with the runs and summaries (docs/results)")
    parser.add_argument("--figure", help="also write the training-curve figure (PNG) here; needs matplotlib")
    args = parser.parse_args()
    if not os.path.isdir(args.results):
        sys.exit(f"error: {args.results!r} is not a folder; pass the folder experiments/smollm2_arithmetic.sh wrote")
    runs, older = read_runs(args.results)
    if not runs:
        sys.exit(f"error: no run with trained_by in {args.results!r}; run experiments/smollm2_arithmetic.sh first")
    blob = one_trainer(runs)
    print(f"Runs trained by sdpg.py blob {blob[:10]} (commits: "
          f"{', '.join(sorted({run['trained_by'][1][:7] for seeds in runs.values() for run in seeds.values()}))})"
          + (f"; left out (trained before the seed protocol): {', '.join(older)}" if older else "") + "\n")
    print(tables(runs, read_summaries(args.results, "smollm2-base")) + "\n\nPer run:\n\n" + per_run_table(runs))
    if args.figure:
        figure(runs, args.figure)


if __name__ == "__main__":
    main()
