"""core.staging: a locked staging folder is never removed by another clean-up, a kept one is removed by the next,
and the two ways a clean-up could trip (a folder gone meanwhile, a filesystem without flock) leave folders alone."""

from __future__ import annotations

import errno
import os

import pytest

from so8t_lib.core import staging
from so8t_lib.core.staging import OWNER_FILE, LockedFolder, remove_stale

PREFIX = ".stage-"


def test_a_held_folder_survives_a_clean_up_and_a_kept_one_goes_at_the_next(tmp_path):
    with LockedFolder(tmp_path, PREFIX) as held:
        assert (held.path / OWNER_FILE).is_file()
        assert remove_stale(tmp_path, (PREFIX,)) == [] and held.path.is_dir()
        held.keep = True
    assert held.path.is_dir()  # unlocked, kept
    assert remove_stale(tmp_path, (PREFIX,)) == [(held.path, True)] and not held.path.exists()


def test_a_folder_removed_between_the_lock_and_the_check_does_not_stop_the_clean_up(tmp_path, monkeypatch):
    """Another run removed its folder and unlocked it just as this one took the lock: the idle check stat'ed a
    folder that was gone, and the FileNotFoundError ended `so8t retrain run` at its start."""
    (tmp_path / f"{PREFIX}gone").mkdir()  # no owner file: the idle check runs

    def vanished(folder):
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(folder))

    monkeypatch.setattr(staging, "last_change", vanished)
    assert remove_stale(tmp_path, (PREFIX,)) == []


def test_on_a_filesystem_without_flock_nothing_is_removed_and_the_error_says_why(tmp_path, monkeypatch):
    """NFS without local locks refuses flock (EBADF): the clean-up must leave every folder (it cannot tell a live
    one), and making a folder fails naming the lock and the filesystem instead of a bare '[Errno 9]'."""
    old = tmp_path / f"{PREFIX}old"
    old.mkdir()
    (old / OWNER_FILE).write_text("1\n", encoding="ascii")

    def refused(handle, operation):
        raise OSError(errno.EBADF, os.strerror(errno.EBADF))

    monkeypatch.setattr(staging.fcntl, "flock", refused)
    assert remove_stale(tmp_path, (PREFIX,)) == [] and old.is_dir()
    with pytest.raises(OSError, match="cannot lock the staging folder .*does not support flock"):
        with LockedFolder(tmp_path, PREFIX):
            pass
    assert sorted(p.name for p in tmp_path.iterdir()) == [old.name]  # its own new folder removed again
