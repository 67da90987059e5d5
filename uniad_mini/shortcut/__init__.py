"""The identical-shortcut experiments of the notebooks (paper Sec. 3.1-3.4, Fig. 5a): the baseline
reconstructors, the identity measures, the experiment helpers, the Fig. 5a run and their figures.

This layer reads the core (`uniad_mini/*.py`) and is never read by it."""
