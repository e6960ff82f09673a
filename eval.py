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
  python eval.py --inspect runs/sdpg --dataset gsm8k --index 3 --output runs/inspect.html   # the teacher, per token
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


# ----------------------------------------------------------------------------------------------
# --inspect: what the teacher view knows, token by token (E3's ℓ_t and RLSD's Δ_t at every sampled position)


def inspect_tokens(model, tokenizer, row: dict, n: int, temperature: float, max_new_tokens: int, teacher_context: str,
                   style: str, strict: bool, chunk_size: int, device, top: int = 5) -> dict:
    """G sampled responses to one problem with, at every response token: p(y_t) and q(y_t) (student and teacher
    view), Δ_t = log q(y_t) − log p(y_t), E3's ℓ_t over the full vocabulary, and both views' top next tokens; per
    response its reward, advantage (E1) and gate (E4). The numbers come from the training code itself
    (build_prompt, privileged_context, sample_responses, score_responses, group_advantages, token_scores →
    reverse_kl), one response and `chunk_size` positions at a time, so no more than one chunk of (T, V) logits
    of both views exists at once."""
    context = sdpg.privileged_context(row, teacher_context)
    prompt = sdpg.build_prompt(tokenizer, row["question"], style=style)
    teacher = sdpg.build_prompt(tokenizer, row["question"], context, style)
    eos_ids, pad_id = sdpg.eos_token_ids(model, tokenizer), tokenizer.pad_token_id
    prompt_ids, prompt_mask = sdpg.left_pad([prompt] * n, pad_id, device)  # (G, P)
    response_ids, response_mask = sdpg.sample_responses(model, tokenizer, dict(prompt_ids=prompt_ids,
                                                        prompt_mask=prompt_mask), max_new_tokens, temperature)
    completions = sdpg.decode_responses(tokenizer, response_ids, response_mask)
    truncated = sdpg.truncated_responses(response_ids, eos_ids).tolist()
    rewards, _ = sdpg.score_responses(completions, [row["answer"]] * n, truncated, strict)
    advantages = sdpg.group_advantages(torch.tensor(rewards), n).tolist()
    responses = []
    for i in range(n):
        ids = response_ids[i:i + 1, :int(response_mask[i].sum())]  # (1, T), this response alone, unpadded
        with sdpg.ctx:
            tokens = response_tokens(model, tokenizer, prompt, teacher, ids, temperature, chunk_size, top)
        responses.append(dict(text=completions[i], reward=rewards[i], advantage=advantages[i],
                              gate=advantages[i] > 0, truncated=truncated[i],
                              answer=sdpg.extract_answer(completions[i], strict or truncated[i]), tokens=tokens))
    return dict(problem=row["question"], answer=row["answer"], context=context, temperature=temperature,
                student_prompt=tokenizer.decode(prompt), teacher_prompt=tokenizer.decode(teacher), responses=responses)


def response_tokens(model, tokenizer, prompt: list[int], teacher: list[int], ids, temperature: float,
                    chunk_size: int, top: int) -> list[dict]:
    """Per token of one response (1, T): both views' final hidden states, then `chunk_size` positions at a time
    the two projections and token_scores (log p(y), E3's ℓ via reverse_kl, entropy, log q(y)) and the top tokens."""
    def hidden(view: list[int]):  # (T, H): the positions that predict each response token, given this prompt
        view_ids = torch.tensor([view], device=ids.device)
        return sdpg.response_hidden(model, view_ids, torch.ones_like(view_ids), ids, torch.ones_like(ids))[0]

    def top_tokens(logits) -> list:  # per position: the view's `top` likeliest next tokens at τ, with p
        best = sdpg.tempered_log_softmax(logits, temperature).exp().topk(top, dim=-1)  # one pass for the chunk
        return [[[tokenizer.decode([t]), v] for t, v in zip(token_ids, values)]
                for token_ids, values in zip(best.indices.tolist(), best.values.tolist())]

    student_hidden, teacher_hidden, tokens = hidden(prompt), hidden(teacher), []
    lm_head = model.get_output_embeddings()
    for start in range(0, ids.shape[1], chunk_size):
        chunk = slice(start, start + chunk_size)
        student_logits, teacher_logits = lm_head(student_hidden[chunk]), lm_head(teacher_hidden[chunk])  # (N, V)
        logp, kl, entropy, teacher_logp = sdpg.token_scores(student_hidden[chunk], teacher_hidden[chunk],
                                                            ids[0, chunk], lm_head.weight, lm_head.bias, temperature)
        student_top, teacher_top = top_tokens(student_logits), top_tokens(teacher_logits)
        for j, token in enumerate(ids[0, chunk].tolist()):
            tokens.append(dict(text=tokenizer.decode([token]), id=token, p=logp[j].exp().item(),
                               q=teacher_logp[j].exp().item(), logp=logp[j].item(), logq=teacher_logp[j].item(),
                               delta=(teacher_logp[j] - logp[j]).item(), kl=kl[j].item(), entropy=entropy[j].item(),
                               student_top=student_top[j], teacher_top=teacher_top[j]))
    return tokens


