"""One readable training loop for MIMNet: AdamW, warm-up + cosine LR, clipping, bf16 autocast,
scheduled sampling, masked losses, validation with CSI, atomic checkpoints, exact resume, DDP.

Contract
--------
:func:`train` takes datasets whose items are ``(frames, valid)`` float tensors
``(T, C, H, W)`` (normalised values in [0, 1] and a validity mask; see
``pipeline.sequences``), or ``(frames, valid, step_minutes)`` for a model with
``step_input`` (``pipeline.packs``), and writes into ``out_dir``:

- ``best.safetensors`` / ``last.safetensors``: model checkpoints (``models.checkpoint``),
  with the step and validation scores in their metadata; best is the validated step with the
  lowest ``val_mse``, or with ``select = "csi_30"`` (say) the highest CSI at 30 dBZ; with
  ``keep_validated``, also ``step_NNNNNN.safetensors`` at every validation, to choose among
  afterwards (running the same run again with another ``select`` re-chooses among them);
- ``state.safetensors``: everything needed to resume exactly (model, optimiser, scheduler,
  RNG states, epoch and position in the data order), written atomically every
  ``checkpoint_every`` steps; a run started again in the same directory continues from it;
- ``metrics.jsonl``: one JSON object per log or validation event;
- ``training_curves.png``: loss, validation MSE and CSI against steps.

When launched by ``torchrun`` (``WORLD_SIZE`` > 1) it trains with DDP (NCCL on CUDA, gloo on
CPU and where processes share a GPU); rank 0 logs, validates and writes files. Losses and
scheduled sampling live here, not in the model.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader

from mimcast.models.checkpoint import (
    CheckpointError,
    InputConfig,
    open_checkpoint,
    read_header,
    save_checkpoint,
)
from mimcast.models.device import (
    check_device_name,
    ddp_backend,
    local_rank,
    local_world_size,
    resolve_device,
)
from mimcast.models.mimnet import MIMNet, MIMNetConfig, autocast, compile_step, eager_on_failure
from mimcast.pipeline.atomic import atomic_path
from mimcast.pipeline.zr import MARSHALL_PALMER


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, sampling, validation and bookkeeping of one training run."""

    batch_size: int = 8  # samples per step (per rank under DDP)
    max_steps: int = 1500  # optimiser steps in total
    lr: float = 2e-3  # peak learning rate (AdamW)
    weight_decay: float = 1e-4  # AdamW weight decay
    warmup_steps: int = 50  # linear warm-up steps before the cosine decay
    min_lr_ratio: float = 0.05  # the cosine decays to lr * min_lr_ratio at max_steps
    grad_clip: float = 1.0  # clip the global gradient norm (0: off)
    bf16: bool = True  # bf16 autocast (CPU and CUDA)
    loss: str = "mse+mae"  # "mse+mae", or "balanced" (HKO-7 weights towards heavy echoes)
    scheduled_sampling: bool = True  # PredRNN scheduled sampling on the predicted frames
    ss_stop_step: int = 1000  # the probability of feeding the truth falls to 0 by this step
    reverse_ss: bool = False  # PredRNN-V2 reverse scheduled sampling on the observed frames
    reverse_ss_steps: int = 500  # steps over which reverse sampling reaches the truth
    val_every: int = 250  # validate (and write best/last) every N steps
    keep_validated: bool = False  # also keep each validated step's weights (step_NNNNNN)
    select: str = "val_mse"  # the validation score that picks best: val_mse, or csi_<T>
    val_batches: int = 20  # batches per validation (0: the whole validation set)
    checkpoint_every: int = 50  # write the resumable state every N steps
    log_every: int = 10  # log training loss every N steps
    num_workers: int = 0  # DataLoader worker processes
    seed: int = 0  # seeds weights, data order and sampling masks
    balance_archives: bool = False  # each cube drawn equally often per epoch (small repeated)
    compile: bool = False  # torch.compile the per-step computation
    device: str = "auto"  # "auto" (CUDA when present), "cpu", "cuda", "cuda:1", ...
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower)
    thresholds_dbz: tuple[float, ...] = (20.0, 30.0, 40.0)  # CSI thresholds in validation
    init: str = ""  # a checkpoint whose weights start the run (fine-tuning); fresh optimiser

    def __post_init__(self) -> None:
        if self.loss not in ("mse+mae", "balanced"):
            raise ValueError(f"TrainConfig.loss={self.loss!r}: 'mse+mae' or 'balanced'")
        for name in ("batch_size", "max_steps", "val_every", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name}={getattr(self, name)}: must be >= 1")
        check_device_name(self.device)
        csi = [csi_key(t) for t in self.thresholds_dbz]
        if self.select != "val_mse" and self.select not in csi:
            raise ValueError(f"TrainConfig.select={self.select!r}: 'val_mse' (lowest wins) or one "
                             f"of {', '.join(csi)} (highest wins; thresholds_dbz)")  # fmt: skip


