"""The gate as a service (``so8t serve``): REST API, micro-batching, API keys, Prometheus metrics,
a live dashboard and the emergency switch, over the same ``Agent`` as ``so8t runtime``.
See docs/serving.md."""

from .app import create_app
from .auth import ApiKeys
from .service import Service

__all__ = ["ApiKeys", "Service", "create_app"]