def inspect_colours(data: dict) -> tuple[float, float]:
    """The legend's scale: ℓ from 0 to the page's 97th percentile (at least 0.05 nats), Δ symmetric to ±(97th
    percentile of |Δ|, between 0.5 and 5 nats): one 16-nat token must not wash every other colour out."""
    tokens = [token for response in data["responses"] for token in response["tokens"]]

    def high(values):
        values = sorted(values) or [0.0]
        return values[min(len(values) - 1, int(0.97 * len(values)))]

    return max(0.05, high([t["kl"] for t in tokens])), min(5.0, max(0.5, high([abs(t["delta"]) for t in tokens])))


def colour(value: float, scale: float, diverging: bool) -> str:
    """White at 0; red with ℓ (or with Δ < 0: the teacher likes the token less), blue with Δ > 0."""
    share = max(-1.0, min(1.0, value / scale))
    if diverging and share > 0:
        return f"rgb({round(255 - 190 * share)}, {round(255 - 120 * share)}, 255)"
    share = abs(share)
    return f"rgb(255, {round(255 - 200 * share)}, {round(255 - 200 * share)})"


def token_label(token: dict) -> str:
    return (f"token {token['text']!r}: student p {token['p']:.3f}, teacher q {token['q']:.3f}, "
            f"Δ = log q − log p {token['delta']:+.3f} nats, ℓ = KL(p‖q) {token['kl']:.3f} nats")


PAGE_STYLE = """
body { font: 15px/1.5 system-ui, sans-serif; margin: 0 auto; max-width: 1100px; padding: 1em 1.5em 16em; color: #111; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
pre, .box { white-space: pre-wrap; background: #f6f6f6; padding: .6em .8em; border-radius: 6px; margin: .3em 0; }
.tokens { font-family: ui-monospace, monospace; font-size: 14px; white-space: pre-wrap; line-height: 1.9;
          border: 1px solid #ddd; padding: .6em .8em; border-radius: 6px; }
.tok { border-radius: 3px; padding: 1px 0; cursor: default; }
.tok:focus, .tok:hover { outline: 2px solid #000; outline-offset: 0; }
.legend { display: flex; align-items: center; gap: .6em; margin: .5em 0; } .legend[hidden] { display: none; }
.bar { width: 260px; height: 14px; border: 1px solid #999; border-radius: 3px; }
#details { position: fixed; bottom: 0; left: 0; right: 0; background: #fff; border-top: 2px solid #333;
           padding: .5em 1.5em; font-size: 14px; min-height: 9em; box-shadow: 0 -2px 8px rgba(0,0,0,.15); }
#details table { border-collapse: collapse; display: inline-table; margin-right: 2em; vertical-align: top; }
#details td, #details th { padding: 0 .6em; text-align: left; font-family: ui-monospace, monospace; }
#details caption { white-space: nowrap; text-align: left; font-weight: 600; }
.meta { color: #333; } .open { color: #075; font-weight: 600; } .closed { color: #777; }
fieldset { border: 1px solid #ccc; border-radius: 6px; display: inline-block; }
"""

