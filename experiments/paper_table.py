"""The paper's Table 1 and Figure 3 in miniature, from what experiments/paper_methods.sh writes under
docs/results/paper/: one folder per run named METHOD-sSEED (config.json, metrics.jsonl, trained_by, machine) and its
summaries METHOD-sSEED-{greedy,mean4}.summary.json (eval.py on the held-out problems).

Table 1's "last" and "best" are the held-out accuracy measured during training (--eval-every 10: greedy, strict, the
first --eval-problems test problems, 50 in the v1 grid and 100 in the paired one) after the last step and at its
best evaluation; the final columns are eval.py's (100 problems in v1, 200 in the paired grid). Mean ± sd over seeds;
each method's difference from GRPO with a 95 % Welch t-interval over seeds (every model answers the same problems,
so what varies between runs of a method is the training seed); with --paired (the paired grid, where each seed trains
every arm) the README table's difference is the paired t-interval, and the paired table reads every pair seed by
seed. Figure 3: held-out accuracy, training reward, entropy and response length against step, a colour per method,
every seed thin and the mean over seeds thick. The dynamics table carries the numbers the paper's claims are read
against.

  python experiments/paper_table.py docs/results/paper --base docs/results/paper/pilot/base-arithmetic-paper.jsonl \
      --figure docs/paper_curves.png
  python experiments/paper_table.py docs/results/paired --paired
"""

import argparse
import json
import math
import os
import re
import statistics
import sys

from seed_table import RUN_NAME, moving_mean, one_trainer, read_run, student_t_quantile, welch_interval

METHODS = {"grpo": "GRPO", "rlsd": "RLSD", "opcd": "OPCD", "sdpg": "SDPG-URKL", "sdpg-ufkl": "SDPG-UFKL",
           "sdpg-a0": "SDPG-URKL, α = 0", "sdpg-b0": "SDPG, β = 0"}
# the paired grid's comparisons (docs/results/paired): each seed trains both arms, so a difference is read seed by
# seed. SDPG − SDPG β = 0 isolates distillation; SDPG β = 0 − GRPO isolates clip-higher (0.28 against 0.2).
PAIRS = [("sdpg", "grpo"), ("sdpg", "sdpg-b0"), ("sdpg-b0", "grpo"), ("rlsd", "grpo"), ("sdpg-ufkl", "sdpg")]
# the paper's ablations: an arm and the method it changes one setting of. They are not Figure 3's or the README's
# methods; they are compared with their method seed by seed (ablation())
ABLATIONS = {"sdpg-a0": "sdpg"}
CURVES = [("heldout_accuracy", "held-out accuracy (greedy, strict{during})"),
          ("reward", "training reward (5-step mean)"), ("entropy", "entropy (5-step mean)"),
          ("response_len", "response length (5-step mean)")]


STARTED = re.compile(r"\S+Z [^:]*: ")


def read_runs(results: str) -> dict:
    """{method: {seed: run}} for every METHOD-sSEED folder with metrics.jsonl and trained_by, in METHODS' order."""
    runs = {}
    for name in sorted(os.listdir(results)):
        folder, match = os.path.join(results, name), RUN_NAME.fullmatch(name)
        if not (match and match["arm"] in METHODS and os.path.isfile(os.path.join(folder, "trained_by"))):
            continue
        run = {**read_run(folder), "name": name}
        machine = os.path.join(folder, "machine")
        # the paired grid writes one 'TIME start: …' or 'TIME --resume: …' line per start; v1 wrote one line when the
        # run was collected (seed 2's adds a note below it)
        lines = [line.strip() for line in open(machine) if line.strip()] if os.path.isfile(machine) else []
        run["machines"] = [line for line in lines if STARTED.match(line)] or lines[:1]
        if os.path.isfile(os.path.join(folder, "config.json")):
            with open(os.path.join(folder, "config.json")) as file:
                run["eval_problems"] = json.load(file).get("eval_problems")
        for key in ("greedy", "mean4"):
            path = os.path.join(results, f"{name}-{key}.summary.json")
            if os.path.isfile(path):
                with open(path) as file:
                    run[key] = json.load(file)
        runs.setdefault(match["arm"], {})[int(match["seed"])] = run
    return {method: runs[method] for method in METHODS if method in runs}


