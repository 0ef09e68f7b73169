"""MIMNet: the Memory In Memory network for spatiotemporal prediction, in plain PyTorch.

Wang, Zhang, Zhu, Long, Wang, Yu: "Memory In Memory: A Predictive Neural Network for Learning
Higher-Order Non-Stationarity from Spatiotemporal Dynamics", CVPR 2019.

The file reads top-down: configuration, cells (ST-LSTM, MIM-N, MIM-S, MIM block), the stack,
the network. Layout is ``(B, T, C, H, W)`` everywhere outside the cells, ``(B, C, H, W)``
inside them.

The model
---------
- Layer 1 is an ST-LSTM cell (PredRNN): hidden ``H``, cell memory ``C`` and the spatiotemporal
  memory ``M``, which zigzags up the stack within a time step and passes from the top layer at
  ``t-1`` to layer 1 at ``t``.
- Layers >= 2 are MIM blocks. The ST-LSTM forget path ``f * C_{t-1}`` is replaced by
  ``T_t = MIM-S(D_t, C_{t-1})`` with ``D_t = MIM-N(H_t^{l-1} - H_{t-1}^{l-1})``: MIM-N models the
  non-stationary part (the difference of the layer below's consecutive hidden states: echo
  growth, deformation, decay) in its own memory ``N``; MIM-S gates between that ``D`` and the
  old memory ``C_{t-1}`` in its own memory ``S`` (the near-stationary part). Then
  ``C_t = T_t + i_t * g_t``.
- Every layer's output is ``H_t = o_t * tanh(W_1x1 * [C_t, M_t])`` with the output gate also
  seeing ``[C_t, M_t]``. A 1x1 convolution maps the top ``H`` to the next frame.

Where the authors' code departs from the paper, and what we chose
-----------------------------------------------------------------
1. *First time step.* There is no ``H_{t-1}`` at ``t = 0``. The authors' code feeds MIM-N a
   zero difference there and discards its states. Default ``first_step_diff="zero"``: the
   difference is zero at ``t = 0`` (nothing has changed yet); MIM-N and MIM-S run on it as on
   any step. ``first_step_diff="state"`` instead differences against the zero initial state
   (``D`` input ``= H_0``).
2. *MIM-N input of layers >= 3.* The paper feeds every MIM-N the hidden-state difference of
   the layer below. The authors' code feeds layer 2 that difference but layers >= 3 the
   cascaded ``D^{l-1}`` of the MIM-N below. Default ``diff_input="hidden"`` (the paper);
   ``diff_input="cascade"`` reproduces the code.
3. *Gates of the block.* The paper gives the temporal (``i, g``) and spatial (``i', g', f'``)
   gates their own input weights and lets the output gate see ``[C_t, M_t]``; the authors'
   code shares the input convolutions between the two gate pairs and feeds the output gate the
   old ``M``. We follow the paper (no flag: it changes the parameter set).
4. *Peepholes.* The authors' MIM-N / MIM-S multiply memories by per-pixel weights of shape
   ``(C, H, W)``, which ties a model to one grid. We use per-channel weights ``(C, 1, 1)``.

Better than the originals where they hurt users
-----------------------------------------------
- No parameter's shape depends on ``H`` or ``W``: per-channel peepholes and a per-pixel
  channel-wise layer norm (one group per gate) instead of ``LayerNorm([C, H, W])``; a model
  trained on 64 x 64 patches runs on a 700 x 700 composite. Unlike ``GroupNorm``, whose
  statistics span the whole image, it never mixes pixels, so the result at a pixel does not
  depend on the grid's size (and tiles blend seamlessly).
- No state on ``self`` between calls: cells take and return their state, the network starts
  each call from zeros. Results never depend on the previous batch, and any batch size works.
- Space-to-depth patching by ``patch_size`` inside the model: any ``H x W`` works (padded to a
  multiple of the patch, cropped back).
- One convolution per input source produces all of its gates (fused).

Scheduled sampling is decided by training code and passed as ``mask`` (see
:meth:`MIMNet.forward`); losses live in training code.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# --------------------------------------------------------------------------------------------
# configuration


@dataclass(frozen=True)
class MIMNetConfig:
    """Architecture of a MIMNet; a checkpoint stores it and rebuilds the model from it."""

    in_channels: int = 1  # channels per frame (1: normalised reflectivity)
    input_length: int = 10  # observed frames fed to the network
    output_length: int = 10  # frames the network predicts after the observed ones
    num_layers: int = 4  # stacked layers: layer 1 is an ST-LSTM, the rest are MIM blocks
    num_hidden: int = 64  # hidden channels of every layer
    filter_size: int = 5  # kernel size of every gate convolution (odd)
    patch_size: int = 4  # space-to-depth factor: the cells run on (H/p, W/p) grids
    layer_norm: bool = True  # per-pixel channel norm (one group per gate) after each gate conv
    forget_bias: float = 1.0  # added to forget-gate pre-activations (PredRNN's choice)
    diff_input: str = "hidden"  # MIM-N input: "hidden" H^{l-1} difference, or "cascade" D^{l-1}
    first_step_diff: str = "zero"  # at t=0: "zero" difference, or "state" (H_0 - initial zeros)
    channels_last: bool = False  # channels_last layout (GPU; CPU too: the gate norm needs no copy)
    residual: bool = False  # predict the change from the frame fed at each step (~0 at start)
    # the model step's duration as an input: one network trained on archives stepping every
    # 2-15 minutes learns how much growth and decay a step spans; forward() needs step_minutes
    step_input: bool = False

    def __post_init__(self) -> None:
        positive = ("in_channels", "input_length", "output_length", "num_hidden", "patch_size")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"MIMNetConfig.{name}={getattr(self, name)}: must be >= 1")
        if self.num_layers < 2:
            raise ValueError(f"MIMNetConfig.num_layers={self.num_layers}: must be >= 2")
        if self.filter_size < 1 or self.filter_size % 2 == 0:
            raise ValueError(f"MIMNetConfig.filter_size={self.filter_size}: must be odd")
        if self.diff_input not in ("hidden", "cascade"):
            raise ValueError(f"MIMNetConfig.diff_input={self.diff_input!r}: 'hidden'|'cascade'")
        if self.first_step_diff not in ("zero", "state"):
            raise ValueError(
                f"MIMNetConfig.first_step_diff={self.first_step_diff!r}: 'zero'|'state'"
            )

    @property
    def total_length(self) -> int:
        """Observed plus predicted frames."""
        return self.input_length + self.output_length


# --------------------------------------------------------------------------------------------
# cells


STEP_SCALE = 10.0  # minutes: step features are (minutes / STEP_SCALE, its log)

IN_PLACE_NORM = True  # ChannelNorm's affine in place where nothing needs its input (inference)


class ChannelNorm(nn.Module):
    """Layer normalisation over channels at every pixel, one group of channels per gate.

    Statistics never mix pixels, so the output at a pixel does not depend on the size or the
    content of the rest of the grid: a model trained on patches behaves the same on a whole
    composite, and tiled inference matches untiled inference. Parameters are per channel.
    """

    def __init__(self, groups: int, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.groups, self.eps = groups, eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            # (B, H, W, C) in memory: each pixel's gate groups are already the last dims, so
            # normalising needs no permuted copy (about a fifth of a CPU train step)
            k = c // self.groups
            g = F.layer_norm(x.permute(0, 2, 3, 1).view(b, h, w, self.groups, k), (k,),
                             eps=self.eps)  # fmt: skip
            weight, bias = self.weight.view(self.groups, k), self.bias.view(self.groups, k)
            # without autograd, the affine writes into the normalised tensor: a new one as
            # large as the gates cost 6x the arithmetic on CPU (fresh pages), and 255 of them
            # were a quarter of a 1024² nowcast
            g = torch.addcmul(bias, g, weight, out=g if self._in_place(g) else None)
            return g.view(b, h, w, c).permute(0, 3, 1, 2)  # channels_last (B, C, H, W)
        g = x.reshape(b, self.groups, c // self.groups, h, w).permute(0, 1, 3, 4, 2)
        # (B, G, H, W, C/G): the fused layer_norm kernel normalises the last dim
        g = F.layer_norm(g, (c // self.groups,), eps=self.eps)
        x = g.permute(0, 1, 4, 2, 3).reshape(b, c, h, w)  # (B, C, H, W)
        weight, bias = self.weight[:, None, None], self.bias[:, None, None]
        return torch.addcmul(bias, x, weight, out=x if self._in_place(x) else None)

    def _in_place(self, g: Tensor) -> bool:
        """Whether the affine may overwrite ``g``: no gradient to keep it for, and its result
        has ``g``'s dtype (under bf16 autocast a bf16 ``g`` would round the fp32 result)."""
        if not IN_PLACE_NORM or g.dtype != torch.promote_types(g.dtype, self.weight.dtype):
            return False
        return not (torch.is_grad_enabled() and (
            g.requires_grad or self.weight.requires_grad or self.bias.requires_grad))  # fmt: skip


