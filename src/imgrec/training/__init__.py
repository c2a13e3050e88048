"""The classifier: the model, its training loop and resumable state, checkpoints, inference and
evaluation.

May import: imgrec's root modules, `imgrec.pipeline`, `imgrec.data`; never recommender,
serving, cli or server.
"""
