"""One training loop for proxy and full runs: `fit(...)`. No optuna here: progress goes through a callback.

Images arrive as cached uint8 arrays at training resolution; augmentation runs in DataLoader workers; the batch
is normalised on the device. On CUDA: bf16 autocast and channels_last; on CPU: fp32. Evaluation scores with the
challenge metric after upsampling logits to the ground-truth resolution, as the challenge does.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from space.config import NUM_CLASSES, ArchConfig, LossConfig, TrainConfig
from space.network import build_model
from train.accel import Accel
from train.augment import AugRanges, DeviceAugment, train_pipeline
from train.data import Split, class_stats
from train.infer import autocast, logits_to_mask, normalise, predict_logits, to_tensor
from train.losses import SegLoss, class_weights
from train.metric import Scorer
from train.schedule import Stage, last_epochs, stage_at, total_epochs

SYNC_EVERY = 10  # steps between host reads of the loss (NaN check, progress)
EMA_DECAY = 0.99  # full-fidelity runs (train.final, analysis.fidelity) evaluate and export averaged weights
FULL_EVALS = 10  # a full-fidelity run scores val about this many times


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite: the run cannot recover."""


class AugmentedSplit(Dataset):
    """Cached uint8 images + masks through an albumentations pipeline; returns uint8 HWC and uint8 HW (the masks
    become int64 at the loss, not in DataLoader shared memory)."""

    def __init__(self, split: Split, size: int, strength: float, seed: int):
        self.images, self.masks = split.images, split.masks
        self.pipeline = train_pipeline(size, strength, seed)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        out = self.pipeline(image=self.images[i], mask=self.masks[i])
        return torch.from_numpy(np.ascontiguousarray(out["image"])), torch.from_numpy(np.ascontiguousarray(out["mask"]))


def repeat_factors(masks: np.ndarray | list[np.ndarray], threshold: float) -> np.ndarray:
    """Repeat-factor sampling (Gupta et al., LVIS 2019): class c, present in a share f_c of the images, has the
    factor max(1, sqrt(threshold / f_c)); an image, the largest factor of the classes it holds. Images holding a
    class rarer than `threshold` are drawn that many times more often; 0 = every image 1."""
    if threshold <= 0:
        return np.ones(len(masks))
    present = np.stack([np.bincount(m.ravel(), minlength=NUM_CLASSES)[:NUM_CLASSES] > 0 for m in masks])
    share = present.mean(0)
    per_class = np.maximum(1.0, np.sqrt(threshold / np.maximum(share, 1e-12)))
    return np.where(present, per_class, 1.0).max(1)


def epoch_order(n: int, factors: np.ndarray | None, generator: torch.Generator) -> torch.Tensor:
    """One epoch's `n` image indices: a permutation, or with repeat `factors` `n` draws with replacement in
    proportion to them (the epoch keeps its length; a rare-class image comes up about its factor times as often)."""
    if factors is None:
        return torch.randperm(n, generator=generator)
    return torch.multinomial(torch.as_tensor(factors, dtype=torch.float64), n, replacement=True, generator=generator)


class EpochOrder(torch.utils.data.Sampler):
    """DataLoader sampler of `epoch_order` (a fresh draw from `generator` every epoch)."""

    def __init__(self, n: int, factors: np.ndarray, generator: torch.Generator):
        self.n, self.factors, self.generator = n, factors, generator

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        return iter(epoch_order(self.n, self.factors, self.generator).tolist())


class HostBatches:
    """The CPU path: DataLoader workers (or the main process) run albumentations; each epoch's order and
    augmentation are drawn from that epoch's seed alone (`epoch(seed)`), so a resumed run repeats them. With
    `factors` (`repeat_factors`) the order is repeat-factor sampled, else a shuffle."""

    def __init__(self, split: Split, size: int, strength: float, batch: int, workers: int, pin: bool,
                 factors: np.ndarray | None = None):
        self.dataset = AugmentedSplit(split, size, strength, 0)
        self.order = torch.Generator()
        sampler = None if factors is None else EpochOrder(len(self.dataset), factors, self.order)
        self.loader = DataLoader(self.dataset, batch_size=batch, shuffle=sampler is None, sampler=sampler,
                                 drop_last=True, num_workers=workers, pin_memory=pin,
                                 worker_init_fn=_seed_worker if workers else None,
                                 generator=self.order)  # workers draw their seeds from `order` every epoch

    def __len__(self) -> int:
        return len(self.loader)

    def epoch(self, seed: int):
        self.order.manual_seed(seed)
        self.dataset.pipeline.set_random_seed(seed)  # the main process's pipeline (workers=0)
        return iter(self.loader)


