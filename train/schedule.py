"""A resolution schedule: a list of (size, epochs) stages that one training run walks, e.g. `128:24,256:12`.

The learning-rate schedule spans the whole run; the training data are cached once per stage size; the EMA, the
optimiser and the checkpoints carry across a switch; inference and export use the last stage's size. A plain
`--size 256 --epochs 20` is the one-stage schedule `256:20`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

MIN_SIZE = 32
MAX_SIZE = 1024  # twice the challenge's 512 px: larger is no lever, and 40000 px runs a machine out of memory
MAX_EPOCHS = 1000


class ScheduleError(ValueError):
    """A schedule that cannot be trained, with a one-line message quoting it."""


@dataclass(frozen=True)
class Stage:
    size: int  # training resolution in px (square)
    epochs: int


def parse_schedule(text: str | int, epochs: int | None = None) -> tuple[Stage, ...]:
    """'256' (with `epochs`) or 'SIZE:EPOCHS[,SIZE:EPOCHS...]' -> stages, sizes MIN_SIZE..MAX_SIZE px that never
    decrease (the model predicts at the last stage's size), 1..MAX_EPOCHS epochs a stage. `epochs` beside a full
    schedule must equal its total (or be None)."""
    text = str(text).strip()
    if ":" not in text and "," not in text:
        if epochs is None:
            raise ScheduleError(f"size {text!r} needs a number of epochs (or write SIZE:EPOCHS)")
        stages = (Stage(_int(text, "size", text), epochs),)
    else:
        stages = tuple(_stage(part, text) for part in text.split(","))
        if epochs is not None and epochs != total_epochs(stages):
            raise ScheduleError(f"schedule {text!r} has {total_epochs(stages)} epochs, but --epochs {epochs} was "
                                f"given: leave --epochs out with a schedule")
    for stage in stages:
        if not MIN_SIZE <= stage.size <= MAX_SIZE or not 1 <= stage.epochs <= MAX_EPOCHS:
            raise ScheduleError(f"schedule {format_schedule(stages)!r}: every size must be {MIN_SIZE}..{MAX_SIZE} px "
                                f"and every stage 1..{MAX_EPOCHS} epochs")
    if any(b.size < a.size for a, b in zip(stages, stages[1:])):
        raise ScheduleError(f"schedule {format_schedule(stages)!r}: sizes must not decrease from stage to stage (the "
                            f"model predicts at the last stage's size)")
    return stages


def schedule_from_args(size: str | None, epochs: int | None, default: str) -> tuple[Stage, ...]:
    """What a command's `--size` / `--epochs` mean: SIZE with --epochs, a schedule, or the device's `default`
    schedule (whose epochs --epochs may replace only when it is one stage: a multi-stage default cannot be
    stretched unambiguously)."""
    if size is not None:
        if ":" not in size and "," not in size and epochs is None:
            raise ScheduleError(f"--size {size} needs --epochs N (or write a schedule such as {size}:20)")
        try:
            return parse_schedule(size, epochs)
        except ScheduleError as e:
            raise ScheduleError(f"--size {size}{f' --epochs {epochs}' if epochs is not None else ''}: {e}") from None
    stages = parse_schedule(default)
    if epochs is None:
        return stages
    if len(stages) > 1:
        raise ScheduleError(f"--epochs {epochs} without --size: the default is the schedule {default}; give --size "
                            f"SIZE with --epochs, or a schedule such as --size {default}")
    try:
        return parse_schedule(str(stages[0].size), epochs)
    except ScheduleError as e:
        raise ScheduleError(f"--epochs {epochs}: {e}") from None


def _int(value: str, what: str, whole: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ScheduleError(f"{whole!r}: {what} {value!r} is not a whole number; expected SIZE or "
                            f"SIZE:EPOCHS[,SIZE:EPOCHS...], e.g. 128:24,256:12") from None


def _stage(part: str, whole: str) -> Stage:
    size, sep, epochs = part.strip().partition(":")
    if not sep:
        raise ScheduleError(f"{whole!r}: stage {part!r} lacks its epochs; expected SIZE:EPOCHS[,SIZE:EPOCHS...]")
    return Stage(_int(size, "size", whole), _int(epochs, "epochs", whole))


def format_schedule(stages: Sequence[Stage]) -> str:
    """The schedule as it is typed: '128:24,256:12'."""
    return ",".join(f"{s.size}:{s.epochs}" for s in stages)


def describe_schedule(stages: Sequence[Stage]) -> str:
    """'256 px x 20 epochs' or '128 px x 24 epochs, then 256 px x 12 epochs'."""
    return ", then ".join(f"{s.size} px x {s.epochs} epochs" for s in stages)


def total_epochs(stages: Sequence[Stage]) -> int:
    return sum(s.epochs for s in stages)


def stage_at(stages: Sequence[Stage], epoch: int) -> Stage:
    """The stage that trains `epoch` (1-based)."""
    end = 0
    for stage in stages:
        end += stage.epochs
        if epoch <= end:
            return stage
    raise ValueError(f"epoch {epoch} is past the schedule {format_schedule(stages)!r}")


def last_epochs(stages: Sequence[Stage]) -> set[int]:
    """The last epoch of each stage (where a run is scored before it switches size)."""
    ends, end = set(), 0
    for stage in stages:
        end += stage.epochs
        ends.add(end)
    return ends