PAGE_SCRIPT = r"""
const data = JSON.parse(document.getElementById('numbers').textContent);
const details = document.getElementById('details');
function table(title, rows) {
  return '<table><caption>' + title + '</caption>' + rows.map(r =>
    '<tr><td>' + JSON.stringify(r[0]).slice(1, -1).replace(/</g, '&lt;') + '</td><td>' + r[1].toFixed(3) + '</td></tr>'
  ).join('') + '</table>';
}
function show(span) {
  const t = data.responses[+span.dataset.r].tokens[+span.dataset.t];
  details.innerHTML = '<p><b>' + span.getAttribute('aria-label').replace(/</g, '&lt;') + '</b> (response ' +
    (+span.dataset.r + 1) + ', position ' + (+span.dataset.t + 1) + ')</p>' +
    table('student view: top 5 next tokens', t.student_top) + table('teacher view: top 5 next tokens', t.teacher_top);
}
document.querySelectorAll('.tok').forEach(span => {
  span.addEventListener('mouseenter', () => show(span));
  span.addEventListener('focus', () => show(span));
  span.addEventListener('keydown', event => {
    const step = {ArrowRight: 1, ArrowLeft: -1}[event.key];
    if (!step) return;
    const next = step > 0 ? span.nextElementSibling : span.previousElementSibling;
    if (next && next.classList.contains('tok')) { next.focus(); event.preventDefault(); }
  });
});
function recolour(by) {
  document.querySelectorAll('.tok').forEach(span => { span.style.background = span.dataset[by]; });
  document.querySelectorAll('.legend').forEach(l => { l.hidden = l.dataset.by !== by; });
}
document.querySelectorAll('input[name=colour]').forEach(input =>
  input.addEventListener('change', () => recolour(input.value)));
const linked = /^#r(\d+)t(\d+)$/.exec(location.hash);  // page.html#r0t12: response 1's 13th token, focused
if (linked) {
  const span = document.querySelector('.tok[data-r="' + linked[1] + '"][data-t="' + linked[2] + '"]');
  if (span) { span.focus(); show(span); }
}
"""


def render_page(data: dict, title: str) -> str:
    """One self-contained HTML page (no network: inline style and script) of inspect_tokens' numbers: the problem,
    the privileged context, then each response with its tokens coloured by ℓ_t or Δ_t, the numbers as text."""
    from html import escape

    kl_max, delta_max = inspect_colours(data)
    parts = []
    for r, response in enumerate(data["responses"]):
        gate = ('<span class="open">gate open: E3 acts</span>' if response["gate"] else
                '<span class="closed">gate closed (A ≤ 0): E3 does not act</span>')
        mean_kl = sum(t["kl"] for t in response["tokens"]) / max(1, len(response["tokens"]))
        spans = "".join(
            f'<span class="tok" tabindex="0" data-r="{r}" data-t="{t}" '
            f'data-kl="{colour(token["kl"], kl_max, False)}" data-delta="{colour(token["delta"], delta_max, True)}" '
            f'style="background:{colour(token["kl"], kl_max, False)}" aria-label="{escape(token_label(token))}" '
            f'title="{escape(token_label(token))}">{escape(token["text"].replace(chr(10), "↵" + chr(10)))}</span>'
            for t, token in enumerate(response["tokens"]))
        cut = ", cut at the length limit" if response["truncated"] else ""
        parts.append(f'<section aria-labelledby="response-{r}"><h2 id="response-{r}">Response {r + 1}: reward '
                     f'{response["reward"]:.0f}, advantage A = {response["advantage"]:+.2f}, {gate}</h2>'
                     f'<p class="meta">{len(response["tokens"])} tokens{cut}; answer read: '
                     f'{escape(str(response["answer"] or "none"))}; mean ℓ {mean_kl:.3f} nats per token</p>'
                     f'<div class="tokens" role="group" aria-label="tokens of response {r + 1}">{spans}</div>'
                     f'</section>')
    numbers = json.dumps(data).replace("</", "<\\/")  # no "</script>" inside the script element
    kl_bar = f"linear-gradient(90deg, #fff, {colour(1, 1, False)})"
    delta_bar = f"linear-gradient(90deg, {colour(-1, 1, True)}, #fff, {colour(1, 1, True)})"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{PAGE_STYLE}</style></head>
