"""Notebook helpers: figures, widgets, diagrams and the course's small experiments.

`viz` (every plot of the notebooks, and the live loss curve of a fine-tune), `widgets`,
`diagrams`, `images`, `architecture` (Transformer, CNN or MLP?), `monitoring`,
`smoke_tests`, `token_costs`, `benchmark_results` (the committed measurements).

Importing it puts matplotlib's tick labels in French (`french_figures`: 0,5 and 20 000),
so that every figure of a notebook follows the course's number convention.
"""

from qlora_lab.course.french_figures import use_french_ticks

use_french_ticks()