class DeviceBatches:
    """The cached training split on `device` as uint8; each epoch a seeded permutation into full batches, each
    augmented there (`DeviceAugment`, the same `AugRanges` as the CPU pipeline). Yields normalised float images
    and uint8 masks."""

    def __init__(self, split: Split, size: int, strength: float, device: torch.device, batch: int,
                 channels_last: bool, factors: np.ndarray | None = None):
        images, masks = torch.from_numpy(split.images), torch.from_numpy(split.masks)
        if images.shape[1:3] != (size, size):  # cached at another size: resize once, not every step
            images = F.interpolate(images.permute(0, 3, 1, 2).float(), (size, size), mode="bilinear",
                                   antialias=True).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
            masks = F.interpolate(masks[:, None].float(), (size, size), mode="nearest")[:, 0].to(torch.uint8)
        self.images, self.masks = images.contiguous().to(device), masks.contiguous().to(device)
        self.augment = DeviceAugment(AugRanges.at(strength), 0, device)
        self.order = torch.Generator()
        self.batch, self.channels_last, self.factors = batch, channels_last, factors

    def __len__(self) -> int:
        return len(self.images) // self.batch

    def epoch(self, seed: int):
        self.order.manual_seed(seed)
        self.augment.gen.manual_seed(seed)
        perm = epoch_order(len(self.images), self.factors, self.order).to(self.images.device)
        for i in range(len(self)):
            idx = perm[i * self.batch:(i + 1) * self.batch]
            x, y = self.augment(self.images[idx], self.masks[idx])
            yield normalise(x, self.channels_last), y


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's data order, augmentation and other random draws, from the run's seed and the
    epoch alone: a run resumed at any epoch draws what an uninterrupted one would."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def _seed_worker(worker_id: int) -> None:
    info = torch.utils.data.get_worker_info()
    info.dataset.pipeline.set_random_seed(info.seed % 2**31)


def device_targets(split: Split, device: torch.device) -> list[torch.Tensor]:
    """The split's ground truth at native resolution, moved to `device` once (for `evaluate(targets=...)`)."""
    targets = split.full_masks if split.full_masks is not None else list(split.masks)
    return [torch.from_numpy(np.array(t)).to(device) for t in targets]  # a copy: decoded arrays are read-only


def confusion(target: torch.Tensor, pred: torch.Tensor, c: int = NUM_CLASSES) -> torch.Tensor:
    """(c * c,) counts of (target, prediction) pairs, on their device without a host read (torch.bincount reads
    the index range back to the host, with or without minlength)."""
    index = target.long().flatten() * c + pred.long().flatten()
    return torch.zeros(c * c, dtype=torch.int64, device=index.device).index_add_(0, index, torch.ones_like(index))


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, device: torch.device, batch_size: int = 16,
             flip_tta: bool = False, targets: list[torch.Tensor] | None = None) -> Scorer:
    """Challenge F-measure of `model` on `split`; logits are upsampled to each native mask size before argmax.
    With `targets` (`device_targets`) the confusion matrices are counted on the device (`confusion`) and
    only they come back, one transfer per batch (on CUDA they are made here when not given: pass them to score
    a split repeatedly without uploading it each time); on the CPU each predicted mask is scored on the host."""
    scorer = Scorer()
    if targets is None and device.type == "cuda":
        targets = device_targets(split, device)
    if targets is None:
        host = split.full_masks if split.full_masks is not None else list(split.masks)
        for i in range(0, len(split), batch_size):
            logits = predict_logits(model, split.images[i:i + batch_size], device, flip_tta)
            for lg, gt in zip(logits, host[i:i + batch_size]):
                scorer.add(gt, logits_to_mask(lg, *gt.shape))
        return scorer
    c = NUM_CLASSES
    for i in range(0, len(split), batch_size):
        logits = predict_logits(model, split.images[i:i + batch_size], device, flip_tta)
        cms = []
        for lg, gt in zip(logits, targets[i:i + batch_size]):
            if lg.shape[1:] != gt.shape:
                lg = F.interpolate(lg[None], gt.shape, mode="bilinear", align_corners=False)[0]
            cms.append(confusion(gt, lg.argmax(0), c))
        for cm in torch.stack(cms).view(-1, c, c).cpu().numpy():
            scorer.add_confusion(cm)
    return scorer