<body><main>
<h1>{escape(title)}</h1>
<p>The same model in two views: the <b>student</b> sees the problem; the <b>teacher</b> also sees the privileged
context below. At every token of a sampled response, ℓ = KL(p‖q) over the whole vocabulary is what SDPG's E3
pulls the student by (on responses whose gate is open), and Δ = log q(y) − log p(y) is how much more (blue) or
less (red) the teacher likes the sampled token, which RLSD reads. Hover or focus a token (Tab, then ← →) for its
numbers and both views' five likeliest next tokens (a link to <code>#r0t12</code> opens on response 1's 13th
token). Sampled at τ = {data['temperature']}.</p>
<h2>Problem</h2><div class="box">{escape(data['problem'])}</div>
<p>Reference answer: <b>{escape(str(data['answer']))}</b></p>
<details open><summary>Privileged context the teacher saw</summary>
<div class="box">{escape(data['context'])}</div></details>
<fieldset role="radiogroup"><legend>Colour tokens by</legend>
<label><input type="radio" name="colour" value="kl" checked> ℓ<sub>t</sub> = KL(p‖q), E3</label>
<label><input type="radio" name="colour" value="delta">
Δ<sub>t</sub> = log q(y<sub>t</sub>) − log p(y<sub>t</sub>), RLSD</label>
</fieldset>
<div class="legend" data-by="kl">ℓ: 0 <span class="bar" style="background:{kl_bar}"></span> {kl_max:.2f} nats or more
</div>
<div class="legend" data-by="delta" hidden>Δ: −{delta_max:.1f} (teacher likes it less)
<span class="bar" style="background:{delta_bar}"></span> +{delta_max:.1f} nats (teacher likes it more)</div>
{''.join(parts)}
</main>
<aside id="details" aria-live="polite"><p>Hover or focus a token to see its numbers.</p></aside>
<script type="application/json" id="numbers">{numbers}</script>
<script>{PAGE_SCRIPT}</script>
</body></html>
"""


def training_settings(model: str) -> dict:
    """What a sdpg.py run folder was trained with (its config.json), else sdpg.py's defaults: the prompt, the
    teacher's context, τ, the response length, the scorer and G, so --inspect sees what training saw."""
    saved = sdpg.run_config(model)
    defaults = sdpg.Config(model="tiny")
    keys = ("student_prompt", "teacher_context", "temperature", "max_new_tokens", "strict_format", "group_size",
            "logits_chunk_size")
    return {key: saved.get(key, getattr(defaults, key)) for key in keys}