def base_heldout(path: str | None, runs: dict) -> float | None:
    """The base model's strict greedy accuracy on the test problems the runs were evaluated on during training (the
    step-0 point of the curves), from its eval.py answers; None without them."""
    if not path:
        return None
    counts = evaluated_on(runs)[0]
    if len(counts) != 1 or None in counts:
        sys.exit(f"error: --base needs runs evaluated on one number of held-out problems; their configs say {counts}")
    problems = counts.pop()
    with open(path) as file:
        rows = [json.loads(line) for line in file if line.strip()]
    if len(rows) < problems:
        sys.exit(f"error: --base {path!r} answers {len(rows)} problems; the runs were evaluated on {problems}")
    return statistics.mean(row["strict_correct"][0] for row in rows[:problems])


def heldout_curve(run: dict) -> dict:
    """{steps trained: held-out accuracy}: a record's step is 0-based, its evaluation follows that step's update."""
    return {m["step"] + 1: m["heldout_accuracy"] for m in run["metrics"] if m.get("heldout_accuracy") is not None}


def finished(run: dict, steps: int) -> bool:
    return len(run["metrics"]) >= steps


def last_best(run: dict) -> tuple[float, float]:
    curve = heldout_curve(run)
    return curve[max(curve)], max(curve.values())


def window_mean(run: dict, key: str, start: int, stop: int) -> float:
    values = [m[key] for m in run["metrics"][start:stop] if m.get(key) is not None]
    return statistics.mean(values) if values else float("nan")


def first_divergence(run: dict, other: dict | None) -> int | None:
    """The first step (counted from 1, as "held-out after 10 steps") whose rollouts differ from those of another run
    of the same seed — GRPO's, the arm it is paired with, the method an ablation changes — (reward or mean length
    differs); the same seed draws the same problems and the same sampling noise, so until the weights differ enough
    to change one sampled token, the two runs sample the same responses. None: identical for every step both
    logged."""
    if other is None:
        return None
    for mine, theirs in zip(run["metrics"], other["metrics"]):
        if (mine["reward"], round(mine["response_len"], 6)) != (theirs["reward"], round(theirs["response_len"], 6)):
            return mine["step"] + 1  # a record's step counts from 0
    return None


def mean_sd(values: list[float], digits: int = 3) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def columns(run: dict) -> dict:
    """Table 1's numbers of one run (None where its evaluation is missing)."""
    last, best = last_best(run)
    greedy, mean4 = run.get("greedy", {}), run.get("mean4", {})
    return {"last": last, "best": best, "greedy strict": greedy.get("strict_accuracy"),
            "greedy lenient": greedy.get("accuracy"), "mean@4 strict": mean4.get("strict_accuracy"),
            "after 10 steps": heldout_curve(run).get(10)}


def evaluated_on(runs: dict) -> tuple[set, set]:
    """How many held-out problems the runs were evaluated on during training (config.json's eval_problems) and at
    the end (the greedy summary's num_problems), one set each; None for a run whose file does not say."""
    every = [run for seeds in runs.values() for run in seeds.values()]
    return ({run.get("eval_problems") for run in every},
            {run.get("greedy", {}).get("num_problems") for run in every})


def problem_counts(runs: dict, before: str = " (", after: str = ")") -> tuple[str, str]:
    """evaluated_on as a header says it: " (100)", " (100/50)" for runs that differ, "" where the files do not
    say."""
    return tuple(f"{before}{'/'.join(map(str, sorted(counts - {None})))}{after}" if counts - {None} else ""
                 for counts in evaluated_on(runs))


def sampled_mean4(runs: dict) -> bool:
    """Whether some run has a sampled mean@4 evaluation (v1 only: the paired grid evaluates greedy only), so the
    tables show that column only where it says something."""
    return any("mean4" in run for seeds in runs.values() for run in seeds.values())


