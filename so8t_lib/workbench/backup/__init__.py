"""Backup and restore of what the gate's operation cannot be rebuilt without: the audit chains (with
their heads), the escalation queue (SQLite's online backup API, or a snapshot of the PostgreSQL
tables) and its spool, the configs, and the models' manifests (their files too on request).

    so8t backup --out backup/20261130T0900Z [--logs logs/] [--config configs/production.yaml] [--include-models]
    so8t restore backup/20261130T0900Z --into /srv/so8t          # checks everything first
"""

from .restore import check_backup, restore
from .snapshot import BACKUP_FILE, BackupError, backup

__all__ = ["BACKUP_FILE", "BackupError", "backup", "check_backup", "restore"]
