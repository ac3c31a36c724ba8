"""Notebook helpers: figures, widgets, diagrams and the course's small experiments.

`viz` (every plot of the notebooks, and the live loss curve of a fine-tune), `widgets`,
`diagrams`, `images`, `architecture` (Transformer, CNN or MLP?), `monitoring`,
`smoke_tests`, `token_costs`, `benchmark_results` (the committed measurements).
"""
