"""A run folder's files as a resume reads them: ``last/`` (complete, verified), the trainer state saved in it (not
damaged, made under this config), and ``metrics.jsonl`` cut back to the step it continues from; and the lock that
keeps a second trainer out of a folder one is writing (their metrics.jsonl lines would interleave and each would
overwrite the other's last/)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path

import torch
import yaml

from ..core.checkpoint import CheckpointError, ResumeMismatch, recover_interrupted_swap, verify_manifest
from ..core.config import ConfigError, SO8TConfig, config_differences, config_from_dict
from ..core.io import atomic_write_text
from ..core.schema import BEST_DIR, LAST_DIR, RUN_CONFIG_FILE, RUN_METRICS_FILE, TRAINER_STATE_FILE

LOCK_FILE = ".training.lock"  # held (flock) by the trainer writing the folder; the kernel lets go when it dies
_HELD: dict[str, list[int]] = {}  # lock file -> [its descriptor, how many of this process's trainers hold it]


class RunLock:
    """An exclusive lock on a run folder against trainers in other processes, for a trainer's life. Trainers of one
    process share it (a notebook or a test builds a second before the first is collected); the last ``release``
    removes the file, so a finished run leaves none, and one a crash leaves behind is no longer locked."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self.created = not self.path.parent.exists()  # removed again if the trainer wrote nothing into it
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.key = str(self.path.resolve())
        self.held = True
        if self.key in _HELD:
            _HELD[self.key][1] += 1
            return
        while self.key not in _HELD:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise FileExistsError(f"{run_dir} is being written by another trainer (process {holder}, which holds "
                                      f"{self.path}): wait for it to end or stop it (a stop saves last/, and --resume "
                                      "continues), or choose another training.output_dir") from None
            with contextlib.suppress(FileNotFoundError):
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:  # not a file a releasing trainer just removed
                    os.ftruncate(fd, 0)
                    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                    _HELD[self.key] = [fd, 1]
                    continue
            os.close(fd)

    def release(self) -> None:
        """Once per lock; the process's last one removes the file while still holding it (a trainer that opens it
        meanwhile finds it removed and tries again), then lets go."""
        if not self.held:
            return
        self.held = False
        entry = _HELD[self.key]
        entry[1] -= 1
        if entry[1]:
            return
        del _HELD[self.key]
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(entry[0])
        if self.created:
            with contextlib.suppress(OSError):  # not empty: the run's files stay
                self.path.parent.rmdir()


def check_fresh(run_dir: Path) -> None:
    """FileExistsError when a fresh run would write over another: one to resume (``last/``), or one killed before
    its first save (``best/`` or a log without ``last/``), whose files it would mix with its own."""
    recover_interrupted_swap(run_dir / LAST_DIR)
    if (run_dir / LAST_DIR).exists():
        raise FileExistsError(f"{run_dir} already holds a run; pass --resume to continue it, or choose another "
                              "training.output_dir")
    if [name for name in (BEST_DIR, RUN_METRICS_FILE) if (run_dir / name).exists()]:
        raise FileExistsError(f"{run_dir} holds a run that saved no last/ checkpoint, so nothing can be resumed: "
                              "move it away or delete it to start over")


def check_resumable(run_dir: Path) -> None:
    """CheckpointError unless ``last/`` holds a complete checkpoint whose files match their manifest."""
    last = run_dir / LAST_DIR
    recover_interrupted_swap(last)
    if not (last / TRAINER_STATE_FILE).is_file():
        raise CheckpointError(f"{last / TRAINER_STATE_FILE}: nothing to resume (no complete checkpoint in {run_dir})")
    verify_manifest(last)


def load_trainer_state(run_dir: Path, config: SO8TConfig) -> dict:
    """The optimizer, scheduler, loop and RNG states saved in ``last/``, made under ``config``: a resume under
    another config (the CLI used to drop its overrides, the Python API passed any) would continue one run as if
    it were another."""
    last = run_dir / LAST_DIR
    try:
        saved = torch.load(last / TRAINER_STATE_FILE, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a damaged file
        raise CheckpointError(f"{last / TRAINER_STATE_FILE}: damaged or truncated ({exc})") from None
    if saved.get("config_fingerprint") not in (None, config.fingerprint()):
        # the config the state was saved under: config.yaml can be edited after the run started, and a resume
        # --config'd from it would then match it and carry on half under the new values (the schedulers keep
        # the old learning rates); states saved before the copy was kept compare with config.yaml
        recorded = isinstance(saved.get("config"), dict)
        changed = _saved_differences(saved["config"], config) if recorded else changed_keys(run_dir, config)
        if changed != []:  # [] : the same settings, fingerprinted by an older version with fewer keys
            where = "the config its last checkpoint was saved under" if recorded else "its config.yaml"
            raise ResumeMismatch(f"{last}: the run was trained under another config ("
                                  f"{'changed: ' + ', '.join(changed) if changed else where + ' is unreadable'}"
                                  f"); a resume continues a run under {where}, so put those values back (was "
                                  "config.yaml edited?), or start a new run in another training.output_dir")
    return saved


def run_differences(started: SO8TConfig, asked: SO8TConfig) -> list[str]:
    """The dotted keys where the config a run was started with and the one a resume asks for differ, the run folder
    compared as a place (``ck``, ``./ck/`` and its absolute path are one folder): every resume check (``so8t train
    --resume``, the demo, the trainer's own) asks here."""
    changed = config_differences(started.to_dict(), asked.to_dict())
    if "training.output_dir" in changed and _same_place(started.training.output_dir, asked.training.output_dir):
        changed.remove("training.output_dir")
    return changed


def _same_place(a: str | Path, b: str | Path) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except (OSError, RuntimeError):
        return False


def _saved_differences(saved: dict, config: SO8TConfig) -> list[str] | None:
    try:
        return run_differences(config_from_dict(saved), config)
    except ConfigError:
        return None


def changed_keys(run_dir: Path, config: SO8TConfig) -> list[str] | None:
    """The keys where ``config`` differs from the run's config.yaml (read with today's defaults), None when that
    file cannot be read."""
    try:
        before = config_from_dict(yaml.safe_load((run_dir / RUN_CONFIG_FILE).read_text(encoding="utf-8")))
    except (OSError, yaml.YAMLError, ConfigError):
        return None
    return run_differences(before, config)


def truncate_metrics(run_dir: Path, step: int) -> None:
    """Drop log lines written after the checkpoint a resume continues from (they will be redone), and a line cut
    short by a crash."""
    path = run_dir / RUN_METRICS_FILE
    if not path.is_file():
        return
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{path}: not UTF-8 text (byte {exc.start}): the run's log was damaged; restore it "
                              "from a copy or move it away, then resume") from None
    steps = [_logged_step(line) for line in lines]
    broken = [n for n, logged in enumerate(steps[:-1], 1) if logged == float("inf") and lines[n - 1].strip()]
    if broken:  # only the last line can be a crash's cut write; one inside the log was changed by hand
        raise CheckpointError(f"{path}: line {broken[0]} is not a log record (a step's JSON): fix or remove it, "
                              "then resume (nothing was dropped)")
    atomic_write_text(path, "".join(line + "\n" for line, logged in zip(lines, steps, strict=True) if logged <= step))


def _logged_step(line: str) -> float:
    try:
        return float(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return float("inf")
