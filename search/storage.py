"""Open an Optuna storage from what a user typed: an RDB URL or a plain path to a journal file."""

from __future__ import annotations

import warnings
from pathlib import Path

import optuna
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend

DEFAULT_STORAGE = "sqlite:///studies/facenas.db"
RDB_SCHEMES = ("sqlite", "postgresql", "mysql")
HEARTBEAT_S = 30  # seconds between heartbeats of a running trial; stale after 3 missed


class StorageError(ValueError):
    """A storage argument that cannot be used, with a one-line reason."""


def is_sqlite(spec: str) -> bool:
    return spec.startswith("sqlite:")


def open_storage(spec: str, *, heartbeat: float | None = HEARTBEAT_S,
                 must_exist: bool = False) -> optuna.storages.BaseStorage:
    """RDB URL (sqlite:///..., postgresql+psycopg://...) or a plain path to a JournalFileBackend file.

    On an RDB, `heartbeat` seconds between beats (None: off): a worker killed mid-trial leaves a RUNNING trial
    whose beats stop; after a grace of 3 beats the next worker marks it FAIL and retries it once. With
    `must_exist` (commands that only read a study) a missing SQLite or journal file is an error, not created.
    """
    if "://" in spec:
        scheme = spec.split("://", 1)[0].split("+", 1)[0]
        if scheme not in RDB_SCHEMES:
            raise StorageError(f"unknown storage scheme {scheme!r} in {spec!r}; expected sqlite:///FILE, "
                               f"postgresql+psycopg://USER:PASS@HOST/DB, or a plain path to a journal file")
        if scheme == "sqlite":
            _check_file(Path(spec.split(":///", 1)[-1]), must_exist)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                kwargs = {"heartbeat_interval": int(max(1, heartbeat)), "grace_period": int(max(1, 3 * heartbeat)),
                          "heartbeat_stale_trial_callback": RetryHeartbeatStaleTrialCallback(max_retry=1)
                          } if heartbeat else {}
                return RDBStorage(spec, **kwargs)
        except Exception as e:  # SQLAlchemy and the drivers raise many kinds; all mean "cannot open"
            raise StorageError(f"cannot open storage {spec!r}: {str(e).splitlines()[0]}") from None
    path = Path(spec)
    _check_file(path, must_exist)
    return JournalStorage(JournalFileBackend(str(path)))


def storage_exists(spec: str) -> bool:
    """Whether `spec` names a storage that already exists (an RDB server is taken to: opening it creates no file),
    so that reading it creates nothing."""
    if "://" in spec:
        return not is_sqlite(spec) or Path(spec.split(":///", 1)[-1]).is_file()
    return Path(spec).is_file()


CLAIMS_SUFFIX = ".rung2-claims"  # a study's side study of second-rung claims (search.rung.Claims): not a search


def study_names(storage: optuna.storages.BaseStorage) -> list[str]:
    """The searches a storage holds (side studies of claims left out)."""
    return sorted(s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)
                  if not s.study_name.endswith(CLAIMS_SUFFIX))


def require_study(storage: optuna.storages.BaseStorage, name: str) -> None:
    """Refuse a study name the storage does not hold, listing the ones it does."""
    names = study_names(storage)
    if name not in names:
        raise StorageError(f"study {name!r} not found; available: {', '.join(names) or 'none'}")


def pick_trial(study: optuna.Study, number: int | None) -> optuna.trial.FrozenTrial:
    """Trial `number` of `study` (it must hold params), or with None the study's best complete trial; the one
    lookup behind `train.final --trial` and `search.run --recipe-from STUDY[:TRIAL]`."""
    if number is not None:
        trials = study.get_trials(deepcopy=False)
        if not 0 <= number < len(trials) or not trials[number].params:
            raise StorageError(f"trial {number} not found (or has no params) in study {study.study_name!r}")
        return trials[number]
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not done:
        raise StorageError(f"no complete trial in study {study.study_name!r}; let the search complete one first")
    return max(done, key=lambda t: t.value)


def load_existing_study(spec: str, name: str) -> optuna.Study:
    """A study that must already exist (commands that read it); the error lists the ones available."""
    storage = open_storage(spec, heartbeat=None, must_exist=True)
    require_study(storage, name)
    return optuna.load_study(study_name=name, storage=storage)


def _check_file(path: Path, must_exist: bool) -> None:
    if must_exist:
        if not path.is_file():
            raise StorageError(f"no study storage at {path}; run `python -m search.run` first or pass --storage")
    else:
        _writable_dir(path.parent)


def _writable_dir(folder: Path) -> None:
    folder = folder if str(folder) else Path(".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".facenas-write-test"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise StorageError(f"storage folder {folder} is not writable ({e.strerror})") from None