def csi_key(threshold_dbz: float) -> str:
    """The name of the model's validation CSI at a threshold (``csi_30``), as ``select`` takes."""
    return f"csi_{int(threshold_dbz)}"


def selection_score(scores: dict[str, float], select: str) -> float | None:
    """The validation score ``select`` as lower-is-better (CSI negated); None if missing/NaN."""
    value = scores.get(select)
    if value is None or math.isnan(value):
        return None
    return float(value) if select == "val_mse" else -float(value)


def kept_steps(out_dir: str | Path, up_to: int | None = None) -> list[tuple[int, Path, dict]]:
    """The kept ``step_NNNNNN.safetensors`` of a run (``keep_validated``) as ``(step, path,
    scores)`` in step order; steps after ``up_to`` are left out."""
    kept = []
    for path in Path(out_dir).glob("step_*.safetensors"):
        scores = read_header(path)[3]
        step = int(scores.get("step", -1))
        if up_to is None or step <= up_to:
            kept.append((step, path, scores))
    return sorted(kept, key=lambda k: k[0])


def choose_kept(out_dir: str | Path, select: str, up_to: int | None = None) -> float | None:
    """Choose ``best.safetensors`` afresh among the kept ``step_NNNNNN.safetensors`` of a run.

    Each kept file carries its validation scores, so a run trained with ``keep_validated`` can
    be re-chosen on another ``select`` without retraining. Steps after ``up_to`` are ignored
    (a resumed run's files from beyond its state). Copies the winner (first of equals) onto
    ``best.safetensors`` atomically and returns its lower-is-better score (``selection_score``),
    or None when no kept file has the score.
    """
    candidates = []
    for step, path, scores in kept_steps(out_dir, up_to):
        score = selection_score(scores, select)
        if score is not None:
            candidates.append((score, step, path))
    if not candidates:
        return None
    score, _, path = min(candidates, key=lambda c: (c[0], c[1]))
    with atomic_path(Path(out_dir) / "best.safetensors") as tmp:
        tmp.write_bytes(path.read_bytes())
    return score


def average_kept(out_dir: str | Path, from_step: int, path: str | Path | None = None) -> Path:
    """Average the weights of a run's kept steps from ``from_step`` on into one checkpoint.

    Averaging the weights met along the end of a schedule (Polyak averaging; SWA, Izmailov et
    al. 2018) gives a network between those steps that often generalises better than any one
    of them. Writes ``path`` (default ``average.safetensors`` in the run) atomically; its
    header names the averaged steps and carries no validation scores (the average was not
    validated). Raises ValueError with fewer than two kept steps from ``from_step``.
    """
    out = Path(out_dir)
    every = kept_steps(out)
    kept = [(step, p) for step, p, _ in every if step >= from_step]
    if len(kept) < 2:
        found = ", ".join(str(step) for step, _, _ in every) or "none"
        raise ValueError(f"{out}: {len(kept)} kept step(s) from step {from_step} (kept: "
                         f"{found}); averaging needs two or more (train with keep_validated = "
                         "true)")  # fmt: skip
    first, total = None, {}
    for step, p in kept:  # one checkpoint in memory at a time: a running sum
        ckpt = open_checkpoint(p)
        setting = (ckpt.name, ckpt.model.config, ckpt.inputs)
        first = first or (setting, step)
        if setting != first[0]:
            raise ValueError(f"{p}: step {step} is another model or input setting than step "
                             f"{first[1]}; only steps of one run can be averaged")  # fmt: skip
        for key, value in ckpt.model.state_dict().items():  # integer buffers: the last step's
            is_float = value.is_floating_point()
            total[key] = total.get(key, 0) + value.double() if is_float else value
    last = ckpt  # the last step's model, inputs and header carry the average
    # loading copies each float64 mean into its parameter's own dtype
    last.model.load_state_dict({key: value / len(kept) if value.is_floating_point() else value
                                for key, value in total.items()})  # fmt: skip
    kept_keys = ("cubes", "train_windows", "val_windows", "init")
    extra = {k: v for k, v in last.extra.items() if k in kept_keys}
    extra.update(step=kept[-1][0], averaged_steps=[step for step, _ in kept])
    return save_checkpoint(last.model, path or out / "average.safetensors", extra,
                           inputs=last.inputs)  # fmt: skip