@torch.no_grad()
def evaluate_sizes(model: nn.Module, val_at: dict[int, Split], sizes: tuple[int, ...], device: torch.device,
                   flip_tta: bool = False, batch_size: int = 16) -> Scorer:
    """Challenge F-measure of a prediction setting: `val_at[s]` is val (same images, same order, full masks kept)
    resized to each size s of `sizes`; each size's logits are upsampled to the native mask and averaged before
    the argmax (`train.infer.predict_mask` does the same one image at a time). One size is `evaluate`."""
    if len(sizes) == 1:
        return evaluate(model, val_at[sizes[0]], device, batch_size, flip_tta)
    first = val_at[sizes[0]]
    targets = first.full_masks if first.full_masks is not None else list(first.masks)
    scorer = Scorer()
    for i in range(0, len(first), batch_size):
        per_size = [predict_logits(model, val_at[s].images[i:i + batch_size], device, flip_tta) for s in sizes]
        for j, gt in enumerate(targets[i:i + batch_size]):
            total = sum(F.interpolate(lg[j][None], gt.shape, mode="bilinear", align_corners=False)[0]
                        for lg in per_size)
            scorer.add(gt, total.argmax(0).to(torch.uint8).cpu().numpy())
    return scorer


class WeightEMA:
    """Exponential moving average of the weights and BN buffers, for evaluation and export. The decay warms up
    as min(decay, (1+n)/(10+n)) so that the first (random) weights fade fast in a short schedule; the step count
    lives on the host, so an update never waits for the device."""

    def __init__(self, model: nn.Module, decay: float):
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.steps = decay, 0
        # the tensors of both models, paired once (state_dict values alias the live parameters and buffers)
        pairs = list(zip(self.module.state_dict().values(), (v.detach() for v in model.state_dict().values())))
        self._floats = ([e for e, _ in pairs if e.is_floating_point()], [c for e, c in pairs if e.is_floating_point()])
        self._others = ([e for e, _ in pairs if not e.is_floating_point()],
                        [c for e, c in pairs if not e.is_floating_point()])

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One step towards `model`, the model this EMA was made from."""
        self.steps += 1
        d = min(self.decay, (1 + self.steps) / (10 + self.steps))
        torch._foreach_lerp_(*self._floats, 1 - d)
        if self._others[0]:
            torch._foreach_copy_(*self._others)  # BN step counters: one foreach call, as the floats

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.steps = state["steps"]


def make_optimizer(model: nn.Module, cfg: TrainConfig, fused: bool = False) -> torch.optim.Optimizer:
    """AdamW or Nesterov SGD, no weight decay on biases and norms; `fused` (Accel, on CUDA) the fused AdamW kernel
    (one launch for all tensors; the CPU keeps the default implementation and its numbers)."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=fused)


def lr_lambda(total_steps: int, warmup_frac: float) -> Callable[[int], float]:
    """Linear warm-up, then cosine decay to zero; stepped per iteration."""
    warm = int(total_steps * warmup_frac)

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, total_steps - warm)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


# Ranking signals of a proxy run, from its per-epoch history (higher should mean a better network): the last val F,
# the mean of the last two evaluations (no extra cost), and the summed training loss, negated.
SIGNALS = ("last_f", "mean_last2_f", "neg_loss_sum")


def proxy_signals(history: list[dict]) -> dict[str, float]:
    """Every signal of `SIGNALS` for one run's history (`FitResult.history`)."""
    evals = [h["val_f"] for h in history if "val_f" in h]
    return {"last_f": evals[-1], "mean_last2_f": float(np.mean(evals[-2:])),
            "neg_loss_sum": -float(sum(h["loss"] for h in history))}


@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)
    best_f: float = float("nan")
    final_f: float = float("nan")
    per_class_f: list[float] = field(default_factory=list)
    epochs_run: int = 0
    seconds: float = 0.0
    train_images_per_s: float = 0.0
    scorer: Scorer | None = None  # the last evaluation on val (of the EMA weights when EMA is on)
    raw_f: float = float("nan")  # with EMA on: the last evaluation of the raw (non-averaged) weights


@dataclass
class Run:
    """What one training run holds across its epochs and stages."""

    model: nn.Module
    forward: nn.Module  # the model, or its torch.compile wrapper (same parameters)
    criterion: SegLoss
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    ema: WeightEMA | None
    device: torch.device
    accel: Accel
    aux_weight: float
    grad_clip: float


