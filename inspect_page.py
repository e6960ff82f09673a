"""What the teacher view knows, token by token: a page of E3's ℓ_t and RLSD's Δ_t at every sampled position.

Samples a group of G responses to one problem as training does (the run's own prompt, context, τ and G when
MODEL is a sdpg.py run folder), scores both views with sdpg.py's own functions, and writes PATH.html (the template
inspect_page.html filled in: open it in a browser) and PATH.json (the numbers).

  python inspect_page.py --inspect runs/sdpg --dataset gsm8k --index 3 --output runs/inspect.html
  python eval.py --inspect runs/sdpg …     # the same: eval.py hands --inspect to this script
"""

import argparse
import json
import os
import re
import time

import torch

import sdpg
from sdpg import fail

TEMPLATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "inspect_page.html")


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


def render_page(data: dict, title: str) -> str:
    """One self-contained HTML page (the template inspect_page.html: inline style and script, no network) of
    inspect_tokens' numbers: the problem, the privileged context, then each response with its tokens coloured by ℓ_t
    or Δ_t, the numbers as text."""
    from html import escape

    kl_max, delta_max = inspect_colours(data)
    parts = []
    for r, response in enumerate(data["responses"]):
        if not data.get("beta", 1.0):  # E3 as the run trained it: its β_base and whether E4's gate was on
            gate = '<span class="closed">β = 0: E3 does not act</span>'
        elif not data.get("gate_used", True):
            gate = '<span class="open">no gate: E3 acts on every response</span>'
        else:
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
    e3 = (f"E3 as {data.get('e3_from', 'the run trained it')}: β_base {data.get('beta', 1e-3)}, "
          + ("gated to A > 0" if data.get("gate_used", True) else "no gate"))
    fields = dict(title=escape(title), temperature=str(data["temperature"]), e3=escape(e3),
                  problem=escape(data["problem"]), answer=escape(str(data["answer"])), context=escape(data["context"]),
                  kl_bar=kl_bar, kl_max=f"{kl_max:.2f}", delta_bar=delta_bar, delta_max=f"{delta_max:.1f}",
                  responses="".join(parts), numbers=numbers)
    with open(TEMPLATE, encoding="utf-8") as f:
        return re.sub(r"\{\{(\w+)\}\}", lambda field: fields[field[1]], f.read())  # one pass: no field is re-read


def training_settings(model: str) -> dict:
    """What a sdpg.py run folder was trained with (its config.json), else sdpg.py's defaults: the prompt, the
    teacher's context, τ, the response length, the scorer, G, and E3's gate and β_base, so --inspect sees what
    training saw."""
    saved = sdpg.run_config(model)
    defaults = sdpg.Config(model="tiny")
    sdpg.check_config(defaults)  # the defaults that are resolved when a run starts (the teacher context)
    keys = ("student_prompt", "teacher_context", "temperature", "max_new_tokens", "strict_format", "group_size",
            "logits_chunk_size", "gate", "beta")
    return {key: saved.get(key, getattr(defaults, key)) for key in keys} | {"from_run": bool(saved)}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="A page of what the teacher view knows at every token of a group of "
                                     "sampled responses (ℓ_t, Δ_t, both views' top 5).",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)
    parser.add_argument("--inspect", metavar="MODEL", required=True, help="hub id, local directory, sdpg.py run "
                        "folder (its settings are used), .gguf file or `tiny`")
    parser.add_argument("--dataset", default=None, help="gsm8k | math500 | aime24 | aime25 | amc23 | arithmetic | "
                        "arithmetic-easy | a .jsonl/.json/.csv/.parquet file; default the run's own, else gsm8k")
    parser.add_argument("--question-field", default="question", help="problem column of a local file")
    parser.add_argument("--answer-field", default="answer", help="ground-truth column of a local file")
    parser.add_argument("--split", default="test", help="dataset split")
    parser.add_argument("--index", type=int, default=0, help="which problem of --dataset (0-based)")
    parser.add_argument("--n", type=int, default=None, help="responses in the group; default the run's G")
    parser.add_argument("--temperature", type=float, default=None, help="default the run's τ")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default the run's")
    parser.add_argument("--teacher-context", default=None, help="paper | answer | solution; default the run's own, "
                        "else paper")
    parser.add_argument("--student-prompt", default=None, help="qwen | paper; default the run's own, else qwen")
    parser.add_argument("--strict-format", action="store_true", help="grade as sdpg.py --strict-format")
    parser.add_argument("--seed", type=int, default=0, help="seeds sampling")
    parser.add_argument("--output", default="runs/inspect.html", help="the page; the numbers go beside it as .json")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA) | bfloat16 | float32")
    args = parser.parse_args(argv)
    args.datasets = [args.dataset or sdpg.run_config(args.inspect).get("dataset") or "gsm8k"]
    if args.student_prompt not in (None, *sdpg.STUDENT_PROMPTS):
        fail(f"--student-prompt {args.student_prompt!r} is unknown; choose one of {', '.join(sdpg.STUDENT_PROMPTS)}")
    if args.teacher_context not in (None, *sdpg.TEACHER_CONTEXTS):
        fail(f"--teacher-context {args.teacher_context!r} is unknown; choose one of {', '.join(sdpg.TEACHER_CONTEXTS)}")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        fail(f"--max-new-tokens {args.max_new_tokens} must be ≥ 1")
    return args


def main(args) -> dict:
    """inspect_tokens on problem --index of --dataset, written as PATH.html and PATH.json."""
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
    data.update(model=args.inspect, dataset=args.datasets[0], index=args.index, seconds=time.time() - started,
                gate_used=settings["gate"], beta=settings["beta"],
                e3_from="the run trained it" if settings["from_run"] else "sdpg.py's defaults set it")
    base = os.path.splitext(args.output or "runs/inspect.html")[0]
    os.makedirs(os.path.dirname(base) or ".", exist_ok=True)
    with open(base + ".json", "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
    label = os.path.splitext(os.path.basename(args.datasets[0]))[0]  # a local file's name, or the dataset's
    title = f"What the teacher view knows: {label} problem {args.index}, {args.inspect}"
    with open(base + ".html", "w", encoding="utf-8") as f:
        f.write(render_page(data, title))
    print(f"wrote {base}.html (open it in a browser) and {base}.json: {n} responses, "
          f"{sum(len(r['tokens']) for r in data['responses'])} tokens, {data['seconds']:.1f} s")
    return data


if __name__ == "__main__":
    main(parse_args())
