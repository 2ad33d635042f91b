"""Semantic ID construction: embedders, keyword enhancement, RQ, OPQ, metrics and publishing.

Nothing here imports torch; model-based embedders run in the training env's Python.
"""
