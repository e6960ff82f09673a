"""Peak memory of one SDPG micro-batch forward+backward: chunked vocabulary projection vs naive.

Qwen's real vocabulary (151 936) with a small hidden size, one sequence of T response tokens.
Each measurement runs in a fresh process: on CPU the peak is the rise of the process's maximum
resident set (ru_maxrss) over its size just before the step; on CUDA, max_memory_allocated.

  python benchmarks/memory.py                     # H = 64, T = 128, 512, 2048
  python benchmarks/memory.py --hidden 896 --lengths 512
"""

import argparse
import json
import os
import resource
import subprocess
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import sdpg  # noqa: E402


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure(hidden: int, length: int, chunk_size: int, device: str, recompute_layers: bool) -> float:
    """MB above the pre-step baseline at the peak of one forward+backward of E3 + E7."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=151_936, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    model = Qwen2ForCausalLM(config).to(device).eval()
    sdpg.set_layer_recompute(model, recompute_layers)  # as sdpg.py's update does by default
    ids = lambda n: torch.randint(3, 151_000, (1, n), device=device)  # noqa: E731
    prompt, teacher, response = ids(32), ids(48), ids(length)
    ones = lambda x: torch.ones_like(x)  # noqa: E731
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated() / 2**20
    else:
        baseline = current_rss_mb()
    batch = dict(prompt_ids=prompt, prompt_mask=ones(prompt), teacher_ids=teacher, teacher_mask=ones(teacher),
                 response_ids=response, response_mask=ones(response), advantages=torch.ones(1, device=device))
    logp, kl, _, _ = sdpg.policy_scores(model, batch, 1.0, chunk_size, torch.ones(1, dtype=torch.bool, device=device))
    loss, _ = sdpg.sdpg_loss(dict(batch, logp=logp, old_logp=logp.detach(), reverse_kl=kl), 0.001,
                             sdpg.Config(alpha=0.0))
    loss.backward()
    if device == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20 - baseline
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10 - baseline


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=64, help="hidden size H")
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 512, 2048], help="response tokens T")
    parser.add_argument("--chunk-size", type=int, default=sdpg.Config.logits_chunk_size, help="chunked path's chunk")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-gradient-checkpointing", action="store_true", help="keep decoder-layer activations")
    parser.add_argument("--one", nargs=2, type=int, metavar=("T", "CHUNK"), help=argparse.SUPPRESS)  # child process
    args = parser.parse_args()
    if args.one:
        length, chunk = args.one
        print(json.dumps(measure(args.hidden, length, chunk, args.device, not args.no_gradient_checkpointing)))
        return

    def child(length, chunk):
        command = [sys.executable, __file__, "--hidden", str(args.hidden), "--device", args.device,
                   "--one", str(length), str(chunk)]
        command += ["--no-gradient-checkpointing"] if args.no_gradient_checkpointing else []
        return json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)

    layers = "kept" if args.no_gradient_checkpointing else "recomputed"
    print(f"device={args.device} V=151936 H={args.hidden} chunk={args.chunk_size} layer activations {layers}"
          f"  (peak MB above the pre-step baseline)")
    print(f"{'T':>6} {'chunked MB':>11} {'naive MB':>10} {'chunked/naive':>14}")
    peaks = {}
    for length in args.lengths:
        chunked, naive = child(length, args.chunk_size), child(length, 0)
        peaks[length] = chunked
        print(f"{length:>6} {chunked:>11.1f} {naive:>10.1f} {chunked / naive:>14.3f}")
    lengths = sorted(peaks)
    for shorter, longer in zip(lengths, lengths[1:]):  # the first chunk past one adds a V×H weight-gradient buffer
        growth = (peaks[longer] - peaks[shorter]) / (longer - shorter) * 1000
        print(f"chunked growth T={shorter}→{longer}: {growth:.1f} MB per 1000 response tokens")


if __name__ == "__main__":
    main()