def inspect_main(args):
    """--inspect MODEL: inspect_tokens on problem --index of --dataset, written as PATH.html and PATH.json."""
    settings = training_settings(args.inspect)
    n = settings["group_size"] if args.n is None else args.n
    temperature = settings["temperature"] if args.temperature is None else args.temperature
    if n < 2 or temperature <= 0:
        fail(f"--inspect samples a group as training does: --n {n} must be ≥ 2 and --temperature {temperature} > 0 "
             f"(E1's advantages compare the responses of one group)")
    rows = sdpg.load_rows(args.datasets[0], args.question_field, args.answer_field, split=args.split)
    if not 0 <= args.index < len(rows):
        fail(f"--index {args.index}: {args.datasets[0]} has {len(rows)} problems (0 … {len(rows) - 1})")
    device = sdpg.resolve_device(args.device)
    sdpg.ctx = sdpg.make_autocast(device, args.dtype)  # the compute context of every forward, as in training
    sdpg.seed_everything(args.seed)
    model, tokenizer = sdpg.load_model(args.inspect, seed=args.seed)
    model.to(device).eval()
    started = time.time()
    with torch.no_grad():
        data = inspect_tokens(model, tokenizer, rows[args.index], n, temperature,
                              args.max_new_tokens or settings["max_new_tokens"], args.teacher_context or
                              settings["teacher_context"], args.student_prompt or settings["student_prompt"],
                              args.strict_format or settings["strict_format"], settings["logits_chunk_size"] or 128,
                              device)
    data.update(model=args.inspect, dataset=args.datasets[0], index=args.index, seconds=time.time() - started)
    base = os.path.splitext(args.output or "runs/inspect.html")[0]
    os.makedirs(os.path.dirname(base) or ".", exist_ok=True)
    with open(base + ".json", "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
    title = f"What the teacher view knows: {dataset_label(args.datasets[0])} problem {args.index}, {args.inspect}"
    with open(base + ".html", "w", encoding="utf-8") as f:
        f.write(render_page(data, title))
    print(f"wrote {base}.html (open it in a browser) and {base}.json: {n} responses, "
          f"{sum(len(r['tokens']) for r in data['responses'])} tokens, {data['seconds']:.1f} s")
    return data


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Evaluate models with SDPG's prompt and verifier.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)
    parser.add_argument("--model", action="append", help="hub id, local directory, sdpg.py run folder (its final/), "
                        ".gguf file or `tiny`; twice to compare")
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"), help="evaluate A and B on the same problems and seed")
    parser.add_argument("--dataset", default="gsm8k", help="one or several, comma-separated: gsm8k | math500 | aime24 "
                        "| aime25 | amc23 (from the Hub) | arithmetic | arithmetic-easy | a .jsonl/.json/.csv/.parquet "
                        "file with the fields `question` (or `problem`) and `answer`")
    parser.add_argument("--question-field", default="question", help="problem column of a local file (`problem` is "
                        "picked up by itself when there is no `question`, as in MATH-500 and AIME)")
    parser.add_argument("--answer-field", default="answer", help="ground-truth column of a local file")
    parser.add_argument("--split", default="test", help="dataset split (math500, aime and amc have one split)")
    parser.add_argument("--limit", type=int, default=0, help="first N problems only; 0 = all")
    parser.add_argument("--n", type=int, default=None, help="samples per problem (the paper: 32); default 1, and "
                        "with --inspect the run's G")
    parser.add_argument("--temperature", type=float, default=None, help="0 = greedy (the default); the paper samples "
                        "at 1.0; --inspect: default the run's τ")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="maximum response length in tokens; default "
                        "512, with --inspect the run's")
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
    parser.add_argument("--inspect", metavar="MODEL", help="instead of evaluating: sample a group of G responses to "
                        "problem --index as training does and write a page of what the teacher view knows at every "
                        "token (ℓ_t, Δ_t, both views' top 5) to --output (default runs/inspect.html, and .json)")
    parser.add_argument("--index", type=int, default=0, help="--inspect: which problem of --dataset (0-based)")
    parser.add_argument("--teacher-context", default=None, help="--inspect: paper | answer | solution; default: the "
                        "run's own, else paper")
    parser.add_argument("--plot", nargs="+", metavar="RUN_DIR", help="plot metrics.jsonl of these sdpg.py runs instead")
    parser.add_argument("--plot-output", default="runs/curves.png", help="PNG written by --plot")
    args = parser.parse_args(argv)
    args.models = args.compare or args.model or []
    args.datasets = [name.strip() for name in args.dataset.split(",") if name.strip()]
    if args.student_prompt not in (None, *sdpg.STUDENT_PROMPTS):
        fail(f"--student-prompt {args.student_prompt!r} is unknown; choose one of {', '.join(sdpg.STUDENT_PROMPTS)}")
    if args.teacher_context not in (None, *sdpg.TEACHER_CONTEXTS):
        fail(f"--teacher-context {args.teacher_context!r} is unknown; choose one of {', '.join(sdpg.TEACHER_CONTEXTS)}")
    if args.inspect:
        if args.max_new_tokens is not None and args.max_new_tokens < 1:
            fail(f"--max-new-tokens {args.max_new_tokens} must be ≥ 1")
        return args  # inspect_main resolves n, τ and the length from the run
    args.n = 1 if args.n is None else args.n  # an explicit 0 stays 0 and is refused below
    args.temperature = 0.0 if args.temperature is None else args.temperature
    args.max_new_tokens = 512 if args.max_new_tokens is None else args.max_new_tokens
    if not args.plot and not args.models:
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
    if args.plot:
        print(plot_runs(args.plot, args.plot_output))
        return {}
    if args.inspect:
        return inspect_main(args)
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
