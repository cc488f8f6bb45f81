"""The researcher's and stakeholder's tools on top of every layer: the end-to-end pipeline
(``make demo``), papermill sweeps, ablation statistics, plots, the model card, the widget app."""