def table_one(runs: dict, steps: int, baseline: str = "grpo") -> str:
    done = {method: {seed: run for seed, run in seeds.items() if finished(run, steps)}
            for method, seeds in runs.items()}
    done = {method: seeds for method, seeds in done.items() if seeds}  # a method with no finished run: not tabled
    sampled = sampled_mean4(done)
    keys = ["last", "best", "greedy strict", "greedy lenient"] + ["mean@4 strict"] * sampled
    during, final = problem_counts(done)
    lines = [f"| method | seeds | held-out last{during} | held-out best{during} | final greedy strict{final} | "
             f"final greedy lenient{final} |" + f" final mean@4 strict, τ 0.3{final} |" * sampled,
             "| --- | --- |" + " --- |" * len(keys)]
    values = {}
    for method, seeds in done.items():
        per_seed = [columns(run) for _, run in sorted(seeds.items())]
        values[method] = {key: [row[key] for row in per_seed if row[key] is not None] for key in keys}
        cells = [mean_sd(values[method][key]) + (f" (seeds {len(values[method][key])} of {len(seeds)})"
                                                 if values[method][key] and len(values[method][key]) < len(seeds)
                                                 else "") for key in keys]
        lines.append(f"| {METHODS[method]} | {', '.join(map(str, sorted(seeds)))} | " + " | ".join(cells) + " |")
    if baseline not in values:
        return "\n".join(lines)
    lines += ["", f"Difference from {METHODS[baseline]}: mean over seeds [95 % Welch t-interval over seeds]", "",
              "| method | " + " | ".join(keys) + " |", "| --- |" + " --- |" * len(keys)]
    for method in values:
        if method == baseline:
            continue
        cells = []
        for key in keys:
            a, b = values[method][key], values[baseline][key]
            if len(a) < 2 or len(b) < 2:
                cells.append("– (needs 2 seeds each)")
                continue
            difference, low, high = welch_interval(a, b)
            cells.append(f"{difference:+.3f} [{low:+.3f}, {high:+.3f}]")
        lines.append(f"| {METHODS[method]} − {METHODS[baseline]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_interval(differences: list[float], level: float = 0.95) -> tuple[float, float, float, float]:
    """(mean, low, high, sd) of per-seed differences a_s − b_s with the paired t-interval (n − 1 degrees of
    freedom); the same seed draws the same problems and sampling noise in both arms, which is what pairing removes."""
    mean, sd = statistics.mean(differences), statistics.stdev(differences)
    half = student_t_quantile(1 - (1 - level) / 2, len(differences) - 1) * sd / math.sqrt(len(differences))
    return mean, mean - half, mean + half, sd


def seeds_needed(sd: float, effect: float) -> int:
    """Paired seeds for a two-sided 5 % test to detect a true mean difference `effect` with 80 % power, at the
    observed sd of the differences (normal approximation: n = ((1.96 + 0.84) · sd / effect)²)."""
    return max(2, math.ceil(((1.96 + 0.8416) * sd / effect) ** 2))


def paired_seeds(runs: dict, a: str, b: str, steps: int) -> list[int]:
    """The seeds both arms finished: the pairs a paired difference of a − b is read over."""
    return sorted(seed for seed in runs.get(a, {}) if seed in runs.get(b, {})
                  and finished(runs[a][seed], steps) and finished(runs[b][seed], steps))


# the dynamics a paired difference is read on, {column: metrics.jsonl key} (the paper's α = 0 ablation and DAPO's
# clip-higher speak of entropy and response length)
LATE_DYNAMICS = {"entropy": "entropy", "response length": "response_len", "cut at the limit": "truncated_frac"}


def late_dynamics(run: dict, steps: int = 40) -> dict:
    """LATE_DYNAMICS over a run's last five steps (their means)."""
    return {key: window_mean(run, metric, steps - 5, steps) for key, metric in LATE_DYNAMICS.items()}


def paired_table(runs: dict, steps: int, keys=("last", "best", "greedy strict", "after 10 steps"),
                 values=columns) -> str:
    """Each pair of PAIRS over the seeds both arms finished: the mean difference with its paired 95 % interval per
    metric (held-out accuracy after 10 steps, the first evaluation, reads the paper's "β = 0 loses the early accuracy
    lift"), what the interval can tell ("no difference larger than X" where it holds 0), and the seeds that a
    difference of 0.05 in held-out "last" would need at this spread, and how the two arms' "last" correlate over the
    seeds: pairing narrows the interval only as far as that correlation is positive (var(a − b) = var a + var b −
    2 cov(a, b)); and seed by seed the first step whose rollouts differ between the arms (first_divergence): until
    then the pair is one trajectory, not two. With values=late_dynamics and its keys: the paired differences of the
    dynamics alone (the four reading columns belong to held-out "last")."""
    held_out = "last" in keys
    lines = ["| difference | seeds | " + " | ".join(f"{key} [95 % paired t]" for key in keys) + (
             " | what the seeds can tell (last) | seeds for 0.05 (last) | the arms' correlation over seeds (last) | "
             "first step the arms' rollouts differ, seed by seed |" if held_out else " |"),
             "| --- | --- |" + " --- |" * (len(keys) + 4 * held_out)]
    for a, b in PAIRS:
        seeds = paired_seeds(runs, a, b, steps)
        if len(seeds) < 2:
            continue
        cells, reading, need, correlation = [], "–", "–", "–"
        both = [(values(runs[a][seed]), values(runs[b][seed])) for seed in seeds]
        for key in keys:
            pairs = [(of_a[key], of_b[key]) for of_a, of_b in both]
            pairs = [(x, y) for x, y in pairs if x is not None and y is not None]
            differences = [x - y for x, y in pairs]
            if len(differences) < 2:
                cells.append("–")
                continue
            mean, low, high, sd = paired_interval(differences)
            digits = 1 if key == "response length" else 3
            cells.append(f"{mean:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]")
            if key == "last":
                reading = (f"{METHODS[a]} higher" if low > 0 else f"{METHODS[a]} lower" if high < 0 else
                           f"no difference larger than {max(-low, high):.2f}")
                need = str(seeds_needed(sd, 0.05)) if sd > 0 else "–"
                mine, theirs = zip(*pairs)
                if len(set(mine)) > 1 and len(set(theirs)) > 1:  # undefined when an arm is the same in every seed
                    correlation = f"{statistics.correlation(mine, theirs):+.2f}"
        parted = ", ".join(str(first_divergence(runs[a][seed], runs[b][seed]) or "never") for seed in seeds)
        lines.append(f"| {METHODS[a]} − {METHODS[b]} | {len(seeds)} | " + " | ".join(cells) + (
                     f" | {reading} | {need} | {correlation} | {parted} |" if held_out else " |"))
    return "\n".join(lines)


def readme_table(runs: dict, steps: int, baseline: str = "grpo", paired: bool = False) -> str:
    """The README's short form of Table 1: last, best and the final strict accuracy, and last − GRPO: a Welch interval
    over seeds (v1), or with paired=True the paired t-interval over the seeds both trained (the paired grid)."""
    lines = [f"| method | seeds | held-out last | held-out best | final greedy strict | last − {METHODS[baseline]} "
             f"[95 % {'paired t' if paired else 'Welch'}] |", "| --- | --- | --- | --- | --- | --- |"]
    done = {method: {seed: run for seed, run in sorted(seeds.items()) if finished(run, steps)}
            for method, seeds in runs.items()}
    lasts = {method: {seed: last_best(run)[0] for seed, run in done[method].items()} for method in done}
    for method, finished_runs in done.items():
        if not finished_runs or method in ABLATIONS:
            continue
        best = [last_best(run)[1] for run in finished_runs.values()]
        strict = [run["greedy"]["strict_accuracy"] for run in finished_runs.values() if "greedy" in run]
        mine, theirs = lasts[method], lasts.get(baseline, {})
        both = paired_seeds(runs, method, baseline, steps)
        difference = "–"
        if method != baseline and paired and len(both) > 1:
            mean, low, high, _ = paired_interval([mine[seed] - theirs[seed] for seed in both])
            fewer = f" ({len(both)} seeds)" if len(both) < len(mine) else ""  # the baseline's unfinished seeds
            difference = f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]{fewer}"
        elif method != baseline and not paired and len(mine) > 1 and len(theirs) > 1:
            mean, low, high = welch_interval(list(mine.values()), list(theirs.values()))
            difference = f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]"
        lines.append(f"| {METHODS[method]} | {len(finished_runs)} | {mean_sd(list(mine.values()), 2)} | "
                     f"{mean_sd(best, 2)} | {mean_sd(strict, 2)} | {difference} |")
    return "\n".join(lines)


