"""What every layer shares: the vocabulary (``schema``), paths, atomic file writes, checkpoint folders,
validated configs and the metric definitions. Imports nothing else from so8t_lib."""