class GateConv(nn.Module):
    """One convolution producing ``gates`` gate pre-activations of ``hidden`` channels each.

    With ``layer_norm`` a :class:`ChannelNorm` with one group per gate follows (per-pixel
    statistics over each gate's channels, parameters per channel: no dependence on H or W).
    """

    def __init__(self, in_ch: int, gates: int, hidden: int, k: int, layer_norm: bool) -> None:
        super().__init__()
        self.gates, self.hidden = gates, hidden
        self.conv = nn.Conv2d(in_ch, gates * hidden, k, padding=k // 2, bias=not layer_norm)
        self.norm = ChannelNorm(gates, gates * hidden) if layer_norm else nn.Identity()

    def forward(self, x: Tensor, shift: Tensor | None = None) -> tuple[Tensor, ...]:
        # (B, in_ch, h, w) -> gates x (B, hidden, h, w); ``shift`` (B, gates hidden, 1, 1) is
        # added after the norm: the same at every pixel, so it adds no edge at the grid's border
        g = self.norm(self.conv(x))
        if shift is not None:
            g = g + shift.to(g.dtype)
        return torch.split(g, self.hidden, dim=1)


class STLSTMCell(nn.Module):
    """Spatiotemporal LSTM (PredRNN): layer 1 of the stack."""

    def __init__(self, in_ch: int, hidden: int, k: int, layer_norm: bool, forget_bias: float):
        super().__init__()
        self.forget_bias = forget_bias
        self.conv_x = GateConv(in_ch, 7, hidden, k, layer_norm)  # i f g  i' f' g'  o
        self.conv_h = GateConv(hidden, 4, hidden, k, layer_norm)  # i f g o
        self.conv_m = GateConv(hidden, 3, hidden, k, layer_norm)  # i' f' g'
        self.conv_o = nn.Conv2d(2 * hidden, hidden, k, padding=k // 2)  # o from [C, M]
        self.conv_last = nn.Conv2d(2 * hidden, hidden, 1)  # H from [C, M]

    def forward(
        self, x: Tensor, h: Tensor, c: Tensor, m: Tensor, shift: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Return ``(H_t, C_t, M_t)`` from input ``x`` and ``(H_{t-1}, C_{t-1}, M)``.

        ``shift`` ``(B, 7 hidden, 1, 1)``: per-sequence offsets of the input gates (the step).
        """
        i_x, f_x, g_x, i2_x, f2_x, g2_x, o_x = self.conv_x(x, shift)
        i_h, f_h, g_h, o_h = self.conv_h(h)
        i_m, f_m, g_m = self.conv_m(m)
        fb = self.forget_bias
        c = torch.sigmoid(f_x + f_h + fb) * c + torch.sigmoid(i_x + i_h) * torch.tanh(g_x + g_h)
        m = torch.sigmoid(f2_x + f_m + fb) * m + torch.sigmoid(i2_x + i_m) * torch.tanh(g2_x + g_m)
        mem = torch.cat([c, m], dim=1)  # (B, 2 hidden, h, w)
        o = torch.sigmoid(o_x + o_h + self.conv_o(mem))
        return o * torch.tanh(self.conv_last(mem)), c, m


def peephole_lstm(
    x_gates: tuple[Tensor, ...],
    h_gates: tuple[Tensor, ...],
    memory: Tensor,
    w_o: Tensor,
    forget_bias: float,
) -> tuple[Tensor, Tensor]:
    """One LSTM update from two gate sources with a per-channel output peephole.

    ``x_gates``/``h_gates`` are ``(i, f, g, o)`` pre-activations; returns ``(output, memory)``.
    MIM-N and MIM-S are both this update, on different inputs.
    """
    i_x, f_x, g_x, o_x = x_gates
    i_h, f_h, g_h, o_h = h_gates
    forget = torch.sigmoid(f_x + f_h + forget_bias)
    memory = forget * memory + torch.sigmoid(i_x + i_h) * torch.tanh(g_x + g_h)
    return torch.sigmoid(o_x + o_h + w_o * memory) * torch.tanh(memory), memory


class MIMN(nn.Module):
    """Non-stationary module: an LSTM over the hidden-state difference, with memory ``N``."""

    def __init__(self, hidden: int, k: int, layer_norm: bool, forget_bias: float) -> None:
        super().__init__()
        self.forget_bias = forget_bias
        self.conv_x = GateConv(hidden, 4, hidden, k, layer_norm)  # i f g o from the difference
        self.conv_n = GateConv(hidden, 4, hidden, k, layer_norm)  # i f g o from N_{t-1}
        self.w_no = nn.Parameter(torch.zeros(hidden, 1, 1))  # per-channel peephole N_t -> o

    def forward(self, diff: Tensor, n: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(D_t, N_t)`` from ``H_t^{l-1} - H_{t-1}^{l-1}`` (or D^{l-1}) and ``N_{t-1}``."""
        return peephole_lstm(self.conv_x(diff), self.conv_n(n), n, self.w_no, self.forget_bias)


class MIMS(nn.Module):
    """Stationary module: gates between ``D_t`` and the old memory ``C_{t-1}``, memory ``S``."""

    def __init__(self, hidden: int, k: int, layer_norm: bool, forget_bias: float) -> None:
        super().__init__()
        self.forget_bias = forget_bias
        self.conv_d = GateConv(hidden, 4, hidden, k, layer_norm)  # i f g o from D_t
        self.conv_c = GateConv(hidden, 4, hidden, k, layer_norm)  # i f g o from C_{t-1}
        self.w_so = nn.Parameter(torch.zeros(hidden, 1, 1))  # per-channel peephole S_t -> o

    def forward(self, d: Tensor, c: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(T_t, S_t)``: ``T_t`` replaces ``f * C_{t-1}`` in the MIM block."""
        return peephole_lstm(self.conv_d(d), self.conv_c(c), s, self.w_so, self.forget_bias)


class MIMBlock(nn.Module):
    """Memory In Memory block: an ST-LSTM whose forget path is MIM-N -> MIM-S (layers >= 2)."""

    def __init__(self, hidden: int, k: int, layer_norm: bool, forget_bias: float) -> None:
        super().__init__()
        self.forget_bias = forget_bias
        self.mim_n = MIMN(hidden, k, layer_norm, forget_bias)
        self.mim_s = MIMS(hidden, k, layer_norm, forget_bias)
        self.conv_x = GateConv(hidden, 6, hidden, k, layer_norm)  # i g  i' f' g'  o
        self.conv_h = GateConv(hidden, 3, hidden, k, layer_norm)  # i g o
        self.conv_m = GateConv(hidden, 3, hidden, k, layer_norm)  # i' f' g'
        self.conv_o = nn.Conv2d(2 * hidden, hidden, k, padding=k // 2)  # o from [C, M]
        self.conv_last = nn.Conv2d(2 * hidden, hidden, 1)  # H from [C, M]

    def forward(
        self, x: Tensor, diff: Tensor, h: Tensor, c: Tensor, m: Tensor, n: Tensor, s: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Return ``(H_t, C_t, M_t, D_t, N_t, S_t)``.

        ``x`` is ``H_t^{l-1}``, ``diff`` the MIM-N input, ``(h, c)`` this layer's previous
        hidden state and memory, ``m`` the zigzag memory from the layer below, ``(n, s)`` the
        MIM-N and MIM-S memories.
        """
        d, n = self.mim_n(diff, n)
        t, s = self.mim_s(d, c, s)
        i_x, g_x, i2_x, f2_x, g2_x, o_x = self.conv_x(x)
        i_h, g_h, o_h = self.conv_h(h)
        i_m, f_m, g_m = self.conv_m(m)
        c = t + torch.sigmoid(i_x + i_h) * torch.tanh(g_x + g_h)
        m = torch.sigmoid(f2_x + f_m + self.forget_bias) * m + torch.sigmoid(
            i2_x + i_m
        ) * torch.tanh(g2_x + g_m)
        mem = torch.cat([c, m], dim=1)  # (B, 2 hidden, h, w)
        o = torch.sigmoid(o_x + o_h + self.conv_o(mem))
        return o * torch.tanh(self.conv_last(mem)), c, m, d, n, s


# --------------------------------------------------------------------------------------------
# the stack


class MIMState(NamedTuple):
    """Recurrent state of the whole stack at one time step (all ``(B, hidden, h, w)``)."""

    h: tuple[Tensor, ...]  # hidden state per layer
    c: tuple[Tensor, ...]  # cell memory per layer
    m: Tensor  # spatiotemporal memory leaving the top layer (enters layer 1 next step)
    n: tuple[Tensor, ...]  # MIM-N memory per MIM layer (layers 2..L)
    s: tuple[Tensor, ...]  # MIM-S memory per MIM layer (layers 2..L)
    d: tuple[Tensor, ...]  # MIM-N output per MIM layer (for diff_input="cascade")


class MIMStack(nn.Module):
    """Layer 1 ST-LSTM, layers 2..L MIM blocks; one call advances one time step."""

    def __init__(self, config: MIMNetConfig, in_ch: int) -> None:
        super().__init__()
        self.config = config
        nh, k, ln, fb = (
            config.num_hidden,
            config.filter_size,
            config.layer_norm,
            config.forget_bias,
        )
        self.layers = nn.ModuleList(
            [STLSTMCell(in_ch, nh, k, ln, fb)]
            + [MIMBlock(nh, k, ln, fb) for _ in range(config.num_layers - 1)]
        )

    def init_state(self, like: Tensor) -> MIMState:
        """Return the zero state for inputs shaped like ``like`` ``(B, C, h, w)``."""
        b, _, h, w = like.shape
        zeros = like.new_zeros(b, self.config.num_hidden, h, w)
        if self.config.channels_last:
            zeros = zeros.contiguous(memory_format=torch.channels_last)
        layers, mims = self.config.num_layers, self.config.num_layers - 1
        return MIMState(
            h=(zeros,) * layers, c=(zeros,) * layers, m=zeros, n=(zeros,) * mims,
            s=(zeros,) * mims, d=(zeros,) * mims,
        )  # fmt: skip

    def forward(
        self, x: Tensor, state: MIMState, first: bool, shift: Tensor | None = None
    ) -> tuple[Tensor, MIMState]:
        """Advance one step: return the top hidden state and the new state.

        ``first`` marks ``t = 0``, where ``H_{t-1}`` does not exist (see ``first_step_diff``).
        ``shift``: offsets of layer 1's input gates (the step's duration, ``step_input``).
        """
        zero_diff = first and self.config.first_step_diff == "zero"
        h, c, m = list(state.h), list(state.c), state.m
        n, s, d = list(state.n), list(state.s), list(state.d)
        h[0], c[0], m = self.layers[0](x, state.h[0], state.c[0], m, shift)
        for layer in range(1, self.config.num_layers):
            mim = layer - 1
            if zero_diff:
                diff = torch.zeros_like(h[layer - 1])
            elif self.config.diff_input == "cascade" and layer >= 2:
                diff = d[mim - 1]  # D_t^{l-1}, as in the authors' code
            else:
                diff = h[layer - 1] - state.h[layer - 1]  # H_t^{l-1} - H_{t-1}^{l-1}
            h[layer], c[layer], m, d[mim], n[mim], s[mim] = self.layers[layer](
                h[layer - 1], diff, state.h[layer], state.c[layer], m, n[mim], s[mim]
            )
        return h[-1], MIMState(tuple(h), tuple(c), m, tuple(n), tuple(s), tuple(d))


# --------------------------------------------------------------------------------------------
# the network


def to_patches(frames: Tensor, patch: int) -> Tensor:
    """Space-to-depth, zero-padded: ``(B, T, C, H, W)`` -> ``(B, T, C p^2, ⌈H/p⌉, ⌈W/p⌉)``."""
    b, t, c, h, w = frames.shape
    pad_h, pad_w = (-h) % patch, (-w) % patch
    x = frames.reshape(b * t, c, h, w)  # (B T, C, H, W)
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h))  # (B T, C, H', W'), multiples of p
    x = F.pixel_unshuffle(x, patch)  # (B T, C p^2, H'/p, W'/p)
    return x.reshape(b, t, *x.shape[1:])  # (B, T, C p^2, H'/p, W'/p)


def from_patches(patches: Tensor, patch: int, height: int, width: int) -> Tensor:
    """Depth-to-space and crop: inverse of :func:`to_patches` for an ``height x width`` grid."""
    b, t = patches.shape[:2]
    x = patches.reshape(b * t, *patches.shape[2:])  # (B T, C p^2, H'/p, W'/p)
    x = F.pixel_shuffle(x, patch)  # (B T, C, H', W')
    x = x[..., :height, :width]  # (B T, C, H, W)
    return x.reshape(b, t, *x.shape[1:])  # (B, T, C, H, W)


class MIMNet(nn.Module):
    """Memory In Memory network: frames in, frames out, any grid size.

    Parameters
    ----------
    config
        The architecture; ``MIMNet(MIMNetConfig())`` is the default model.
    """

    def __init__(self, config: MIMNetConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or MIMNetConfig()
        patch_ch = config.in_channels * config.patch_size**2
        self.stack = MIMStack(config, patch_ch)
        self.head = nn.Conv2d(config.num_hidden, patch_ch, 1, bias=False)  # H -> next frame
        if config.step_input:
            # (minutes / STEP_SCALE, log of it) -> offsets of layer 1's 7 input gates; zero at
            # first, so a step-aware model starts as the step-blind one
            self.step_gates = nn.Linear(2, 7 * config.num_hidden, bias=False)
            nn.init.zeros_(self.step_gates.weight)
        if config.residual:
            # An untrained residual model almost persists its input. Not exactly zero: the head
            # is the only path from the stack to the output, and a zero head passes no gradient
            # to the stack (training then stalls at persistence; seen on real radar).
            nn.init.normal_(self.head.weight, std=1e-3)

    def step(
        self, x: Tensor, state: MIMState, first: bool = False, shift: Tensor | None = None
    ) -> tuple[Tensor, MIMState]:
        """Advance one time step on patched input ``x`` ``(B, C p^2, h, w)``.

        Returns the prediction of the next patched frame and the new state. With
        ``config.residual`` the head predicts the change from ``x``. ``shift``: the step's
        gate offsets (:meth:`step_shift`), with ``config.step_input``.
        """
        top, state = self.stack(x, state, first, shift)
        out = self.head(top)
        return (x + out if self.config.residual else out), state

    def forward(
        self,
        frames: Tensor,
        mask: Tensor | None = None,
        step_minutes: Tensor | float | None = None,
        steps: int | None = None,
    ) -> Tensor:
        """Predict ``output_length`` frames after the observed ones (or the first ``steps``).

        Parameters
        ----------
        frames
            ``(B, input_length, C, H, W)`` observed frames; or, for scheduled sampling,
            ``(B, input_length + output_length, C, H, W)`` observed and target frames.
        mask
            Optional scheduled-sampling mask, ``(B, input_length + output_length - 2)``
            or that followed by ``(C, H, W)`` (or broadcastable singleton dims). At step
            ``t >= 1`` the network is fed ``mask[:, t-1] * frames[:, t] +
            (1 - mask[:, t-1]) * prediction_t``. Without a mask it is fed the observed frames,
            then its own predictions. Training code decides the mask (PredRNN's scheduled
            sampling, or PredRNN-V2's reverse scheduled sampling).
        step_minutes
            Minutes between consecutive frames: a number, or ``(B,)``, one per sequence.
            Required with ``config.step_input``, ignored without it.
        steps
            Predict only the first ``steps`` frames (1 .. ``output_length``; without a mask):
            the same frames as a full forecast's first ``steps``, at that share of the cost.

        Returns
        -------
        Tensor
            ``(B, output_length, C, H, W)``, the frames at ``input_length ..
            input_length + output_length - 1`` (``steps`` of them when given).
        """
        cfg = self.config
        n_out = cfg.output_length if steps is None else int(steps)
        if not 1 <= n_out <= cfg.output_length or (mask is not None and n_out != cfg.output_length):
            raise ValueError(f"steps={steps}: 1 to {cfg.output_length}, and only without a mask")
        if frames.ndim != 5:
            raise ValueError(f"frames: expected (B, T, C, H, W), got shape {tuple(frames.shape)}")
        b, t_in, ch, height, width = frames.shape
        if ch != cfg.in_channels:
            raise ValueError(f"frames: {ch} channels, the model expects {cfg.in_channels}")
        expected = (cfg.input_length, cfg.total_length) if mask is None else (cfg.total_length,)
        if t_in not in expected:
            raise ValueError(
                f"frames: {t_in} time steps, expected {' or '.join(map(str, expected))} "
                "(input_length, or input_length + output_length with a mask)"
            )
        x = to_patches(frames, cfg.patch_size)  # (B, T, C p^2, h, w)
        if mask is not None:
            mask = self._patch_mask(mask, b, ch, height, width)  # (B, T-2, C p^2|1, h|1, w|1)
        shift = self.step_shift(step_minutes, b, x.device) if cfg.step_input else None
        state = self.stack.init_state(x[:, 0])
        predictions, pred = [], None
        for t in range(cfg.input_length - 1 + n_out):
            if t == 0:
                net = x[:, 0]
            elif mask is not None:
                net = mask[:, t - 1] * x[:, t] + (1 - mask[:, t - 1]) * pred
            elif t < cfg.input_length:
                net = x[:, t]
            else:  # in the inputs' dtype (exact): a bf16 output fed back would be one more
                net = pred.to(x.dtype)  # variant of a compiled step (compile_step)
            if cfg.channels_last:
                net = net.contiguous(memory_format=torch.channels_last)
            pred, state = self.step(net, state, first=t == 0, shift=shift)
            if t >= cfg.input_length - 1:
                predictions.append(pred)
        out = torch.stack(predictions, dim=1)  # (B, n_out, C p^2, h, w)
        return from_patches(out, cfg.patch_size, height, width)  # (B, output_length, C, H, W)

    def step_shift(
        self, step_minutes: Tensor | float | None, batch: int, device: torch.device
    ) -> Tensor:
        """Layer 1's input-gate offsets ``(B, 7 hidden, 1, 1)`` for steps of ``step_minutes``."""
        if step_minutes is None:
            raise ValueError(
                "this model takes its step's duration as an input (step_input): pass "
                "step_minutes, the minutes between the frames it is fed"
            )
        minutes = torch.as_tensor(step_minutes, dtype=torch.float32, device=device).reshape(-1)
        if minutes.numel() not in (1, batch) or not bool(torch.all(minutes > 0)):
            raise ValueError(
                f"step_minutes {minutes.tolist()}: expected one positive number or {batch}"
            )
        s = (minutes / STEP_SCALE).expand(batch)
        features = torch.stack([s, torch.log(s)], dim=1)  # (B, 2)
        return self.step_gates(features)[:, :, None, None]

    def _patch_mask(self, mask: Tensor, b: int, ch: int, height: int, width: int) -> Tensor:
        steps = self.config.total_length - 2
        if mask.ndim == 2:
            mask = mask[:, :, None, None, None]  # (B, T-2, 1, 1, 1)
        if mask.ndim != 5 or mask.shape[1] != steps:
            raise ValueError(
                f"mask: shape {tuple(mask.shape)}, expected (B, {steps}) or (B, {steps}, C, H, W)"
            )
        if mask.shape[2:] == (1, 1, 1):
            return mask.to(dtype=torch.float32 if not mask.is_floating_point() else mask.dtype)
        mask = mask.expand(b, steps, ch, height, width).to(torch.float32)
        return to_patches(mask, self.config.patch_size)  # (B, T-2, C p^2, h, w)


def count_parameters(model: nn.Module) -> int:
    """Return the number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def autocast(device: torch.device | str, enabled: bool = True, native_only: bool = True):
    """Return a bf16 autocast context for ``device`` (CUDA or CPU); a no-op when disabled.

    With ``native_only`` (the default), bf16 is used only where the device has fast bf16
    kernels (:func:`mimcast.models.device.bf16_native`); elsewhere it runs in fp32 and says
    so once, since bf16 there would be many times slower, not faster.
    """
    from mimcast.models.device import bf16_native

    device_type = torch.device(device).type
    if enabled and native_only and not bf16_native(device):
        if device_type not in _FP32_SAID:
            _FP32_SAID.add(device_type)
            logging.getLogger(__name__).info(
                "bf16 requested, but this %s has no native bf16 kernels: running in fp32",
                device_type,
            )
        enabled = False
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=enabled)


_FP32_SAID: set[str] = set()
STEP_VERSIONS = 32  # compiled versions of the step dynamo may keep (compile_step)


def compile_step(model: MIMNet, **options) -> MIMNet:
    """Compile the per-time-step computation with ``torch.compile`` and return ``model``.

    Compiling one step (reused every time step) keeps compile time independent of the
    sequence length, unlike compiling the unrolled ``forward``. Inductor fuses the gate norm
    and the gates' element-wise work into a few loops; the convolutions stay oneDNN/cuDNN
    calls. Where compiling fails (a platform without a working compiler toolchain, a backend
    bug), the step says why once and runs eagerly: the same results, only slower. A backward
    pass that fails to compile raises only in ``backward()``: run training steps through
    :func:`eager_on_failure`.
    """
    import torch._dynamo  # its exceptions and its limit of versions, below

    # One training run calls the step in 8 variants (the first step or a later one, with
    # gradients or in validation, a full batch or an epoch's last one); past dynamo's default
    # of 8 compiled versions it silently ran the step eagerly for the rest of the run.
    limit = torch._dynamo.config.recompile_limit
    torch._dynamo.config.recompile_limit = max(limit, STEP_VERSIONS)
    eager = model.stack.forward
    compiled = torch.compile(eager, **options)

    def forward(*args, **kwargs):
        try:
            return compiled(*args, **kwargs)
        except torch._dynamo.exc.TorchDynamoException as err:
            return _eager_retry(model, err, lambda: eager(*args, **kwargs))

    model.stack.forward = forward  # type: ignore[method-assign]
    return model


def is_compiled(model: MIMNet) -> bool:
    """Whether ``model``'s step runs compiled (:func:`compile_step`)."""
    return "forward" in model.stack.__dict__


def eager_on_failure(model: MIMNet, fn):
    """Return ``fn()``, a step through ``model`` (forward and backward); where ``model``'s step
    is compiled and ``fn`` fails, say why once, make the step eager and return ``fn()`` again.

    Errors that are not the compiler's fail again eagerly: they are raised from there, and the
    step stays compiled. ``fn`` must be safe to repeat (clear gradients before its backward,
    step no optimiser).
    """
    if not is_compiled(model):
        return fn()
    try:
        return fn()
    except Exception as err:  # a backward that does not compile raises a plain RuntimeError
        return _eager_retry(model, err, fn)


def _eager_retry(model: MIMNet, err: BaseException, call):
    """Return ``call()`` with ``model``'s step eager from now on, and say why; where the eager
    call fails as well, the error was not the compiler's: the step stays compiled."""
    compiled = model.stack.__dict__.pop("forward", None)  # the class's eager forward again
    try:
        out = call()
    except BaseException:
        if compiled is not None:
            model.stack.forward = compiled  # type: ignore[method-assign]
        raise
    cause = getattr(err, "inner_exception", None) or err.__cause__ or err
    logging.getLogger(__name__).warning(
        "torch.compile failed (%s: %s): running this model's step eagerly",
        type(cause).__name__, str(cause).strip()[:300],
    )  # fmt: skip
    return out
