"""Embed texts with a local sentence-transformers model; runs in the training env.

The SID pipeline calls this as a subprocess (see onesearch_tasks.sid.embedders), so the
Airflow env never imports torch. Input: a JSON list of strings. Output: float32 .npy.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="local sentence-transformers model folder")
    parser.add_argument("--texts", required=True, help="JSON file with a list of strings")
    parser.add_argument("--out", required=True, help="output .npy path")
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()

    import numpy as np
    from sentence_transformers import SentenceTransformer

    texts = json.loads(Path(args.texts).read_text(encoding="utf-8"))
    model = SentenceTransformer(args.model, local_files_only=True)
    vectors = model.encode(texts, batch_size=args.batch_size, normalize_embeddings=True, show_progress_bar=False)
    np.save(args.out, np.asarray(vectors, dtype=np.float32), allow_pickle=False)


if __name__ == "__main__":
    main()
