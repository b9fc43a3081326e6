"""What several search workers (processes, machines) need from each other: one shared trial budget, and the RUNNING
trials of workers that died on a journal file (which has no heartbeat). Their proposals never repeat each other:
each trial's is drawn with a seed from `--seed` and its own number (`space.sample.InCapSampler`).

A worker is `host:pid`, recorded as the trial's user attr `worker` before anything else the trial does, with the
process's start time (user attr `worker_started`, Linux) so that a reused pid is not taken for the dead worker.
"""

from __future__ import annotations

import copy
import os
import socket
from pathlib import Path

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback

MAX_RETRY = 1  # as the RDB heartbeat's RetryHeartbeatStaleTrialCallback(max_retry=1) in search.storage


def process_start(pid: int) -> str | None:
    """The start time of process `pid` in clock ticks since boot (Linux /proc), None where unknown or gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22 of stat(5); the name in parentheses may hold spaces


def this_worker() -> dict[str, str]:
    """The user attrs that name the running process as a trial's worker."""
    attrs = {"worker": f"{socket.gethostname()}:{os.getpid()}"}
    started = process_start(os.getpid())
    if started is not None:
        attrs["worker_started"] = started
    return attrs


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        pass
    return started is None or process_start(pid) in (None, started)


def gone(t: optuna.trial.FrozenTrial) -> bool:
    """Whether the trial's recorded worker was a process on this host that no longer runs (False where nothing here
    can tell: no record, or another host)."""
    name, _, pid = t.user_attrs.get("worker", "").rpartition(":")
    return name == socket.gethostname() and pid.isdigit() and not _alive(int(pid), t.user_attrs.get("worker_started"))


def fail_dead_trials(study: optuna.Study) -> list[str]:
    """Mark FAIL (with the reason) every RUNNING trial whose worker on this host is gone, and enqueue it once
    more, as the RDB heartbeat does; returns a line per RUNNING trial it could not judge. A trial without a worker
    record (killed in the moment between its creation and the record) or from another host (a journal file shared
    between machines) is left RUNNING: nothing here can tell whether it still runs."""
    host, notes = socket.gethostname(), []
    storage = study._storage
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker")
        if worker is None:
            notes.append(f"trial {t.number} is RUNNING with no worker record: left alone (if no worker runs it, it "
                         f"stays RUNNING; it is not counted as finished)")
            continue
        name, _, pid = worker.rpartition(":")
        if name != host:
            notes.append(f"trial {t.number} is RUNNING on another host ({name}): left alone, only a worker on "
                         f"{name} can tell whether it died")
            continue
        if _alive(int(pid), t.user_attrs.get("worker_started")):
            continue
        try:  # the reason first (a finished trial takes no attrs); the state change is atomic: of two starts
            # finding the same trial, one fails it and retries it
            storage.set_trial_user_attr(t._trial_id, "fail_reason", f"worker {worker} is gone (found at the next "
                                                                    f"start of search.run; a journal file has no "
                                                                    f"heartbeat)")
            if not storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        retry_once(study, t)
        notes.append(f"trial {t.number}: its worker {worker} is gone; marked FAIL and enqueued again (retried at "
                     f"most {MAX_RETRY} time)")
    return notes


def retry_once(study: optuna.Study, t: optuna.trial.FrozenTrial) -> None:
    """Enqueue a failed trial once more with its own params (at most MAX_RETRY times in all), as the RDB heartbeat's
    callback does; the retry names it (system attr `failed_trial`) and does not inherit its worker."""
    retry = copy.deepcopy(t)
    retry.user_attrs = {k: v for k, v in t.user_attrs.items() if k not in ("worker", "worker_started")}
    RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)(study, retry)


def take_trial(budget) -> bool:
    """Claim one trial of the invocation's `--trials` (a multiprocessing Value shared by its workers): exactly N
    trials run, whatever the number of workers."""
    with budget.get_lock():
        if budget.value <= 0:
            return False
        budget.value -= 1
        return True
