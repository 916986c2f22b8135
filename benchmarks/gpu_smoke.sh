#!/usr/bin/env bash
# One prepared run for a GPU machine: the cuda-marked tests, then a timing table.
#
#   bash benchmarks/gpu_smoke.sh            # from the repository root, with the venv set up (make setup)
#
# 1. tests/test_cuda.py and every other cuda-marked test (device round trip, AMP, peak memory,
#    a real OOM, DDP with nccl when there are 2 GPUs).
# 2. Mask R-CNN (resnet50 FPN, no weights) at 800×800, batch 2: a hand-written train step +
#    eval pass against surgery.smoke_test, fp32 and AMP (float16), median of 3 after a warm-up.
# 3. The CLI on the GPU, as a CI job would run it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
SURGERY=${SURGERY:-.venv/bin/surgery}

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu_smoke.sh: torch sees no CUDA GPU; run it on a machine with one" >&2
  exit 2
fi
"$PY" - <<'EOF'
import torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU(s):",
      ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())))
EOF

echo "== 1. cuda-marked tests"
"$PY" -m pytest -m cuda -v -rs --surgery-device cuda tests/

echo "== 2. timing: hand-written train step + eval vs surgery.smoke_test"
"$PY" benchmarks/bench_smoke.py --device cuda --image-size 800 --batch-size 2 --repeats 3
"$PY" benchmarks/bench_smoke.py --device cuda --image-size 800 --batch-size 2 --repeats 3 --amp

echo "== 3. the CLI"
"$SURGERY" smoke --device cuda --image-size 800
"$SURGERY" smoke --device cuda --image-size 800 --amp --json > /tmp/surgery_smoke_gpu.json
"$PY" -c 'import json; d = json.load(open("/tmp/surgery_smoke_gpu.json")); print({k: d[k] for k in ("ok", "device", "amp", "timings", "memory")})'