def dynamics(runs: dict, steps: int) -> str:
    """The numbers the claims are read against, per method (mean ± sd over its finished seeds)."""
    late, last = f"{steps - 9}–{steps}", f"{steps - 4}–{steps}"
    lines = [f"| method | seeds | reward, steps 1–10 → {late} | entropy, steps 1–5 → {last} | response length, 1–5 → "
             f"{last} | cut at the limit, {last} | explicit answer, {last} | first step unlike GRPO's (same seed) |",
             "| --- | --- |" + " --- |" * 6]
    grpo = runs.get("grpo", {})
    for method, seeds in runs.items():
        done = [run for _, run in sorted(seeds.items()) if finished(run, steps)]
        if not done:
            continue

        def span(key, start, stop, digits=3):
            return mean_sd([window_mean(run, key, start, stop) for run in done], digits)

        divergence = [first_divergence(run, grpo.get(seed)) for seed, run in sorted(seeds.items())
                      if finished(run, steps) and seed in grpo] if method != "grpo" else []
        lines.append(f"| {METHODS[method]} | {len(done)} | {span('reward', 0, 10)} → "
                     f"{span('reward', steps - 10, steps)} | "
                     f"{span('entropy', 0, 5)} → {span('entropy', steps - 5, steps)} | "
                     f"{span('response_len', 0, 5, 0)} → {span('response_len', steps - 5, steps, 0)} | "
                     f"{span('truncated_frac', steps - 5, steps, 2)} | {span('format_rate', steps - 5, steps, 2)} | "
                     + (", ".join("never" if d is None else str(d) for d in divergence) or "–") + " |")
    return "\n".join(lines)