def setup_run(model: nn.Module, train: Split, loss_cfg: LossConfig, train_cfg: TrainConfig, total_steps: int,
           device: torch.device, accel: Accel, compile: bool, state: dict | None) -> Run:
    """Loss (class weights from `train`, the first stage's split, kept for the whole run), optimiser, one
    learning-rate schedule over every stage's steps, EMA; restored from `state` when resuming."""
    model.to(device)
    if accel.channels_last:
        model.to(memory_format=torch.channels_last)
    if accel.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    weights = class_weights(class_stats(train.masks)[0], loss_cfg.class_weight_power)
    optimizer = make_optimizer(model, train_cfg, accel.fused_optimizer)
    run = Run(model, torch.compile(model) if compile else model, SegLoss(loss_cfg, weights).to(device), optimizer,
               torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(total_steps, train_cfg.warmup_frac)),
               WeightEMA(model, train_cfg.ema) if train_cfg.ema > 0 else None, device, accel, loss_cfg.aux_weight,
               train_cfg.grad_clip)
    if state:
        run.optimizer.load_state_dict(state["optimizer"])
        run.scheduler.load_state_dict(state["scheduler"])
        if run.ema is not None and state.get("ema") is not None:
            run.ema.load_state_dict(state["ema"])
    return run


def make_batches(train: Split, size: int, train_cfg: TrainConfig, device: torch.device, accel: Accel,
             workers: int) -> HostBatches | DeviceBatches:
    batch = min(train_cfg.batch_size, len(train))
    factors = repeat_factors(train.masks, train_cfg.rfs_threshold) if train_cfg.rfs_threshold > 0 else None
    if accel.device_data:
        return DeviceBatches(train, size, train_cfg.aug_strength, device, batch, accel.channels_last, factors)
    return HostBatches(train, size, train_cfg.aug_strength, batch, workers, device.type == "cuda", factors)


