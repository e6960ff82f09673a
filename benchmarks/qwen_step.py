"""One SDPG step of a Qwen2.5-0.5B-shaped model (real config, random weights, no download).

G = 8 responses of 512 new tokens to one GSM8K prompt (the real Qwen tokenizer, chat template and default system
prompt, the paper's teacher context with the worked solution), the default micro-batch, chunked vocabulary
projection and decoder-layer recompute: the peak memory says what device the default run needs. Random weights
rarely emit an EOS, so every response runs to the full 512 tokens: the worst case. On CUDA the peak is
torch.cuda.max_memory_allocated; elsewhere the process's peak resident set (ru_maxrss), which also counts Python,
torch and the allocator's slack; the random checkpoint is built in a child process, so building it (about twice
the weights) is not counted.

Uses ../shared/qwen2.5-0.5b-instruct/ (Qwen's config.json, tokenizer and generation_config.json) when it is
there, else the same numbers typed in below with the byte-level tokenizer of `tiny` (prompts then differ in length).

  python benchmarks/qwen_step.py                 # fp32 weights + AdamW, as sdpg.py trains
  python benchmarks/qwen_step.py --lora-rank 16  # a LoRA adapter instead: π_ref is the base, no copy
  python benchmarks/qwen_step.py --device cuda   # bf16 autocast on a GPU
  python benchmarks/qwen_step.py --device cuda --batch-size 32 --steps 2   # the default run's step: 32 prompts ×
                                                 # G 8 × 512 tokens, 8 updates (mini-batch 4); × 200 = its wall time
  torchrun --standalone --nproc_per_node 2 benchmarks/qwen_step.py --layers 12 [--fsdp]   # per-rank peak, DDP/FSDP2
"""

import argparse
import json
import multiprocessing
import os
import resource
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
import torch  # noqa: E402

import sdpg  # noqa: E402
import tiny  # noqa: E402

QWEN = os.path.join(HERE, "..", "..", "shared", "qwen2.5-0.5b-instruct")
QWEN25_05B = dict(vocab_size=151_936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                  num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32_768,
                  rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)  # its config.json
GSM8K_FIRST = {"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in "
                           "May. How many clips did Natalia sell altogether in April and May?",
               "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips "
                         "altogether in April and May.\n#### 72"}  # GSM8K train, row 0


def write_random_checkpoint(path: str, layers: int) -> None:
    """Qwen2.5-0.5B-Instruct's shape with random weights (cut to `layers` decoder layers if > 0), saved to path."""
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    if os.path.isfile(os.path.join(QWEN, "tokenizer.json")):
        config, tokenizer = AutoConfig.from_pretrained(QWEN), AutoTokenizer.from_pretrained(QWEN)
        model = Qwen2ForCausalLM(config)
        model.generation_config = GenerationConfig.from_pretrained(QWEN)  # Qwen's sampling defaults, which sdpg ignores
        source = "real Qwen config, tokenizer and generation config"
    else:
        _, tokenizer = tiny.build_tiny_model()  # byte-level: prompt ids are < 259, the model has V = 151 936
        model = Qwen2ForCausalLM(Qwen2Config(**QWEN25_05B, bos_token_id=0, pad_token_id=0, eos_token_id=[2, 0]))
        source = "typed-in config, byte-level tokenizer (../shared not found)"
    if layers:
        model.model.layers = model.model.layers[:layers]
        model.config.num_hidden_layers = layers
        if getattr(model.config, "layer_types", None):
            model.config.layer_types = model.config.layer_types[:layers]
    print(f"parameters: {sum(p.numel() for p in model.parameters()) / 1e6:.0f} M ({source})", flush=True)
    sdpg.save_checkpoint(model, tokenizer, path)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=0, help="prompts per step (the GSM8K row repeated); 0: one "
                        "per rank and one update, the peak-memory measurement; more: sdpg.py's default updates (B/8)")
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--micro-batch-size", type=int, default=sdpg.Config.micro_batch_size)
    parser.add_argument("--lora-rank", type=int, default=0, help="train a LoRA adapter of this rank (needs peft)")
    parser.add_argument("--layers", type=int, default=0, help="keep only this many decoder layers (0: all 24)")
    parser.add_argument("--fsdp", action="store_true", help="under torchrun: FSDP2 instead of DDP")
    parser.add_argument("--steps", type=int, default=1, help="steps to run: from the second on, full fine-tuning also "
                        "holds AdamW's two moments during the backward (a first step creates them at its end)")
    args = parser.parse_args()
    world = int(os.environ.get("WORLD_SIZE", "1"))  # under torchrun one prompt per rank
    work = tempfile.mkdtemp()
    # the random checkpoint is built and saved by a child process: building it costs more memory than loading it
    # (about 2x the weights), and the parent's peak RSS must be the training run's alone
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        pool.apply(write_random_checkpoint, (os.path.join(work, "model"), args.layers))
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(os.path.join(work, "model"))
    rows = os.path.join(work, "rows.jsonl")
    with open(rows, "w") as f:
        f.write(json.dumps(GSM8K_FIRST) + "\n")
    prompt = sdpg.tokenize_rows(tokenizer, sdpg.load_rows(rows), "paper", 10**6)[0]
    print(f"student prompt {len(prompt['prompt_ids'])} tokens, teacher prompt {len(prompt['teacher_ids'])} tokens")
    device = sdpg.resolve_device(args.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.time()
    one_update = ["--batch-size", str(world), "--mini-batch-size", str(world)]
    cfg = sdpg.parse_config(["--model", os.path.join(work, "model"), "--dataset", rows, "--steps", str(args.steps),
                             *(["--batch-size", str(args.batch_size)] if args.batch_size else one_update),
                             "--group-size", str(args.group_size), "--micro-batch-size", str(args.micro_batch_size),
                             "--max-new-tokens", str(args.max_new_tokens), "--device", str(device),
                             "--output-dir", os.path.join(work, "run"), "--no-gate", "--lora-rank", str(args.lora_rank)]
                            + (["--fsdp"] if args.fsdp else []))  # the teacher on every row
    record = sdpg.main(cfg)[-1]
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**30
    kind = "max_memory_allocated" if device.type == "cuda" else "peak RSS"
    rank = f"rank {os.environ['RANK']} of {world}, {'FSDP2' if args.fsdp else 'DDP'}: " if world > 1 else ""
    lora = f"LoRA rank {args.lora_rank}, " if args.lora_rank else "full fine-tuning, "
    print(f"{rank}{lora}device={device}: {args.steps} SDPG step(s) of {cfg.batch_size} prompt(s), "
          f"{cfg.batch_size // cfg.mini_batch_size} update(s) each, G={args.group_size}, "
          f"{record['response_len']:.0f} new tokens, micro-batch {args.micro_batch_size}: {kind} {peak:.2f} GiB; "
          f"last step {record['step_time']:.0f} s "
          f"(run {time.time() - started:.0f} s incl. loading and saving)")


if __name__ == "__main__":
    main()