def init_weights(model: MIMNet, path: str | Path, inputs: InputConfig) -> None:
    """Start ``model`` from the weights of checkpoint ``path`` (``TrainConfig.init``).

    The checkpoint must hold the same model configuration and read its inputs the same way
    (frame, dBZ range, motion frames): a model trained on other inputs would be fine-tuned on
    data it misreads. Raises CheckpointError naming the file and the first difference. A run
    that resumes does not read it: its state holds its weights, so resuming stays exact.
    """
    ckpt = open_checkpoint(path)
    if ckpt.model.config != model.config:
        ours, theirs = dataclasses.asdict(model.config), dataclasses.asdict(ckpt.model.config)
        diff = next(k for k in ours if ours[k] != theirs.get(k))
        raise CheckpointError(f"{path}: cannot start this run from it: model {diff} = "
                              f"{theirs.get(diff)!r}, the run's [model] has "
                              f"{ours[diff]!r}")  # fmt: skip
    for field in ("frame", "dbz_min", "dbz_max", "motion_frames"):
        theirs, ours = getattr(ckpt.inputs, field), getattr(inputs, field)
        if theirs != ours:
            raise CheckpointError(f"{path}: cannot start this run from it: it was trained "
                                  f"with {field} = {theirs!r}, this run's data has "
                                  f"{ours!r}")  # fmt: skip
    model.load_state_dict(ckpt.model.state_dict())


# --------------------------------------------------------------------------------------------
# losses and scores


#: HKO-7 balanced loss: rain-rate thresholds (mm/h) and weights; converted to dBZ with
#: Marshall-Palmer (``pipeline.zr``).
BALANCED = ((0.5, 2.0), (2.0, 5.0), (5.0, 10.0), (10.0, 30.0), (30.0, 30.0))


def balanced_weights(target_dbz: torch.Tensor) -> torch.Tensor:
    """Return per-pixel loss weights that grow with the target's rain intensity."""
    weights = torch.ones_like(target_dbz)
    for rate, weight in BALANCED:
        dbz = 10 * math.log10(MARSHALL_PALMER.a) + 10 * MARSHALL_PALMER.b * math.log10(rate)
        weights = torch.where(target_dbz >= dbz, torch.full_like(weights, weight), weights)
    return weights


def masked_loss(
    pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, weights: torch.Tensor | None
) -> torch.Tensor:
    """Return MSE + MAE over valid pixels (optionally weighted); no-data pixels never count."""
    w = valid if weights is None else valid * weights
    denom = valid.sum().clamp_min(1.0)
    err = pred - target
    return ((w * err * err).sum() + (w * err.abs()).sum()) / denom


def contingency(pred_dbz: np.ndarray, obs_dbz: np.ndarray, valid: np.ndarray, threshold: float):
    """Return ``(hits, misses, false_alarms)`` at ``threshold`` over valid pixels."""
    p, o = (pred_dbz >= threshold) & valid, (obs_dbz >= threshold) & valid
    return int((p & o).sum()), int((~p & o).sum()), int((p & ~o).sum())


# --------------------------------------------------------------------------------------------
# schedules


