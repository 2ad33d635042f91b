"""Semantic ID construction: embedders, keyword enhancement, RQ, OPQ, metrics and publishing.

Nothing here imports torch; model-based embedders run in the training env's Python.
"""

import logging

# faiss logs at INFO which CPU build it loads, with a traceback-like line per missing
# variant; that noise buries the pipeline's own task logs.
logging.getLogger("faiss.loader").setLevel(logging.WARNING)
