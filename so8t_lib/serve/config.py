"""The agent runtime's config (configs/basic.yaml, production.yaml, emergency.yaml), validated.

The sections and values follow the operations manual (shared/origin/RUNBOOK_AGENT.ja.md); secrets
(webhook URLs, SMTP passwords) never live here, only the names of the environment variables that
hold them. Unknown keys are errors, as in so8t_lib.core.config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, model_validator

from ..core.config import (
    ConfigError,
    _Section,
    apply_overrides,
    parse_size,
    read_yaml_mapping,
    validation_problems,
)
from ..core.schema import ROUTE_CATEGORIES


class RuntimeModelConfig(_Section):
    base_model: str | None = "Qwen/Qwen2.5-7B-Instruct"
    checkpoint_path: str = Field(..., description="checkpoint folder, run folder, or .gguf file")
    use_gguf: bool = False
    gguf_path: str | None = None

    def model_path(self) -> str:
        if self.use_gguf:
            path = self.gguf_path or self.checkpoint_path
            if not str(path).endswith(".gguf"):
                raise ConfigError(f"model.use_gguf is true but {path!r} is not a .gguf file")
            return str(path)
        return self.checkpoint_path


class InferenceConfig(_Section):
    max_tokens: int = Field(2048, gt=0)
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(0.9, gt=0, le=1)
    safety_threshold: float = Field(0.8, ge=0.5, le=1.0, description="the policy's rule: 0.8 basic, 0.9 production")
    decision_timeout_s: float = Field(30.0, gt=0, description="past this the gate fails closed (ESCALATE)")
    generate_responses: bool = Field(True, description="write task_response / rationale with TaskHeadA")


class ValidationConfig(_Section):
    max_request_chars: int = Field(4000, gt=0)
    max_context_chars: int = Field(4000, ge=0)
    max_user_id_chars: int = Field(128, gt=0)


class LoggingConfig(_Section):
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_file: str = "logs/agent_runtime.log"
    audit_log: str = "logs/audit.jsonl"
    max_log_size: str = "100MB"
    backup_count: int = Field(5, ge=1)
    mask_personal_data: bool = True
    encryption_key_env: str | None = Field(
        None, description="name of the environment variable holding a Fernet key; records are then encrypted")

    @model_validator(mode="after")
    def _size_readable(self) -> LoggingConfig:
        parse_size(self.max_log_size)
        return self


class RouteConfig(_Section):
    email: str | None = None
    slack_channel: str | None = None
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
    notification_webhook: str | None = Field(None, description="Slack-compatible URL; SLACK_WEBHOOK_URL overrides it")
    email_notifications: bool = False
    smtp_server: str | None = None
    smtp_port: int = Field(587, gt=0)
    email_from: str = "so8t-agent@company.com"
    escalation_timeout: float = Field(300, gt=0, description="seconds a human has to answer")
    notify_timeout_s: float = Field(5.0, gt=0, description="a notification never delays a decision past this")
    retries: int = Field(3, ge=0)
    queue_db: str = "logs/escalations.sqlite"
    routes: dict[str, RouteConfig] = Field(default_factory=_default_routes)

    @model_validator(mode="after")
    def _every_category_routed(self) -> EscalationConfig:
        missing = [c for c in ROUTE_CATEGORIES if c not in self.routes]
        if missing:
            raise ValueError(f"routes is missing categories {missing}")
        return self


class RuntimeConfig(_Section):
    model: RuntimeModelConfig
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    escalation: EscalationConfig = Field(default_factory=EscalationConfig)
    mode: Literal["normal", "emergency"] = Field("normal", description="emergency: every request is escalated")


def load_runtime_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RuntimeConfig:
    data = apply_overrides(read_yaml_mapping(path, "runtime config"), overrides)
    try:
        return RuntimeConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: invalid runtime config\n  {validation_problems(exc)}") from None


def is_runtime_config(path: str | Path) -> bool:
    """A runtime config has sections a training config never has (inference, escalation, mode)."""
    return bool({"inference", "escalation", "mode"} & set(read_yaml_mapping(path)))
