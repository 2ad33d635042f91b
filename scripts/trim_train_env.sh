#!/usr/bin/env bash
# Remove the CUDA-only pieces that llamafactory's dependencies pull into a CPU training
# env: torchvision (its operators fail to register beside a CPU torch) and the native
# libraries of torchaudio (llamafactory imports torchaudio, whose pure-Python part works
# without them). Then check that the training stack imports.
set -euo pipefail
venv="${1:?usage: trim_train_env.sh VENV}"
python="$venv/bin/python"

"$python" -m pip uninstall --yes --quiet torchvision || true
audio_lib="$("$python" -c 'import importlib.util, pathlib; spec = importlib.util.find_spec("torchaudio"); print(pathlib.Path(spec.origin).parent / "lib" if spec else "")')"
if [[ -n "$audio_lib" && -d "$audio_lib" ]]; then
  find "$audio_lib" -maxdepth 1 -name '*.so' -print -delete
fi
"$python" -c 'import torch, transformers, trl, llamafactory; from llamafactory.train.sft.trainer import CustomSeq2SeqTrainer; print("training env ok:", torch.__version__, transformers.__version__, trl.__version__, llamafactory.__version__)'
