"""The agent runtime's config (configs/basic.yaml, production.yaml, emergency.yaml), validated.

The sections and values follow the operations manual (shared/origin/RUNBOOK_AGENT.ja.md); secrets
(webhook URLs, SMTP passwords) never live here, only the names of the environment variables that
hold them. Unknown keys are errors, as in so8t_lib.core.config, and so is a key the runtime
would not honour: ``model.base_model`` (the base is fixed by the checkpoint or the GGUF file) and
``inference.top_p`` other than 1 (no backend's ``generate`` samples by nucleus), each with a message
that says why, instead of being accepted and ignored.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal, NamedTuple

from pydantic import Field, StrictInt, ValidationError, field_validator, model_validator

from ..core.config import (
    ConfigError,
    _Section,
    apply_overrides,
    parse_size,
    read_yaml_mapping,
    validation_problems,
)
from ..core.schema import ROUTE_CATEGORIES
from .config_fields import PG_SHORTEST_CONNECT_S, EnvName, FilePath, WebhookUrl
from .policy import THRESHOLD_RANGE

Device = Literal["cpu", "cuda", "auto"]
DEVICES: tuple[str, ...] = Device.__args__  # where a model may run (inference.device, --device)


class RuntimeModelConfig(_Section):
    base_model: str | None = Field(None, description="not used: rejected with a message when set")
    checkpoint_path: str = Field(..., description="checkpoint folder, run folder, or .gguf file")
    use_gguf: bool = False
    gguf_path: str | None = None

    @field_validator("base_model")
    @classmethod
    def _base_model_is_not_a_runtime_setting(cls, value: str | None) -> None:
        if value is not None:
            raise ValueError("the runtime does not choose the base model: it is fixed by the checkpoint "
                             "(so8t_model.yaml) or the GGUF file; remove model.base_model")
        return None

    def model_path(self) -> str:
        if self.use_gguf:
            path = self.gguf_path or self.checkpoint_path
            if not str(path).endswith(".gguf"):
                raise ConfigError(f"model.use_gguf is true but {path!r} is not a .gguf file")
            return str(path)
        return self.checkpoint_path


class InferenceConfig(_Section):
    max_tokens: int = Field(2048, gt=0, le=32768, description="new tokens of a task answer, passed as given")
    temperature: float = Field(0.7, ge=0, le=2, description="sampling temperature of task answers (0: greedy)")
    top_p: float = Field(1.0, gt=0, le=1, description="only 1.0: rejected otherwise, no backend supports it")
    safety_threshold: float = Field(0.8, ge=THRESHOLD_RANGE[0], le=THRESHOLD_RANGE[1], description="the policy's rule: 0.8 basic, 0.9 production")
    decision_timeout_s: float = Field(30.0, gt=0, description="a decision pass running longer fails closed "
                                      "(ESCALATE); the wait behind another pass on the model is not counted, up to "
                                      "that pass's own limit")
    generation_timeout_s: float = Field(120.0, gt=0, description="past this much of its own model time an ALLOW "
                                        "comes without its answer")
    answer_chunk_tokens: int = Field(8, gt=0, le=32768, description="an answer is written this many tokens at a "
                                     "time; a decision that arrives meanwhile waits for one chunk, not the answer")
    generate_responses: bool = Field(True, description="write an ALLOW's task_response with TaskHeadA "
                                       "(rationales are fixed per decision, in the request's language)")
    device: Device = Field("auto", description="where the model runs; auto: cuda when torch or llama-cpp-python "
                           "can use a GPU, else cpu; cuda is refused by name when they cannot, cpu when the base is "
                           "4-bit (bitsandbytes runs it on the GPU only)")
    gpu_layers: int = Field(-1, ge=-1, description="layers of a GGUF file offloaded on cuda (-1: all)")

    @field_validator("top_p")
    @classmethod
    def _top_p_is_not_supported(cls, value: float) -> float:
        if value != 1.0:
            raise ValueError(f"top_p={value} cannot be honoured: neither backend's generate() samples by nucleus; "
                             "remove inference.top_p (or set 1.0) and use temperature")
        return value


class ValidationConfig(_Section):
    max_request_chars: int = Field(4000, gt=0)
    max_context_chars: int = Field(4000, ge=0)
    max_user_id_chars: int = Field(128, gt=0)


MIN_AUDIT_LOG_BYTES = 4 * 2**10


class LoggingConfig(_Section):
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="of the so8t.* loggers")
    log_file: str | None = Field(None, description="the application log (SO8T_LOG_DIR overrides the folder)")
    audit_log: FilePath = "logs/audit.jsonl"
    max_log_size: str | StrictInt = Field("100MB", description="an audit log file past this size is rotated (e.g. 100MB, "
                                    "1GB or a number of bytes; at least 4KB)")
    backup_count: int = Field(5, ge=1)
    mask_personal_data: bool = True
    max_field_chars: int = Field(8192, ge=256, description="any stored text longer than this keeps a prefix, "
                                 "its length and its sha256")
    encryption_key_env: EnvName | None = Field(
        None, description="name of the environment variable holding a Fernet key; records are then encrypted")
    hmac_key_env: EnvName | None = Field(
        None, description="name of the environment variable holding a secret that signs the audit anchor")
    audit_lock_timeout_s: float = Field(5.0, gt=0, le=600, description="longest wait for the audit log's lock (held "
                                        "for milliseconds per append); then the decision fails closed (ESCALATE, "
                                        "its record spooled and written later) instead of hanging behind a stuck "
                                        "process")

    @field_validator("max_log_size")
    @classmethod
    def _size_readable(cls, value: str | int) -> str | int:
        """Rotation happens whenever a file passes the size: a tiny one rotates on every record, and backup_count
        rotations later the oldest history is deleted."""
        if parse_size(value) < MIN_AUDIT_LOG_BYTES:
            raise ValueError(f"{value!r} is below 4KB ({MIN_AUDIT_LOG_BYTES} bytes): the audit log rotates each "
                             "time a file passes it and deletes the oldest file after backup_count rotations; "
                             "write e.g. 100MB")
        return value


class RouteConfig(_Section):
    email: str | None = None
    slack_channel: str | None = Field(None, description="sent as the message's channel; Slack's incoming webhooks "
                                      "ignore it (each posts where it was made): give the route its own webhook")
    webhook_env: EnvName | None = Field(None, description="name of the environment variable with this route's own "
                                    "webhook URL; unset: the shared one (SLACK_WEBHOOK_URL, notification_webhook)")
    notify: str = Field("", description="who is notified, in words")


def _default_routes() -> dict[str, RouteConfig]:
    return {
        "medical": RouteConfig(email="medical@company.com", slack_channel="#medical-escalation", notify="medical staff"),
        "legal": RouteConfig(email="legal@company.com", slack_channel="#legal-escalation", notify="legal and compliance"),
        "hr": RouteConfig(email="hr@company.com", slack_channel="#hr-escalation", notify="HR, harassment desk"),
        "security": RouteConfig(email="security@company.com", slack_channel="#security-alerts", notify="IT security, CSIRT"),
        "finance": RouteConfig(email="finance@company.com", slack_channel="#finance-escalation", notify="finance, internal audit"),
        "general": RouteConfig(email="manager@company.com", slack_channel="#general-escalation", notify="direct manager"),
    }


class EscalationConfig(_Section):
    enable_notifications: bool = True
    notification_webhook: WebhookUrl | None = Field(None, description="Slack-compatible http(s) URL; SLACK_WEBHOOK_URL "
                                                    "overrides it")
    email_notifications: bool = False
    smtp_server: str | None = None
    smtp_port: int = Field(587, gt=0)
    smtp_require_tls: bool = Field(True, description="send a case only over STARTTLS (its text is masked, but about "
                                   "harassment or health); false for a relay on a trusted network that offers none")
    smtp_ca_file: str | None = Field(None, description="PEM CA certificates that sign the SMTP server's certificate "
                                     "(an internal CA; SMTP_CA_FILE overrides it); default: the system's CAs")
    email_from: str = "so8t-agent@company.com"
    escalation_timeout: float = Field(300, gt=0, description="seconds a human has to answer; then the case is "
                                      "marked overdue and the route reminded")
    notify_timeout_s: float = Field(5.0, gt=0, description="a notification never delays a decision past this")
    retries: int = Field(3, ge=0)
    queue_db: FilePath = Field("logs/escalations.sqlite", description="the SQLite queue (SO8T_LOG_DIR moves it); "
                          "its folder also holds the spool")
    queue_url: str | None = Field(None, description="a PostgreSQL queue shared by several server processes, "
                                  "postgresql://user@host:port/db (SO8T_ESCALATION_URL overrides it); no password "
                                  "here: libpq reads PGPASSWORD or ~/.pgpass")
    queue_timeout_s: float | None = Field(None, gt=0, description="longest wait for a locked queue, then the case "
                                          "is spooled and retried; default: 2 s or decision_timeout_s if shorter")
    retry_interval_s: float = Field(5.0, gt=0, description="how often spooled cases are retried")
    routes: dict[str, RouteConfig] = Field(default_factory=_default_routes)
    router: FilePath | None = Field(None, description="a router file (so8t router fit) that picks the route where the "
                               "keyword table finds none; null: the keyword table alone, the rest to general")

    @field_validator("queue_url")
    @classmethod
    def _server_url_without_secret(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            url = make_url(value)
        except ArgumentError:
            raise ValueError("not a database URL; use postgresql://user@host:port/dbname") from None
        if url.get_backend_name() != "postgresql":
            raise ValueError(f"only postgresql:// URLs are served here (a SQLite queue is queue_db), got "
                             f"{url.get_backend_name()}://")
        if url.password:
            raise ValueError("the URL holds a password: secrets never live in a config; put it in PGPASSWORD or "
                             "~/.pgpass, or the whole URL in SO8T_ESCALATION_URL")
        return value

    @model_validator(mode="after")
    def _every_category_routed(self) -> EscalationConfig:
        missing = [c for c in ROUTE_CATEGORIES if c not in self.routes]
        if missing:
            raise ValueError(f"routes is missing categories {missing}")
        unknown = [c for c in self.routes if c not in ROUTE_CATEGORIES]
        if unknown:  # a misspelt route (medial) would never be used: its cases would go to the default one
            raise ValueError(f"routes has unknown categories {unknown}; the categories are {list(ROUTE_CATEGORIES)}")
        return self


# SIGTERM to exit is bounded by service.shutdown_timeout_s + SHUTDOWN_MARGIN_S (ServiceConfig.stop_budget_s): at
# the grace's end every request still in flight is answered 503 shutting_down and no answer is written any more;
# the margin is for those 503s (uvicorn cancels what is left RESPONSE_MARGIN_S after the cut-off), the running
# batches to record their requests, the spool's last replay and closing the agent, and EXIT_MARGIN_S for the exit.
SHUTDOWN_MARGIN_S = 10.0
RESPONSE_MARGIN_S = 2.0
EXIT_MARGIN_S = 1.0


MAX_FLAG_POLL_S = 60.0


class ServiceConfig(_Section):
    """``so8t serve``: the HTTP front of the same Agent (docs/serving.md). API keys never live here, only
    the names of the environment variables that hold them."""

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535, description="0: any free port (printed at start)")
    max_batch: int = Field(32, ge=1, le=1024, description="requests gathered into one decision pass")
    max_wait_ms: float = Field(5.0, ge=0, le=1000, description="longest a request waits for others to join it")
    concurrent_batches: int = Field(2, ge=1, le=8, description="batches in flight: the model runs one at a time, "
                                    "audit and queue writes of one batch overlap the next one's model pass")
    max_pending: int = Field(2048, ge=1, description="requests waiting for a batch; beyond: 503 with Retry-After")
    max_body_bytes: str | StrictInt = Field("1MB", description="a larger request body is refused (413) before it is "
                                      "read (e.g. 1MB, 64KB or a number of bytes, more than 0)")
    max_items: int = Field(64, ge=1, le=1024, description="requests in one call of /v1/decide or /v1/moderations")
    rate_limit_per_minute: float = Field(600, gt=0, description="requests per API key and minute (each item of a "
                                         "list counts)")
    rate_limit_burst: int = Field(120, ge=1, description="requests a key may send at once before the rate applies")
    client_keys_env: EnvName = Field("SO8T_CLIENT_KEYS", description="variable with the client keys: name:secret,...")
    reviewer_keys_env: EnvName = Field("SO8T_REVIEWER_KEYS", description="variable with the reviewer keys")
    emergency_flag_file: FilePath = Field("logs/EMERGENCY", description="while this file exists every request is "
                                     "escalated (SO8T_LOG_DIR moves it with the logs)")
    flag_poll_s: float = Field(1.0, gt=0, description="how often the flag file is looked for (at most "
                               f"{MAX_FLAG_POLL_S:g} s: the file is the emergency switch)")
    queue_poll_s: float = Field(5.0, gt=0, description="how often queue depth and overdue cases are counted")
    shutdown_timeout_s: float = Field(30.0, gt=0, description="SIGTERM: longest wait for requests in flight; then "
                                      "they are answered 503 shutting_down and the process exits within "
                                      f"{SHUTDOWN_MARGIN_S:g} s more (stop_budget_s)")

    @field_validator("flag_poll_s")
    @classmethod
    def _flag_noticed_soon(cls, value: float) -> float:
        """Without a bound, 1e300 (or an hour) meant a flag file set in an emergency was never noticed."""
        if not value <= MAX_FLAG_POLL_S:  # NaN too
            raise ValueError(f"{value!r} s is too long: the emergency flag file must be noticed within "
                             f"{MAX_FLAG_POLL_S:g} s of being made; write e.g. 1")
        return value

    @field_validator("max_body_bytes")
    @classmethod
    def _size_readable(cls, value: str | int) -> str | int:
        parse_size(value)
        return value

    @property
    def stop_budget_s(self) -> float:
        """The longest time from SIGTERM to exit (a supervisor's stop timeout must be longer)."""
        return self.shutdown_timeout_s + SHUTDOWN_MARGIN_S

    @model_validator(mode="after")
    def _consistent(self) -> ServiceConfig:
        if self.rate_limit_burst < self.max_items:
            raise ValueError(f"rate_limit_burst ({self.rate_limit_burst}) must be at least max_items "
                             f"({self.max_items}): a full list could never pass the rate limit")
        if self.max_pending < self.max_items:
            raise ValueError(f"max_pending ({self.max_pending}) must be at least max_items ({self.max_items}): a "
                             "full list could never be queued and would be answered 503 forever")
        return self


class RuntimeConfig(_Section):
    model: RuntimeModelConfig
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    escalation: EscalationConfig = Field(default_factory=EscalationConfig)
    mode: Literal["normal", "emergency"] = Field("normal", description="emergency: every request is escalated")
    service: ServiceConfig = Field(default_factory=ServiceConfig)

    @model_validator(mode="after")
    def _queue_wait_below_decision_timeout(self) -> RuntimeConfig:
        wait = self.escalation.queue_timeout_s
        if wait is not None and wait >= self.inference.decision_timeout_s:
            raise ValueError(f"escalation.queue_timeout_s ({self.escalation.queue_timeout_s}) must be shorter than "
                             f"inference.decision_timeout_s ({self.inference.decision_timeout_s}): a locked queue "
                             "must not hold a decision longer than the model may")
        if self.escalation.queue_url and self.queue_wait_s() < PG_SHORTEST_CONNECT_S:
            raise ValueError(
                f"escalation.queue_timeout_s ({self.queue_wait_s():g} s{'' if wait is not None else ', the default'}) "
                f"is shorter than the {PG_SHORTEST_CONNECT_S} s a PostgreSQL connection may take (libpq waits at "
                "least that long for a server that does not answer), so escalations to escalation.queue_url would "
                f"wait {PG_SHORTEST_CONNECT_S} s: set queue_timeout_s to {PG_SHORTEST_CONNECT_S} or more (with "
                "inference.decision_timeout_s above it), or use the SQLite queue (queue_db)")
        return self

    def queue_wait_s(self) -> float:
        """The bounded wait for the escalation queue."""
        if self.escalation.queue_timeout_s is not None:
            return self.escalation.queue_timeout_s
        return min(2.0, self.inference.decision_timeout_s)


def load_runtime_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RuntimeConfig:
    data = apply_overrides(read_yaml_mapping(path, "runtime config"), overrides, RuntimeConfig)
    try:
        return RuntimeConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: invalid runtime config\n  {validation_problems(exc)}") from None


def is_runtime_config(path: str | Path) -> bool:
    """A runtime config has sections a training config never has (inference, escalation, mode)."""
    return bool({"inference", "escalation", "mode"} & set(read_yaml_mapping(path)))


class RuntimePaths(NamedTuple):
    audit: Path
    queue: Path
    spool: Path
    log_file: Path | None
    queue_url: str | None = None  # a PostgreSQL queue instead of the SQLite file ``queue``

    @property
    def queue_target(self) -> str | Path:
        """What EscalationQueue opens: the server URL when there is one, else the SQLite file."""
        return self.queue_url or self.queue


REPLICA_ENV = "SO8T_REPLICA"
# the variables the command-line tools read an audit log's keys from when no config names them
AUDIT_KEY_ENV = "SO8T_AUDIT_KEY"
AUDIT_HMAC_KEY_ENV = "SO8T_AUDIT_HMAC_KEY"
QUEUE_URL_ENV = "SO8T_ESCALATION_URL"
_REPLICA = re.compile(r"[A-Za-z0-9_]{1,40}")


def replica_log_name(audit_log: str | Path, replica: str | None) -> Path:
    """``logs/audit.jsonl`` for replica ``r2`` is ``logs/audit-r2.jsonl``: each server process of a
    shared folder writes its own chain (``so8t audit verify`` and ``so8t report`` read them all)."""
    path = Path(audit_log)
    if not replica:
        return path
    if not _REPLICA.fullmatch(replica):
        raise ConfigError(f"replica name {replica!r} ({REPLICA_ENV}): use 1-40 letters, digits or _")
    return path.with_name(f"{path.stem}-{replica}{path.suffix}")


def runtime_paths(config: RuntimeConfig, log_dir: str | Path | None = None,
                  shared_queue: bool = True) -> RuntimePaths:
    """Where the runtime writes: the config's files, moved into ``log_dir`` (or $SO8T_LOG_DIR) when
    one is given; the audit log named for the replica ($SO8T_REPLICA) when there is one; the queue
    on the PostgreSQL server of $SO8T_ESCALATION_URL or ``escalation.queue_url`` when set. Every tool
    (runtime, escalation CLI, backup) resolves them here, so they agree. ``shared_queue=False`` keeps the queue in
    the SQLite file whatever the URL settings say (a smoke test must not put its cases in production's queue)."""
    queue = placed(config.escalation.queue_db, log_dir)
    audit = replica_log_name(placed(config.logging.audit_log, log_dir), os.environ.get(REPLICA_ENV) or None)
    url = (os.environ.get(QUEUE_URL_ENV) or config.escalation.queue_url) if shared_queue else None
    if url:  # a mistyped URL stops the start, where the operator is looking, not the first escalation
        from .queue_sql import check_target, is_url

        where = QUEUE_URL_ENV if os.environ.get(QUEUE_URL_ENV) else "escalation.queue_url"
        if not is_url(url):  # "postgresql:/host/db" would have become a SQLite file nobody watches
            raise ConfigError(f"{where}: {url!r} is not a URL; write postgresql://user@host:port/db (or "
                              "sqlite:///path for a file)")
        try:
            check_target(url)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    return RuntimePaths(audit, queue, queue.with_name(queue.name + ".spool"),
                        placed(config.logging.log_file, log_dir) if config.logging.log_file else None, url)


def placed(name: str, log_dir: str | Path | None = None) -> Path:
    """A configured file, moved into ``log_dir`` (else $SO8T_LOG_DIR) when one is given."""
    log_dir = log_dir or os.environ.get("SO8T_LOG_DIR")
    return Path(log_dir) / Path(name).name if log_dir else Path(name)
