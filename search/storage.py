"""Open an Optuna storage from what a user typed: an RDB URL or a plain path to a journal file."""

from __future__ import annotations

import warnings
from pathlib import Path

import optuna
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend

DEFAULT_STORAGE = "sqlite:///studies/facenas.db"
RDB_SCHEMES = ("sqlite", "postgresql", "mysql")
HEARTBEAT_S, GRACE_S = 30, 90


class StorageError(ValueError):
    """A storage argument that cannot be used, with a one-line reason."""


def is_sqlite(spec: str) -> bool:
    return spec.startswith("sqlite:")


def open_storage(spec: str, *, heartbeat: bool = True) -> optuna.storages.BaseStorage:
    """RDB URL (sqlite:///..., postgresql+psycopg://...) with heartbeats that fail a killed worker's trial and
    retry it once; any other string is a JournalFileBackend file path."""
    if "://" in spec:
        scheme = spec.split("://", 1)[0].split("+", 1)[0]
        if scheme not in RDB_SCHEMES:
            raise StorageError(f"unknown storage scheme {scheme!r} in {spec!r}; expected sqlite:///FILE, "
                               f"postgresql+psycopg://USER:PASS@HOST/DB, or a plain path to a journal file")
        if scheme == "sqlite":
            path = Path(spec.split(":///", 1)[-1])
            _writable_dir(path.parent)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                kwargs = dict(heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                              heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1)
                              ) if heartbeat else {}
                return RDBStorage(spec, **kwargs)
        except Exception as e:  # SQLAlchemy raises many kinds; all mean "cannot open"
            raise StorageError(f"cannot open storage {spec!r}: {str(e).splitlines()[0]}") from None
    path = Path(spec)
    _writable_dir(path.parent)
    return JournalStorage(JournalFileBackend(str(path)))


def _writable_dir(folder: Path) -> None:
    folder = folder if str(folder) else Path(".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".facenas-write-test"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise StorageError(f"storage folder {folder} is not writable ({e.strerror})") from None