def on_device(run: Run, images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of `make_batches` as the step takes it: the network's input and int64 masks on the run's device
    (DeviceBatches yield them there already; host batches are uint8 HWC)."""
    if images.is_floating_point():
        return images, masks.long()
    return to_tensor(images, run.device, run.accel.channels_last), masks.to(run.device, non_blocking=True).long()


def train_step(run: Run, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One optimisation step on a batch already on the device; returns the loss without reading it back (on
    CUDA nothing here waits for the device: `bench.gpu_tier` checks it under torch's sync debug mode)."""
    with autocast(run.device, run.accel.bf16):
        out = run.forward(x)
    main, aux = out if isinstance(out, tuple) else (out, None)
    loss = run.criterion(main, y)
    if aux is not None:
        loss = loss + run.aux_weight * F.cross_entropy(aux.float(), y)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if run.grad_clip:
        nn.utils.clip_grad_norm_(run.model.parameters(), run.grad_clip)
    run.optimizer.step()
    run.scheduler.step()
    if run.ema is not None:
        run.ema.update(run.model)
    return loss.detach()


def _train_epoch(run: Run, batches, seed: int, epoch: int, bar: tqdm) -> tuple[float, int]:
    """One epoch; returns (mean loss, images seen). The loss is read from the device every SYNC_EVERY steps."""
    run.model.train()
    torch.manual_seed(seed)  # any random draw inside the step (none today) repeats on resume too
    loss_sum, n_images, steps = torch.zeros((), device=run.device), 0, len(batches)
    for step, (images, masks) in enumerate(batches.epoch(seed)):
        loss_sum += train_step(run, *on_device(run, images, masks))
        n_images += len(images)
        bar.update(1)
        if step % SYNC_EVERY == SYNC_EVERY - 1 or step == steps - 1:
            # reading the loss waits for the device: do it every few steps, not every step
            mean_loss = loss_sum.item() / (step + 1)
            if not math.isfinite(mean_loss):
                raise NonFiniteLoss(f"loss became {mean_loss} at epoch {epoch}")
            bar.set_postfix(epoch=epoch, loss=f"{mean_loss:.3f}")
    return loss_sum.item() / steps, n_images


def _score(run: Run, val: Split, targets: list[torch.Tensor] | None, record: dict, result: FitResult) -> None:
    """Score val (the EMA's weights when kept, the raw ones beside them) into `record` and `result`."""
    scorer = evaluate(run.model if run.ema is None else run.ema.module, val, run.device, targets=targets)
    record["val_f"] = scorer.f_measure
    if run.ema is not None:
        result.raw_f = record["val_f_raw"] = evaluate(run.model, val, run.device, targets=targets).f_measure
    result.per_class_f = [float(v) for v in scorer.per_class_image_f()]
    result.final_f, result.scorer = scorer.f_measure, scorer
    result.best_f = scorer.f_measure if math.isnan(result.best_f) else max(result.best_f, scorer.f_measure)


def fit(model: nn.Module, splits: Mapping[int, tuple[Split, Split]], loss_cfg: LossConfig, train_cfg: TrainConfig,
        *, schedule: Sequence[Stage], device: torch.device, eval_every: int = 1, workers: int = 0, seed: int = 0,
        callback: Callable[[int, dict], None] | None = None, state: dict | None = None,
        on_epoch_end: Callable[[int, dict], None] | None = None, progress: bool = True,
        desc: str = "train", accel: Accel | None = None, compile: bool = False) -> FitResult:
    """Train `model` through `schedule`'s stages, each on `splits[stage.size]` = (train, val) cached at that
    size; val is scored every `eval_every` epochs, at the end of each stage and at the end. One learning-rate
    schedule spans every stage; each epoch's order and augmentation come from (`seed`, epoch) alone.
    `callback(epoch, record)` sees each evaluated epoch and may raise to stop (e.g. pruning). `state`
    (optimizer/scheduler/EMA/epoch/history from a checkpoint) resumes a run, at any epoch and stage, to the
    weights an uninterrupted run reaches; `on_epoch_end(epoch, state)` receives a resumable state (the model's
    weights included) after every epoch. With `train_cfg.ema` > 0 an EMA of the weights is kept, evaluated (the
    raw weights are scored too, as `raw_f`) and copied into `model` at the end. `accel` (default
    `Accel.of(device)`: everything on for CUDA) sets bf16 autocast, channels_last, the fused optimiser and whether
    the training set is kept and augmented on the device (`DeviceBatches`, val scored there too) or augmented by
    DataLoader workers with albumentations on the CPU; a CPU test runs the CUDA settings. `compile` runs the
    training forward through `torch.compile` (the module itself, its EMA and its checkpoints stay plain)."""
    torch.manual_seed(seed)
    epochs, ends = total_epochs(schedule), last_epochs(schedule)
    accel = accel or Accel.of(device)
    first_train = splits[schedule[0].size][0]
    steps_per_epoch = len(first_train) // min(train_cfg.batch_size, len(first_train))
    run = setup_run(model, first_train, loss_cfg, train_cfg, epochs * steps_per_epoch, device, accel, compile, state)
    result, start = FitResult(), 0
    if state:
        start, result.history = state["epoch"], list(state["history"])
    # "seconds" in the history counts from the run's start, across a resume
    t_start = time.perf_counter() - (result.history[-1]["seconds"] if result.history else 0.0)
    n_images, t_train = 0, 0.0
    bar = tqdm(total=(epochs - start) * steps_per_epoch, desc=desc, leave=False, disable=None if progress else True,
               dynamic_ncols=True)
    stage, batches = None, None
    try:
        for epoch in range(start + 1, epochs + 1):
            if stage_at(schedule, epoch) != stage:  # a new stage: its data, cached at its size
                stage = stage_at(schedule, epoch)
                train, val = splits[stage.size]
                batches = make_batches(train, stage.size, train_cfg, device, accel, workers)
                val_targets = device_targets(val, device) if accel.device_data else None
            t0 = time.perf_counter()
            loss, seen = _train_epoch(run, batches, epoch_seed(seed, epoch), epoch, bar)
            epoch_s = time.perf_counter() - t0
            t_train, n_images = t_train + epoch_s, n_images + seen
            record = {"epoch": epoch, "size": stage.size, "loss": loss, "lr": run.scheduler.get_last_lr()[0],
                      "seconds": time.perf_counter() - t_start, "images_per_s": seen / epoch_s,
                      "train_seconds": epoch_s}
            if epoch % eval_every == 0 or epoch in ends:
                _score(run, val, val_targets, record, result)
                bar.set_postfix(epoch=epoch, loss=f"{loss:.3f}", F=f"{result.best_f:.3f}")
            result.history.append(record)
            result.epochs_run = epoch
            if on_epoch_end is not None:
                on_epoch_end(epoch, {"model": model.state_dict(), "optimizer": run.optimizer.state_dict(),
                                     "scheduler": run.scheduler.state_dict(), "epoch": epoch,
                                     "history": result.history,
                                     "ema": None if run.ema is None else run.ema.state_dict()})
            if callback is not None and "val_f" in record:
                callback(epoch, record)
    finally:
        bar.close()
    if run.ema is not None:  # the averaged weights are the result
        model.load_state_dict(run.ema.module.state_dict())
    result.seconds = time.perf_counter() - t_start
    result.train_images_per_s = n_images / max(t_train, 1e-9)
    return result


def fit_new(arch: ArchConfig, splits: Mapping[int, tuple[Split, Split]], loss_cfg: LossConfig,
            train_cfg: TrainConfig, *, seed: int, schedule: Sequence[Stage], state: dict | None = None,
            **fit_kwargs) -> tuple[nn.Module, FitResult]:
    """Build `arch` with initial weights drawn from `seed` alone, then `fit` it with the same seed: a run is
    reproducible from its configs, schedule and seed, whatever the process built or drew before (a search
    worker's earlier trials). `state` (a checkpoint saved through `on_epoch_end`) resumes it; a finished one is
    returned with its final weights (the averaged ones when it kept an EMA) and is not trained again."""
    torch.manual_seed(seed)
    model = build_model(arch)
    if state is not None and state["epoch"] >= total_epochs(schedule):
        model.load_state_dict(state["ema"]["module"] if state.get("ema") is not None else state["model"])
        history = list(state["history"])
        scored = [h for h in history if "val_f" in h]  # the last scoring, as the finished run recorded it
        return model, FitResult(history=history, epochs_run=state["epoch"],
                                final_f=scored[-1]["val_f"] if scored else float("nan"),
                                raw_f=scored[-1].get("val_f_raw", float("nan")) if scored else float("nan"))
    if state is not None:
        model.load_state_dict(state["model"])
    return model, fit(model, splits, loss_cfg, train_cfg, seed=seed, schedule=schedule, state=state, **fit_kwargs)


def full_fit(arch: ArchConfig, splits: Mapping[int, tuple[Split, Split]], loss_cfg: LossConfig,
             train_cfg: TrainConfig, *, schedule: Sequence[Stage], seed: int, ema: float = EMA_DECAY,
             **fit_kwargs) -> tuple[nn.Module, FitResult]:
    """A full-fidelity run exactly as `train.final` trains one (seeded initial weights, an EMA of the weights
    evaluated and kept, val scored about FULL_EVALS times and at each stage's end); `analysis.fidelity` calls
    the same function, so its full F values are what `train.final` would report."""
    return fit_new(arch, splits, loss_cfg, dataclasses.replace(train_cfg, ema=ema), seed=seed, schedule=schedule,
                   eval_every=max(1, total_epochs(schedule) // FULL_EVALS), **fit_kwargs)


def stage_seconds(history: list[dict], subset: float = 1.0) -> dict[int, dict[str, float]]:
    """Per training size of a run's history: the mean seconds of one training epoch on all of train (a run on
    `subset` of it is scaled up) and of one scoring of val by one set of weights (what a step of the schedule
    costs: `full_seconds` predicts a whole run from it). Histories from before `train_seconds` was kept give {}."""
    times: dict[int, dict[str, list[float]]] = {}
    previous = 0.0
    for h in history:
        if "train_seconds" not in h:
            return {}
        step, previous = h["seconds"] - previous, h["seconds"]
        t = times.setdefault(h["size"], {"epoch_s": [], "score_s": []})
        t["epoch_s"].append(h["train_seconds"] / subset)
        if "val_f" in h:
            t["score_s"].append(max(0.0, step - h["train_seconds"]) / (2 if "val_f_raw" in h else 1))
    return {size: {k: float(np.mean(v)) if v else 0.0 for k, v in t.items()} for size, t in times.items()}


def full_seconds(times: dict[int, dict[str, float]], schedule: Sequence[Stage]) -> float:
    """Predicted seconds of `full_fit` through `schedule` (every epoch's training, and at each evaluation the
    scoring of the EMA and the raw weights) from `stage_seconds` figures; a size not measured is scaled from the
    nearest measured one by its pixel count."""
    every, ends = max(1, total_epochs(schedule) // FULL_EVALS), last_epochs(schedule)
    total = 0.0
    for epoch in range(1, total_epochs(schedule) + 1):
        size = stage_at(schedule, epoch).size
        near = min(times, key=lambda s: abs(s - size))
        scale = (size / near) ** 2
        total += times[near]["epoch_s"] * scale
        if epoch % every == 0 or epoch in ends:
            total += 2 * times[near]["score_s"] * scale
    return total