def clipped_steps(run: dict) -> str:
    """On how many steps E2's clip acted on some token (clip_frac > 0): never with one update per rollout batch,
    where π_old = π_θ and every ratio is 1; '–' for runs that did not log it."""
    logged = [m["clip_frac"] for m in run["metrics"] if m.get("clip_frac") is not None]
    return f"{sum(value > 0 for value in logged)} of {len(logged)}" if logged else "–"


def per_run(runs: dict) -> str:
    sampled = sampled_mean4(runs)
    lines = ["| run | steps | held-out after 10 / 20 / 30 / 40 steps | final greedy strict |"
             + " mean@4 strict |" * sampled + " E2 clip acts (steps) | training minutes | machine |",
             "|" + " --- |" * (7 + sampled)]
    for method, seeds in runs.items():
        for seed, run in sorted(seeds.items()):
            curve = heldout_curve(run)
            lines.append(f"| {method}-s{seed} | {len(run['metrics'])} | "
                         + " / ".join(f"{curve[s]:.2f}" for s in sorted(curve)) + " | "
                         + (f"{run['greedy']['strict_accuracy']:.2f}" if "greedy" in run else "–") + " | "
                         + ((f"{run['mean4']['strict_accuracy']:.3f}" if "mean4" in run else "–") + " | ") * sampled
                         + clipped_steps(run) + " | "
                         + f"{sum(m.get('step_time', 0) for m in run['metrics']) / 60:.0f} | " + machines(run) + " |")
    return "\n".join(lines)


