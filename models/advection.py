"""Semi-Lagrangian advection on tensors: trajectories along a motion field, and warping.

Used by the Lagrangian (advection-free) MIMNet: inputs and targets are moved into the
frame that travels with the echoes at the reference time, the network learns only their
evolution (growth, decay, deformation), and its outputs are moved forward along the same
motion again.

Conventions
-----------
- ``velocity`` is ``(B, 2, H, W)`` in pixels per time step: channel 0 is the motion along
  columns (x), channel 1 along rows (y, increasing row index), as pysteps' motion methods
  return it.
- A displacement field ``(B, 2, H, W)`` says, per pixel, where (relative to that pixel) the
  value is taken from: ``warp(f, d)(p) = f(p + d(p))`` (bilinear), invalid where ``p + d``
  leaves the grid or meets a no-data pixel.
- :func:`trajectories` integrates ``velocity`` step by step from every pixel (the velocity is
  re-sampled at the displaced position each step, as pysteps' semi-Lagrangian scheme does).

For a reference time 0 and frame ``F_k`` at step ``k``:

- Lagrangian frame ``L_k(p) = F_k(p + A_k(p))`` with ``A_k = trajectories(+V)[k-1]`` for ``k > 0``
  (where the parcel at ``p`` will be) and ``trajectories(-V)[|k|-1]`` for ``k < 0`` (where it was);
- back to the Eulerian grid: ``E_k(q) = L_k(q + B_k(q))`` with ``B_k = trajectories(-V)[k-1]``.
  With ``L_k = F_0`` this is plain extrapolation of the last frame.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor


def _grid(disp: Tensor) -> Tensor:
    """Normalised sampling grid ``(B, H, W, 2)`` for ``p + disp`` (align_corners=True)."""
    _, _, h, w = disp.shape
    rows = torch.arange(h, dtype=disp.dtype, device=disp.device).view(1, h, 1)
    cols = torch.arange(w, dtype=disp.dtype, device=disp.device).view(1, 1, w)
    x = (cols + disp[:, 0]) * (2.0 / max(w - 1, 1)) - 1.0  # (B, H, W)
    y = (rows + disp[:, 1]) * (2.0 / max(h - 1, 1)) - 1.0  # (B, H, W)
    return torch.stack([x, y], dim=-1)  # (B, H, W, 2)


def displacements(velocity: Tensor, steps: int) -> Iterator[Tensor]:
    """Yield the cumulative displacement ``(B, 2, H, W)`` after 1, 2, ..``steps`` steps.

    One step's field at a time, so a long forecast on a large grid never holds them all.
    """
    disp = torch.zeros_like(velocity)
    for _ in range(steps):
        v = F.grid_sample(velocity, _grid(disp), mode="bilinear", padding_mode="border",
                          align_corners=True)  # fmt: skip
        disp = disp + v  # (B, 2, H, W)
        yield disp


def trajectories(velocity: Tensor, steps: int) -> Tensor:
    """Return cumulative displacements ``(steps, B, 2, H, W)`` after 1..``steps`` steps."""
    out = list(displacements(velocity, steps))
    if not out:
        return velocity.new_zeros((0, *velocity.shape))
    return torch.stack(out)


def warp(
    field: Tensor, disp: Tensor, valid: Tensor | None = None, mode: str = "bilinear"
) -> tuple[Tensor, Tensor]:
    """Sample ``field`` ``(B, C, H, W)`` at ``p + disp``; return ``(values, valid)``.

    ``valid`` (``(B, 1, H, W)``, 1 where ``field`` has data) travels with the values: an output
    pixel is valid when its source lies inside the grid and mostly on valid pixels. Invalid
    output pixels hold 0. ``mode="nearest"`` takes the nearest source pixel's value instead of
    interpolating: no new values, so the field's value distribution is not smoothed.
    """
    grid = _grid(disp)
    if valid is None:
        valid = torch.ones_like(field[:, :1])
    values = F.grid_sample(field * valid, grid, mode=mode, padding_mode="zeros",
                           align_corners=True)  # fmt: skip
    weight = F.grid_sample(valid, grid, mode=mode, padding_mode="zeros", align_corners=True)
    inside = (grid.abs() <= 1.0 + 1e-6).all(dim=-1)[:, None]  # (B, 1, H, W)
    ok = inside & (weight > 0.5)
    # renormalise by the valid weight so no-data neighbours do not darken edges
    values = torch.where(ok, values / weight.clamp_min(1e-6), torch.zeros_like(values))
    return values, ok.to(field.dtype)


def to_lagrangian(
    frames: Tensor, valid: Tensor, velocity: Tensor, n_inputs: int
) -> tuple[Tensor, Tensor]:
    """Move frames ``(B, T, C, H, W)`` into the frame moving with ``velocity``.

    Frame ``n_inputs - 1`` (the reference time) is unchanged; earlier frames are taken from
    where their echoes were, later ones (training targets) from where they will be. Returns
    the frames and their validity ``(B, T, 1, H, W)``.
    """
    t = frames.shape[1]
    back = trajectories(-velocity, max(n_inputs - 1, 0))
    ahead = trajectories(velocity, max(t - n_inputs, 0))
    outs, oks = [], []
    for k in range(t):
        offset = k - (n_inputs - 1)
        if offset == 0:
            outs.append(frames[:, k])
            oks.append(valid[:, k])
            continue
        disp = ahead[offset - 1] if offset > 0 else back[-offset - 1]
        f, ok = warp(frames[:, k], disp, valid[:, k])
        outs.append(f)
        oks.append(ok)
    return torch.stack(outs, dim=1), torch.stack(oks, dim=1)


def from_lagrangian(
    frames: Tensor, velocity: Tensor, carry: tuple[Tensor, Tensor] | None = None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Advect Lagrangian forecasts ``(B, L, C, H, W)`` (lead 1..L) onto the Eulerian grid.

    Returns the forecasts and their validity ``(B, L, 1, H, W)``: 0 where the echo would come
    from outside the grid (unknown, never "no rain"); and ``carry`` moved to every lead.
    ``carry``: ``(field, valid)`` ``(B, C, H, W)``, moved along the same trajectories to the
    nearest pixel, as ``extrapolate(field, valid, velocity, L, mode="nearest")`` moves it,
    without integrating them a second time: ``(B, L, C, H, W)``, NaN where not valid (None
    without ``carry``).
    """
    b, n, _, h, w = frames.shape
    # filled lead by lead: on a large grid a list of leads and its stacked copy would be two
    outs, oks = torch.empty_like(frames), frames.new_empty((b, n, 1, h, w))
    carried = None
    if carry is not None:
        field, valid = carry
        carried = field.new_empty((field.shape[0], n, *field.shape[1:]))
    for k, back in enumerate(displacements(-velocity, n)):
        outs[:, k], oks[:, k] = warp(frames[:, k], back)
        if carried is not None:
            values, known = warp(field, back, valid, mode="nearest")
            carried[:, k] = torch.where(known > 0, values, torch.nan)
    return outs, oks, carried


def extrapolate(
    field: Tensor, valid: Tensor, velocity: Tensor, steps: int, mode: str = "bilinear"
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``field`` ``(B, C, H, W)`` advected 1, 2, ..``steps`` steps forward: each lead's
    values and validity, as :func:`from_lagrangian` gives a Lagrangian forecast that never
    changes (the reference time's frame moved along the same trajectories). ``mode``: as
    :func:`warp`'s."""
    for back in displacements(-velocity, steps):
        yield warp(field, back, valid, mode)