def lr_factor(step: int, config: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio``."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    span = max(config.max_steps - config.warmup_steps, 1)
    progress = min((step - config.warmup_steps) / span, 1.0)
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (
        1 + math.cos(math.pi * progress)
    )


def sampling_mask(
    step: int, batch: int, model_config: MIMNetConfig, config: TrainConfig, gen: torch.Generator
) -> torch.Tensor:
    """Return the scheduled-sampling mask ``(B, T-2)``: 1 feeds the truth, 0 the prediction."""
    n_in = model_config.input_length - 1  # steps 1 .. input_length-1 read observed frames
    n_out = model_config.total_length - 2 - n_in
    if config.reverse_ss:
        p_in = 0.5 + 0.5 * min(step / max(config.reverse_ss_steps, 1), 1.0)
        observed = (torch.rand(batch, n_in, generator=gen) < p_in).float()
    else:
        observed = torch.ones(batch, n_in)
    eta = max(0.0, 1.0 - step / config.ss_stop_step) if config.scheduled_sampling else 0.0
    predicted = (torch.rand(batch, n_out, generator=gen) < eta).float()
    return torch.cat([observed, predicted], dim=1)


# --------------------------------------------------------------------------------------------
# data order


class EpochSampler:
    """Reproducible per-epoch permutation, sharded by rank, resumable mid-epoch.

    Epoch ``e`` visits ``permutation(seed + e)[rank::world_size]`` (padded so every rank gets
    the same number of samples), starting at ``start`` samples into it.

    ``groups`` (one label per sample, e.g. its archive): an epoch still has ``n`` samples, but
    each group fills an equal share of it, going round a permutation of its own samples (a
    small group's samples repeat, a large group's are a different subset each epoch).
    """

    def __init__(self, n: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 groups: np.ndarray | None = None) -> None:  # fmt: skip
        if n < 1:
            raise ValueError("EpochSampler: the dataset is empty")
        if groups is not None and len(groups) != n:
            raise ValueError(f"EpochSampler: {len(groups)} group labels for {n} samples")
        self.n, self.seed, self.rank, self.world_size = n, seed, rank, world_size
        self.groups = None if groups is None else np.asarray(groups)
        self.epoch, self.start = 0, 0

    def set_position(self, epoch: int, start: int) -> None:
        """Continue at sample ``start`` of epoch ``epoch`` (this rank's share)."""
        self.epoch, self.start = epoch, start

    def per_rank(self) -> int:
        """Samples each rank sees per epoch."""
        return -(-self.n // self.world_size)

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng(self.seed + self.epoch)
        if self.groups is None:
            order = rng.permutation(self.n)
        else:
            labels = np.unique(self.groups)
            share = -(-self.n // len(labels))
            members = [rng.permutation(np.flatnonzero(self.groups == g)) for g in labels]
            order = rng.permutation(np.concatenate([np.resize(m, share) for m in members]))
            order = order[: self.n]
        total = self.per_rank() * self.world_size
        order = np.resize(order, total)  # pad by wrapping, as DistributedSampler does
        mine = order[self.rank :: self.world_size]
        return iter(mine[self.start :].tolist())

    def __len__(self) -> int:
        return self.per_rank() - self.start


# --------------------------------------------------------------------------------------------
# resumable state


def _save_state(path: Path, model, opt, sched, gen, progress: dict[str, Any]) -> None:
    tensors: dict[str, torch.Tensor] = {
        f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()
    }
    opt_state = opt.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in opt_state["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"opt.{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rng.sampling"] = gen.get_state()
    meta = {
        "progress": progress,
        "param_groups": opt_state["param_groups"],
        "opt_scalars": scalars,
        "scheduler": sched.state_dict(),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"state": json.dumps(meta, default=_jsonable)})


def _jsonable(value):
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def _load_state(path: Path, model, opt, sched, gen) -> dict[str, Any]:
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["state"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for idx, entry in meta["opt_scalars"].items():
        state.setdefault(int(idx), {}).update(entry)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    sched.load_state_dict(meta["scheduler"])
    torch.set_rng_state(tensors["rng.torch"])
    gen.set_state(tensors["rng.sampling"])
    return meta["progress"]


# --------------------------------------------------------------------------------------------
# distributed set-up


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0


def train_device(config: TrainConfig) -> torch.device:
    """The device this process trains on: under torchrun, the GPU of its ``LOCAL_RANK``."""
    return resolve_device(config.device, local_rank())


def _setup(config: TrainConfig) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = train_device(config)
    if world > 1 and not dist.is_initialized():
        gpus = torch.cuda.device_count() if device.type == "cuda" else 0
        backend = ddp_backend(device.type, local_world_size(), gpus)
        if device.type == "cuda" and backend == "gloo" and rank == 0:
            warnings.warn(f"{local_world_size()} processes share {gpus} GPU(s): DDP over gloo "
                          "(NCCL needs one GPU per process)", stacklevel=2)  # fmt: skip
        dist.init_process_group(backend=backend)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return _Dist(rank, world, local_rank(), device)


# --------------------------------------------------------------------------------------------
# the loop


@dataclass
class TrainResult:
    """Where a run ended and what it wrote."""

    step: int
    best_val_mse: float | None
    best: Path | None
    last: Path | None
    metrics: Path
    curves: Path | None
    stopped: bool = False  # stopped at the deadline before max_steps (the same call resumes)
    best_scores: dict[str, float] | None = None  # the validation scores in best's header (step too)


def validate(
    model: torch.nn.Module,
    loader: DataLoader,
    model_config: MIMNetConfig,
    config: TrainConfig,
    dbz_range: tuple[float, float],
    device: torch.device,
) -> dict[str, float]:
    """Return MSE (dBZ^2 on valid pixels) and CSI per threshold, for MIMNet and persistence."""
    lo, hi = dbz_range
    n_in = model_config.input_length
    sums = {"mse": 0.0, "persistence_mse": 0.0, "pixels": 0.0}
    tables = {(m, t): np.zeros(3) for m in ("model", "persistence") for t in config.thresholds_dbz}
    model.eval()
    with torch.no_grad():
        for i, batch in enumerate(loader):
            if config.val_batches and i >= config.val_batches:
                break
            frames, valid, steps = _unpack(batch, device)
            with autocast(device, enabled=config.bf16):
                pred = model(frames[:, :n_in], step_minutes=steps)
            pred = pred.float().clamp(0, 1) * (hi - lo) + lo
            obs = frames[:, n_in:] * (hi - lo) + lo
            persist = (frames[:, n_in - 1 : n_in] * (hi - lo) + lo).expand_as(obs)
            ok = valid[:, n_in:]
            sums["mse"] += float((ok * (pred - obs) ** 2).sum())
            sums["persistence_mse"] += float((ok * (persist - obs) ** 2).sum())
            sums["pixels"] += float(ok.sum())
            ok_np, obs_np = ok.cpu().numpy() > 0, obs.cpu().numpy()
            for name, field_ in (("model", pred), ("persistence", persist)):
                f_np = field_.cpu().numpy()
                for t in config.thresholds_dbz:
                    tables[(name, t)] += contingency(f_np, obs_np, ok_np, t)
    model.train()
    px = max(sums["pixels"], 1.0)
    out = {"val_mse": sums["mse"] / px, "persistence_mse": sums["persistence_mse"] / px}
    for (name, t), (hits, misses, false_alarms) in tables.items():
        denom = hits + misses + false_alarms
        key = csi_key(t) if name == "model" else "persistence_" + csi_key(t)
        out[key] = hits / denom if denom else float("nan")
    return out


def train(
    model_config: MIMNetConfig,
    config: TrainConfig,
    train_set,
    val_set,
    out_dir: str | Path,
    *,
    dbz_range: tuple[float, float] = (0.0, 70.0),
    extra: dict[str, Any] | None = None,
    progress: bool = True,
    inputs: InputConfig | None = None,
    deadline_s: float | None = None,
) -> TrainResult:
    """Train MIMNet; resume from ``out_dir/state.safetensors`` when it exists.

    ``inputs`` is written into every checkpoint; without it, the checkpoints record the
    Eulerian normalisation ``dbz_range`` the data was scaled with.

    ``deadline_s``: stop this call after the first step that ends this many seconds (wall
    clock) after it started; that step is validated and checkpointed like the last one, so
    the same call resumes the run exactly. All processes of a DDP run stop at the same step.
    """
    inputs = inputs or InputConfig(float(dbz_range[0]), float(dbz_range[1]))
    env = _setup(config)
    out = Path(out_dir)
    if env.main:
        out.mkdir(parents=True, exist_ok=True)
    if config.deterministic:
        torch.use_deterministic_algorithms(True)
    torch.manual_seed(config.seed)
    state_path, metrics_path = out / "state.safetensors", out / "metrics.jsonl"
    model = MIMNet(model_config)
    if config.init:  # a resumed run has its own weights in its state
        if not state_path.exists():
            init_weights(model, config.init, inputs)
        extra = {**(extra or {}), "init": str(config.init)}  # provenance in every header
    model = model.to(env.device)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, config))
    gen = torch.Generator().manual_seed(config.seed * 1000 + 7 + env.rank)
    step, epoch, position, best = 0, 0, 0, None
    if state_path.exists():
        prog = _load_state(state_path, model, opt, sched, gen)
        step, epoch, position, best = prog["step"], prog["epoch"], prog["position"], prog["best"]
        chose = prog.get("select", "val_mse")
        if chose != config.select:  # another score: choose afresh, among kept steps if any
            best = None
            kept = choose_kept(out, config.select, up_to=step) if env.main else None
            if kept is not None:  # the state says so at once: a finished run trains no more
                best = kept
                _save_state(state_path, model, opt, sched, gen,
                            {**prog, "best": best, "select": config.select})  # fmt: skip
            elif env.main and (out / "best.safetensors").exists():
                warnings.warn(f"{out}: no kept step has {config.select} (keep_validated was off), "
                              f"so best.safetensors keeps the step chosen on {chose} until a "
                              "later validation", stacklevel=2)  # fmt: skip
    if env.main:  # also without a state: a run killed before its first checkpoint logged too
        _truncate_metrics(metrics_path, step)
    net: torch.nn.Module = model
    if config.compile:
        compile_step(model)
    if env.world > 1:
        ids = [env.device.index] if env.device.type == "cuda" else None
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)

    groups = None
    if config.balance_archives:  # items of both datasets start with their cube's index
        groups = np.array([item[0] for item in train_set.items])
    sampler = EpochSampler(len(train_set), config.seed, env.rank, env.world, groups=groups)
    val_loader = DataLoader(val_set, batch_size=config.batch_size, shuffle=False,
                            num_workers=config.num_workers) if len(val_set) else None  # fmt: skip
    bar = None
    if progress and env.main:
        from tqdm import tqdm

        bar = tqdm(total=config.max_steps, initial=step, desc="train", unit="step")
    metrics = metrics_path.open("a") if env.main else None
    best_path = out / "best.safetensors" if (out / "best.safetensors").exists() else None
    last_path, started = None, time.monotonic()
    n_in = model_config.input_length
    stopped = False

    def forward_backward(frames, valid, steps, mask):  # gradients of one batch; the loss
        with autocast(env.device, enabled=config.bf16):
            pred = net(frames, mask.to(env.device), step_minutes=steps)
        target, ok = frames[:, n_in:], valid[:, n_in:]
        weights = None
        if config.loss == "balanced":
            lo, hi = dbz_range
            weights = balanced_weights(target * (hi - lo) + lo)
        loss = masked_loss(pred.float(), target, ok, weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        return loss

    try:
        while step < config.max_steps and not stopped:
            sampler.set_position(epoch, position * config.batch_size)
            if hasattr(train_set, "set_epoch"):  # per-epoch augmentation (PackDataset)
                train_set.set_epoch(epoch)
            loader = DataLoader(train_set, batch_size=config.batch_size, sampler=sampler,
                                num_workers=config.num_workers)  # fmt: skip
            for batch in loader:
                frames, valid, steps = _unpack(batch, env.device)
                mask = sampling_mask(step, frames.shape[0], model_config, config, gen)
                this = functools.partial(forward_backward, frames, valid, steps, mask)
                # a compiled step compiles its backward lazily, inside backward(): at the first
                # step, and again for a new batch shape (an epoch's last, partial batch). Not
                # retried under DDP: its ranks would wait on the failed one's reduction
                loss = eager_on_failure(model, this) if env.world == 1 else this()
                grad_norm = (
                    float(torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip))
                    if config.grad_clip
                    else float("nan")
                )
                opt.step()
                sched.step()
                step, position = step + 1, position + 1
                if env.main and (step % config.log_every == 0 or step == 1):
                    _log(metrics, {
                        "step": step, "loss": loss.item(), "lr": sched.get_last_lr()[0],
                        "grad_norm": grad_norm, "epoch": epoch,
                        "elapsed_s": round(time.monotonic() - started, 2),
                    })  # fmt: skip
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{sched.get_last_lr()[0]:.2e}")
                stopped = _past(deadline_s, started, env) and step < config.max_steps
                end = stopped or step == config.max_steps
                if step % config.val_every == 0 or end:
                    best, best_path, last_path = _validate_and_save(
                        env, model, net, val_loader, model_config, config, dbz_range, out,
                        step, best, best_path, metrics, extra, inputs,
                    )  # fmt: skip
                if env.main and (step % config.checkpoint_every == 0 or end):
                    _save_state(state_path, model, opt, sched, gen,
                                {"step": step, "epoch": epoch, "position": position,
                                 "best": best, "select": config.select})  # fmt: skip
                if env.main and stopped:
                    _log(metrics, {"step": step, "event": "deadline", "deadline_s": deadline_s})
                if env.world > 1:
                    dist.barrier()
                if end:
                    break
            else:
                epoch, position = epoch + 1, 0
    finally:
        if bar is not None:
            bar.close()
        if metrics is not None:
            metrics.close()
    curves = plot_curves(metrics_path, out / "training_curves.png") if env.main else None
    best_scores = read_header(best_path)[3] if best_path is not None else None
    best_mse = best  # with a CSI select, best is a negated CSI: report the chosen step's MSE
    if config.select != "val_mse":
        best_mse = best_scores.get("val_mse") if best_scores is not None else None
    return TrainResult(step, best_mse, best_path, last_path, metrics_path, curves, stopped,
                       best_scores)  # fmt: skip


def _unpack(batch, device: torch.device):
    """``(frames, valid, step_minutes or None)`` of a batch of 2- or 3-tuples, on ``device``."""
    frames, valid = batch[0].to(device), batch[1].to(device)
    steps = batch[2].to(device) if len(batch) > 2 else None
    return frames, valid, steps


def _past(deadline_s: float | None, started: float, env: _Dist) -> bool:
    """Whether the deadline has passed; under DDP, whether it has for any process."""
    if deadline_s is None:
        return False
    late = time.monotonic() - started >= deadline_s
    if env.world > 1:  # the ranks' clocks differ slightly: stop together or the barrier hangs
        flag = torch.tensor([float(late)], device=env.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        late = bool(flag.item())
    return late


def _validate_and_save(env, model, net, val_loader, model_config, config, dbz_range, out, step,
                       best, best_path, metrics, extra, inputs):  # fmt: skip
    last_path = None
    if env.main:
        scores = (
            validate(model, val_loader, model_config, config, dbz_range, env.device)
            if val_loader is not None
            else {}
        )
        info = {"step": step, **scores, **(extra or {})}
        last_path = save_checkpoint(model, out / "last.safetensors", extra=info, inputs=inputs)
        if config.keep_validated:
            save_checkpoint(model, out / f"step_{step:06d}.safetensors", extra=info, inputs=inputs)
        val = selection_score(scores, config.select)
        if val is not None and (best is None or val < best):
            best = val
            best_path = save_checkpoint(model, out / "best.safetensors", extra=info, inputs=inputs)
        elif best_path is None:
            best_path = save_checkpoint(model, out / "best.safetensors", extra=info, inputs=inputs)
        _log(metrics, {"step": step, "event": "validation", **scores})
    return best, best_path, last_path


def _log(fh, record: dict[str, Any]) -> None:
    fh.write(json.dumps(record, default=_jsonable) + "\n")
    fh.flush()


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop log lines written after the resumed step (a killed run may have got further)."""
    if not path.exists():
        return
    keep = [r for r in read_metrics(path) if r.get("step", 0) <= step]  # cut lines: dropped
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Return the records of a ``metrics.jsonl``."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:  # empty, or cut short by a kill
            continue
    return records


def plot_curves(metrics_path: Path, png: Path) -> Path | None:
    """Draw training loss, validation MSE and CSI against steps; return the PNG path."""
    records = read_metrics(metrics_path) if metrics_path.exists() else []
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train_rec = [r for r in records if "loss" in r]
    val_rec = [r for r in records if r.get("event") == "validation" and "val_mse" in r]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].plot([r["step"] for r in train_rec], [r["loss"] for r in train_rec])
    axes[0].set(title="training loss (masked MSE + MAE)", xlabel="step", yscale="log")
    if val_rec:
        steps = [r["step"] for r in val_rec]
        axes[1].plot(steps, [r["val_mse"] for r in val_rec], "o-", label="MIMNet")
        axes[1].plot(steps, [r["persistence_mse"] for r in val_rec], "k--", label="persistence")
        axes[1].set(title="validation MSE (dBZ²)", xlabel="step")
        axes[1].legend()
        for key in sorted(k for k in val_rec[-1] if k.startswith("csi_")):
            axes[2].plot(steps, [r[key] for r in val_rec], "o-", label=f"CSI ≥{key[4:]} dBZ")
        axes[2].set(title="validation CSI", xlabel="step", ylim=(0, 1))
        axes[2].legend()
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return png
