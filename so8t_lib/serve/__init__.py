"""Serving the gate: deciders (``backends``: HF checkpoint or GGUF, the one decision path), the threshold
rule (``policy``), the runtime contract (``runtime``, ``config``), request checks, masking, category
routing, the audit log and the escalation queue. Never imports training, evaluation or the workbench."""
