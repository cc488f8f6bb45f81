"""Evaluation: the full report (``report``), scoring data sets through the serving backends
(``evaluate``), temperature calibration (``calibration``), latency and the quantization ladder."""