def ablation(runs: dict, steps: int) -> str:
    """Each ablation against the method it changes, seed by seed (the same seed draws the same problems and noise):
    the numbers the paper's ablation reads (α = 0: shorter responses, higher entropy) and where their rollouts part."""
    late = f"{steps - 4}–{steps}"
    during, final = problem_counts(runs)
    lines = [f"| seed | arm | held-out last{during} | final greedy strict{final} | entropy, {late} | response length, "
             f"{late} | first step unlike the other's |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for arm, method in ABLATIONS.items():
        for seed, run in sorted(runs.get(arm, {}).items()):
            other = runs.get(method, {}).get(seed)
            if other is None or not (finished(run, steps) and finished(other, steps)):
                continue
            divergence = first_divergence(run, other)
            for name, r in ((method, other), (arm, run)):
                lines.append(f"| {seed} | {METHODS[name]} | {last_best(r)[0]:.2f} | "
                             + (f"{r['greedy']['strict_accuracy']:.2f}" if "greedy" in r else "–") + " | "
                             + f"{window_mean(r, 'entropy', steps - 5, steps):.3f} | "
                             + f"{window_mean(r, 'response_len', steps - 5, steps):.0f} | "
                             + ("never" if divergence is None else str(divergence)) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


def machine_name(line: str) -> str:
    """'x86_64 16 cores, NVIDIA H200 | torch … | DEVICE_FLAGS '--device cuda --dtype float32'' -> its hardware and the
    dtype it computed in: the --dtype it was given, else sdpg.py's auto (float32 without a GPU, bf16 autocast on
    one); the paired grid's 'TIME start: ' or 'TIME --resume: ' before it is dropped."""
    line = STARTED.sub("", line, count=1)
    given = re.search(r"--dtype (\w+)", line)
    hardware = line.split("|")[0].strip()
    if not hardware or re.search(r"float32|bfloat16|bf16", hardware):  # v1's seed-2 lines name it by hand
        return hardware or "–"
    return f"{hardware}, " + (given.group(1) if given else "float32" if "no GPU" in hardware else "bf16 autocast")


def machines(run: dict) -> str:
    """The machines a run trained on, each once, and how many times it started (a resume is a start)."""
    names = list(dict.fromkeys(map(machine_name, run["machines"]))) or ["–"]
    starts = len(run["machines"])
    return " + ".join(names) + (f" ({starts} starts)" if starts > 1 else "")


def written(results: str, runs: dict, base: str | None, problem: int) -> str:
    """What each model learned to write: its greedy answer to one held-out problem (eval.py's answers, which a run
    has once its final evaluation ran), and how often it states an answer at all and in \\boxed{} over the first N
    problems, N the fewest any file answers (the base model's 100 against the paired grid's 200: the same problems)."""
    sources = ([("base model", base)] if base else []) + [
        (f"{method}-s{seed}", os.path.join(results, f"{method}-s{seed}-greedy.jsonl"))
        for method, seeds in runs.items() for seed in sorted(seeds)]
    answers = {}
    for name, path in sources:
        if os.path.isfile(path):
            with open(path) as file:
                answers[name] = [json.loads(line) for line in file if line.strip()]
    count = min(map(len, answers.values()), default=0)
    lines, question = [], ""
    for name, rows in answers.items():
        rows = rows[:count]
        row, boxed = rows[problem], "\\boxed"
        question = f"Problem {problem} of the test split: {row['question']} (answer {row['answer']})"
        text = row["completions"][0].strip().replace("\n", " ⏎ ").replace("|", "\\|")
        explicit = statistics.mean(r["formatted"][0] for r in rows)
        in_box = statistics.mean(boxed in r["completions"][0] for r in rows)
        lines.append(f"| {name} | {text} | {row['strict_correct'][0]:.0f} | {explicit:.0%} | {in_box:.0%} |")
    return "\n".join([question, "", "| model | its greedy answer (⏎: a new line) | right (strict) | explicit answers "
                      f"(first {count}) | in \\boxed{{}} |", "| --- | --- | --- | --- | --- |", *lines])


def figure(runs: dict, output: str, base: float | None, steps: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {method: seeds for method, seeds in runs.items() if method not in ABLATIONS}
    # the thick line is each method's mean over the seeds every method has finished, so that no two means average
    # different seeds (or machines) while the grid is incomplete; every run is drawn thin
    shared = set.intersection(*({seed for seed, run in seeds.items() if finished(run, steps)}
                                for seeds in runs.values()))
    fig, axes = plt.subplots(1, len(CURVES), figsize=(4.3 * len(CURVES), 3.5))
    during = problem_counts(runs, ", ", "")[0]
    for axis, (key, title) in zip(axes, CURVES):
        for index, (method, seeds) in enumerate(runs.items()):
            curves = []
            for seed, run in sorted(seeds.items()):
                if key == "heldout_accuracy":
                    values = dict(sorted({0: base, **heldout_curve(run)}.items())) if base is not None \
                        else heldout_curve(run)
                else:
                    logged = [(m["step"], m[key]) for m in run["metrics"] if m.get(key) is not None]
                    values = dict(zip([s for s, _ in logged], moving_mean([v for _, v in logged])))
                axis.plot(list(values), list(values.values()), color=f"C{index}", alpha=0.3, linewidth=0.8)
                if seed in shared:
                    curves.append(values)
            if not curves:
                continue
            common = sorted(set.intersection(*(set(c) for c in curves)))
            axis.plot(common, [statistics.mean(c[s] for c in curves) for s in common], color=f"C{index}",
                      linewidth=2.2, label=f"{METHODS[method]} ({len(seeds)} run{'s' if len(seeds) > 1 else ''})")
        axis.set_title(title.format(during=during), fontsize=10)
        axis.set_xlabel("step")
        axis.set_xlim(0, steps)
    axes[0].legend(fontsize=7, title=f"thick: mean of seed{'s' if len(shared) > 1 else ''} "
                   f"{', '.join(map(str, sorted(shared))) or 'none shared yet'}", title_fontsize=7)
    fig.tight_layout()
    fig.savefig(output, dpi=100)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", help="the folder experiments/paper_methods.sh wrote (docs/results/paper)")
    parser.add_argument("--base", help="the base model's eval.py answers (JSONL) on the same test problems: the "
                        "held-out curve's step-0 point")
    parser.add_argument("--steps", type=int, default=40, help="the grid's steps; shorter runs are unfinished and "
                        "stay out of the tables (they are drawn)")
    parser.add_argument("--problem", type=int, default=0, help="the held-out problem whose greedy answers are shown")
    parser.add_argument("--figure", help="also write Figure 3 in miniature (PNG) here; needs matplotlib")
    parser.add_argument("--paired", action="store_true", help="the README table's difference from GRPO as a paired "
                        "t-interval over the seeds both trained (the paired grid: each seed trains every arm on one "
                        "machine and dtype); without it a Welch interval over seeds (v1)")
    args = parser.parse_args()
    if not os.path.isdir(args.results):
        sys.exit(f"error: {args.results!r} is not a folder; pass the folder experiments/paper_methods.sh wrote")
    runs = read_runs(args.results)
    if not runs:
        sys.exit(f"error: no METHOD-sSEED run with trained_by in {args.results!r}; run experiments/paper_methods.sh")
    blob = one_trainer(runs)
    base = base_heldout(args.base, runs)
    print(f"Runs trained by sdpg.py blob {blob[:10]}" + (f"; the base model's held-out accuracy (the same "
                                                         f"{problem_counts(runs, '', '')[0]} problems): {base:.2f}"
                                                         if base is not None else "") + "\n")
    print("README:\n\n" + readme_table(runs, args.steps, paired=args.paired) + "\n\nTable 1:\n\n"
          + table_one(runs, args.steps)
          + "\n\nDynamics:\n\n" + dynamics(runs, args.steps) + "\n\nPer run:\n\n"
          + per_run(runs) + "\n\nWhat each model learned to write:\n\n" + written(args.results, runs, args.base,
                                                                                       args.problem))
    paired = paired_table(runs, args.steps)
    if paired.count("\n") > 1:
        print("\nPaired differences (each seed trains both arms):\n\n" + paired)
        late = paired_table(runs, args.steps, keys=tuple(LATE_DYNAMICS),
                            values=lambda run: late_dynamics(run, args.steps))
        print(f"\nPaired differences in the dynamics (steps {args.steps - 4}–{args.steps}):\n\n" + late)
    compared = ablation(runs, args.steps)
    if compared:
        print("\nAblation, seed by seed:\n\n" + compared)
    if args.figure:
        figure(runs, args.figure, base, args.steps)


if __name__ == "__main__":
    main()
