"""TDT (token-and-duration transducer) loss that runs on CPU.

NeMo 3.0.0 has no CPU TDT loss: its numba kernel raises "TDT is not yet implemented for non CUDA computation" and its
pure-PyTorch reference (`TDTLossPytorch`) calls `.cuda()` and loops over every (b, t, u) in Python. The offline
`tiny-parakeet` preset trains a real FastConformer-TDT on CPU, so it swaps this loss in (see `use_cpu_tdt_loss`);
on a GPU the model keeps NeMo's numba kernel.

Same recursion and conventions as NeMo's reference (Xu et al. 2023, eq. 7): token log-probs are log_softmax(label
logits) - sigma (logit under-normalisation), durations get their own log_softmax; a blank moves d > 0 frames, a
token moves d >= 0 frames. Vectorised over batch and label positions; the same-frame (d = 0) token chain along u is
a linear recurrence in log space, solved with cumsum + logcumsumexp instead of a Python loop over u.
With probability `omega` a batch is scored with the plain RNN-T loss instead (as NeMo's kernel does).
FastEmit is not implemented (documented in docs/MODEL.md); autograd provides the gradients.
"""

from __future__ import annotations

import random

import torch
from torch import nn

NEG = -1e4  # finite "minus infinity": keeps logcumsumexp and its gradient free of inf - inf


def _transducer_logprob(blank, emit, dur, durations, act_lens, label_lens, plain_rnnt=False):
    """log P(labels | audio) summed over all alignments.

    blank: [B, T, U+1] log-prob of blank at (t, u); emit: [B, T, U] log-prob of the next label (labels[u]) at (t, u);
    dur: [B, T, U+1, D] duration log-probs; durations: list with 0 and 1 among them.
    plain_rnnt: blanks move exactly one frame, tokens none (durations [0, 1], `dur` all zeros).
    """
    B, T, U1 = blank.shape
    alphas: list[torch.Tensor] = []
    idx0 = durations.index(0)
    for t in range(T):
        # arrivals from earlier frames: blanks (same u) and tokens (u - 1), each with duration d > 0
        parts = [torch.full((B, U1), NEG, dtype=blank.dtype, device=blank.device)]
        if t == 0:
            parts[0] = parts[0].index_fill(1, torch.tensor([0], device=blank.device), 0.0)
        for n, d in enumerate(durations):
            if d <= 0 or t - d < 0:
                continue
            a = alphas[t - d]
            parts.append(a + blank[:, t - d] + dur[:, t - d, :, n])
            if plain_rnnt:
                continue
            tok = a[:, :-1] + emit[:, t - d] + dur[:, t - d, :-1, n]
            parts.append(torch.cat([torch.full((B, 1), NEG, dtype=tok.dtype, device=tok.device), tok], dim=1))
        b = torch.logsumexp(torch.stack(parts), dim=0)
        # same-frame tokens: alpha[u] = logaddexp(b[u], alpha[u-1] + c[u]) with c[u] = emit[t, u-1] + dur[t, u-1, 0]
        c = torch.cat([torch.zeros((B, 1), dtype=b.dtype, device=b.device), emit[:, t] + dur[:, t, :-1, idx0]], dim=1)
        C = torch.cumsum(c, dim=1)
        alphas.append(C + torch.logcumsumexp(b - C, dim=1))
    alpha = torch.stack(alphas, dim=1)  # [B, T, U+1]
    # end: a blank of duration d from frame T_b - d at u = U_b lands exactly on T_b
    ends = []
    bi = torch.arange(B, device=blank.device)
    for n, d in enumerate(durations):
        if d <= 0:
            continue
        t = act_lens - d
        ok = t >= 0
        tc = t.clamp(min=0)
        v = alpha[bi, tc, label_lens] + blank[bi, tc, label_lens] + dur[bi, tc, label_lens, n]
        ends.append(torch.where(ok, v, torch.full_like(v, NEG)))
    return torch.logsumexp(torch.stack(ends), dim=0)


class CPUTDTLoss(nn.Module):
    """Drop-in for NeMo's TDT loss inside `RNNTLoss` (reduction 'none': one loss per utterance)."""

    def __init__(self, blank: int, durations: list[int], sigma: float = 0.0, omega: float = 0.0):
        super().__init__()
        if 0 not in durations or 1 not in durations:
            raise ValueError(f"TDT durations must include 0 and 1 (got {durations})")
        self.blank, self.durations, self.sigma, self.omega = blank, list(durations), sigma, omega
        self.reduction = None  # RNNTLoss sets and restores this; per-utterance losses are always returned

    def forward(self, acts, labels, act_lens, label_lens):
        D = len(self.durations)
        acts = acts if acts.dtype in (torch.float32, torch.float64) else acts.float()  # bf16 DP loses the alignment sum
        lp = torch.log_softmax(acts[..., :-D], dim=-1) - self.sigma
        B, T, U1, _ = lp.shape
        labels = labels[:, : U1 - 1].long()
        blank = lp[..., self.blank]
        emit = torch.gather(lp[:, :, :-1, :], 3, labels[:, None, :, None].expand(B, T, U1 - 1, 1)).squeeze(3)
        act_lens, label_lens = act_lens.long(), label_lens.long()
        if self.omega > 0 and random.random() < self.omega:  # sampled plain RNN-T loss (no duration head)
            zeros = torch.zeros((B, T, U1, 2), dtype=lp.dtype, device=lp.device)
            return -_transducer_logprob(blank, emit, zeros, [0, 1], act_lens, label_lens, plain_rnnt=True)
        dur = torch.log_softmax(acts[..., -D:], dim=-1)
        return -_transducer_logprob(blank, emit, dur, self.durations, act_lens, label_lens)


def use_cpu_tdt_loss(model) -> bool:
    """On CPU, replace a NeMo TDT model's CUDA-only loss with `CPUTDTLoss`. Returns True when swapped."""
    loss_cfg = model.cfg.get("loss", None)
    if loss_cfg is None or loss_cfg.get("loss_name") != "tdt" or not hasattr(model, "loss"):
        return False
    kw = loss_cfg.get("tdt_kwargs", {}) or {}
    model.loss._loss = CPUTDTLoss(
        blank=model.loss._blank, durations=list(kw.get("durations")), sigma=float(kw.get("sigma", 0.0)),
        omega=float(kw.get("omega", 0.0)),
    )
    return True
