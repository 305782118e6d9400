#!/usr/bin/env bash
# One prepared GPU run of the serving benchmark (device tool): `eft serve --backend torch --device cuda` (fp16)
# against sentence-transformers `encode` fp16 on the same card, NFCorpus passages, one text per request,
# c=1/8/64, throughput and p99. ONNX Runtime GPU and TensorRT wheels are over what a device call carries, so
# only the torch backend is measured. First `python bench/device/make_carry.py`, then run
#   bash bench/device/serve.sh      with carry [".whl", ".devmodel", ".devdata"]
# Local check of the script on a CPU: SKIP_SETUP=1 PY=.venv/bin/python DEVICE=cpu DATA=../shared/datasets/nfcorpus \
#   VARIANT=fp32 TEXTS=64 CONC=1,8 MODEL=<sentence-transformers folder> bash bench/device/serve.sh
set -u
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/gpuout}; mkdir -p $OUT
T0=$(date +%s)
PY=${PY:-python3}
. bench/device/setup.sh
DATA=${DATA:-/tmp/nfcorpus}
MODEL=${MODEL:-/tmp/minilm}
DEVICE=${DEVICE:-cuda}
echo "setup $(( $(date +%s) - T0 ))s"
timeout ${SERVE_TIMEOUT:-420} $PY bench/serve.py --st-model $MODEL --corpus $DATA/corpus.jsonl --device $DEVICE \
  --texts ${TEXTS:-2048} --concurrency ${CONC:-1,8,64} --variants torch:${VARIANT:-fp16} --infinity-venv /nonexistent \
  --json $OUT/serve.json > $OUT/serve.log 2>&1
echo "serve bench rc=$? at $(( $(date +%s) - T0 ))s" | tee -a $OUT/serve.log
grep -v "Loading weights\|it/s\]" $OUT/serve.log | grep -v "^RESULT" | tail -30
