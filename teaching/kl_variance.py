"""Lab experiment: the exact full-vocabulary KL gradient (E3) against the sampled-token estimate.

At one position, with p = softmax(z) the student and q the teacher, E3's gradient is exact:
    ∇_z ℓ = p ⊙ (log p − log q − ℓ)
A sampled-token method instead draws y ~ p and uses the score-function estimate
    g_y = (log p(y) − log q(y)) · ∇_z log p(y) = (log p(y) − log q(y)) · (onehot(y) − p)
which is unbiased (E_y g_y = ∇_z ℓ) but noisy. This script measures that noise with your reverse_kl:

    python kl_variance.py                          # V = 1000, logits of scale 3, 20 000 draws
    python kl_variance.py --vocab 151936 --samples 2000

It prints ‖mean of g_y − exact‖ / ‖exact‖ (small: unbiased) and E‖g_y − exact‖² / ‖exact‖² (the relative variance
of one draw: how many tokens' worth of samples it takes to match one exact position).
"""

import argparse
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # sdpg.py beside this file (handout) or one folder up (repository)
import sdpg  # noqa: E402


def measure(vocab: int, scale: float, samples: int, seed: int = 0) -> tuple[float, float, float]:
    """(KL, relative bias of the mean estimate, relative variance of one draw) at one random position."""
    generator = torch.Generator().manual_seed(seed)
    student = (torch.randn(1, vocab, generator=generator, dtype=torch.float64) * scale).requires_grad_()
    teacher = torch.randn(1, vocab, generator=generator, dtype=torch.float64) * scale
    log_p, log_q = sdpg.tempered_log_softmax(student, 1.0), sdpg.tempered_log_softmax(teacher, 1.0)
    kl = sdpg.reverse_kl(log_p, log_q)  # your E3
    (exact,) = torch.autograd.grad(kl.sum(), student)
    p = log_p.detach().exp()[0]
    draws = torch.multinomial(p, samples, replacement=True, generator=generator)  # y ~ p
    weights = (log_p.detach() - log_q)[0, draws]  # log p(y) − log q(y), one per draw
    # g_y = w_y (onehot(y) − p): its mean and its squared distance to the exact gradient, without (samples, V) tensors
    onehot_mean = torch.bincount(draws, weights=weights, minlength=vocab) / samples
    mean_estimate = onehot_mean - weights.mean() * p
    exact = exact[0]
    # ‖w(e_y − p) − x‖² = w²(1 − 2p_y + ‖p‖²) − 2w(x_y − p·x) + ‖x‖²
    squared = (weights**2 * (1 - 2 * p[draws] + p @ p) - 2 * weights * (exact[draws] - p @ exact) + exact @ exact)
    norm = exact.norm()
    return kl.item(), ((mean_estimate - exact).norm() / norm).item(), (squared.mean() / norm**2).item()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=1000, help="vocabulary size V")
    parser.add_argument("--scale", type=float, default=3.0, help="standard deviation of the random logits")
    parser.add_argument("--samples", type=int, default=20000, help="sampled tokens y ~ p")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    kl, bias, variance = measure(args.vocab, args.scale, args.samples, args.seed)
    print(f"V = {args.vocab}, logit scale {args.scale}: KL = {kl:.3f} nats")
    print(f"mean of {args.samples} sampled-token gradients vs exact: relative error {bias:.3f} (→ 0: unbiased)")
    print(f"one sampled token: relative variance E‖g_y − ∇ℓ‖² / ‖∇ℓ‖² = {variance:.1f} "
          f"(the exact gradient: 0; {variance:.0f} draws to bring one position's error to the size of its gradient)")


if __name__ == "__main__":
    main()
