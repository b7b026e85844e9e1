"""The LSTM text encoder's recurrence on a CPU: nn.LSTM's arithmetic, about half its work.

``lstm_states`` computes what ``nn.LSTM`` (one layer, batch first) gives at every real
token, from the same parameters, with two savings that oneDNN's fused LSTM cannot make:

- the input's part of the gates, ``W_ih x + b_ih + b_hh``, depends on the word alone,
  so it is computed once per distinct word of the batch (a batch of 32 CSS texts holds
  about 20 distinct words in 190 tokens), not once per token: that is half of an LSTM's
  arithmetic, forward and backward, reduced to a few percent;
- rows are read longest first and a row stops at its last real token, as
  ``pack_padded_sequence`` does, so no work goes into padding; the hidden weights'
  gradient is one matrix product over all steps instead of one per step.

The forward and backward of the recurrence are written out (``_Recurrence``), which
costs one small matrix product and a few elementwise operations per step and per row
still reading. On CUDA the encoder keeps ``nn.LSTM`` (cuDNN).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable


class _Recurrence(torch.autograd.Function):
    """h_t and c_t of an LSTM over rows sorted by length, longest first.

    ``gx``: (T, B, 4H), the input's part of the gates plus both biases, gates in
    PyTorch's order (i, f, g, o); ``w_hh``: (4H, H); ``active[t]``: how many rows are
    still reading at step t (non-increasing). Returns the hidden states (T, B, H), 0
    where a row has ended.
    """

    @staticmethod
    def forward(ctx, gx: Tensor, w_hh: Tensor, active: list[int]) -> Tensor:
        steps, batch, width = gx.shape
        h = width // 4
        hs = gx.new_zeros(steps, batch, h)
        acts = gx.new_empty(steps, batch, width)  # sigmoid of the i, f, o blocks, tanh of the g block
        cs = gx.new_empty(steps, batch, h)
        tcs = gx.new_empty(steps, batch, h)  # tanh(c)
        for t in range(steps):
            n = active[t]
            a = acts[t, :n]
            pre = gx[t, :n] if t == 0 else torch.addmm(gx[t, :n], hs[t - 1, :n], w_hh.t())  # h_{-1} = 0
            torch.sigmoid(pre, out=a)
            torch.tanh(pre[:, 2 * h:3 * h], out=a[:, 2 * h:3 * h])
            c = torch.mul(a[:, :h], a[:, 2 * h:3 * h], out=cs[t, :n])
            if t:
                c.addcmul_(a[:, h:2 * h], cs[t - 1, :n])
            torch.mul(a[:, 3 * h:], torch.tanh(c, out=tcs[t, :n]), out=hs[t, :n])
        ctx.save_for_backward(w_hh, hs, acts, cs, tcs)
        ctx.active = active
        return hs

    @staticmethod
    @once_differentiable
    def backward(ctx, dhs: Tensor):
        w_hh, hs, acts, cs, tcs = ctx.saved_tensors
        active = ctx.active
        steps, batch, h = hs.shape
        dgx = hs.new_zeros(steps, batch, 4 * h)  # 0 where a row has ended
        dh = dc = None  # what step t + 1 sends back to step t (its active[t + 1] rows)
        for t in reversed(range(steps)):
            n = active[t]
            a, tc = acts[t, :n], tcs[t, :n]
            i, f, g, o = a[:, :h], a[:, h:2 * h], a[:, 2 * h:3 * h], a[:, 3 * h:]
            dht = dhs[t, :n]
            if dh is not None:
                dht = dht.clone()
                dht[: dh.shape[0]] += dh
            dct = dht * o * (1 - tc * tc)
            if dc is not None:
                dct[: dc.shape[0]] += dc
            d = dgx[t, :n]
            torch.mul(dct, g, out=d[:, :h])
            if t:
                torch.mul(dct, cs[t - 1, :n], out=d[:, h:2 * h])
            torch.mul(dct, i, out=d[:, 2 * h:3 * h])
            torch.mul(dht, tc, out=d[:, 3 * h:])
            slope = a * (1 - a)
            slope[:, 2 * h:3 * h] = 1 - g * g
            d.mul_(slope)
            if t:
                dc, dh = dct * f, d @ w_hh
        dw = None
        if ctx.needs_input_grad[1]:  # one product over every step: sum_t dgates_t^T h_{t-1}
            dw = dgx[1:].reshape(-1, 4 * h).t() @ hs[:-1].reshape(-1, h) if steps > 1 else torch.zeros_like(w_hh)
        return dgx, dw, None


@torch.compiler.disable  # data-dependent shapes and a Python loop: run eagerly under torch.compile
def lstm_states(lstm: torch.nn.LSTM, embedding: torch.nn.Embedding, ids: Tensor, lengths: Tensor) -> Tensor:
    """(B, T, H): ``lstm(embedding(ids))``'s states at the real tokens (``lengths``), 0 past a text's end."""
    steps = ids.shape[1]
    lengths_sorted, order = torch.sort(lengths, descending=True, stable=True)
    active = (lengths_sorted[None, :] > torch.arange(steps)[:, None]).sum(1).tolist()
    words, where = torch.unique(ids, return_inverse=True)
    # the input's part of the gates, once per distinct word: (U, 4H)
    per_word = torch.addmm(lstm.bias_ih_l0 + lstm.bias_hh_l0, embedding(words), lstm.weight_ih_l0.t())
    # (T, B, 4H), rows longest first; index_select, whose backward (index_add_) sums a word's rows in one order:
    # advanced indexing's backward (index_put_ with accumulate) summed them in an order that changed from process to
    # process on several threads, so two runs of one seed differed in rounding
    flat = where[order].t().reshape(-1)
    gx = per_word.index_select(0, flat).view(steps, ids.shape[0], -1)
    hs = _Recurrence.apply(gx, lstm.weight_hh_l0, active)
    return hs.transpose(0, 1)[torch.argsort(order)]
