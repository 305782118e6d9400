#!/usr/bin/env bash
# One prepared GPU run (device tool): train throughput (the train stage, eager and compiled, vs
# sentence-transformers' trainer, same run), the per-phase step breakdown, then NFCorpus quality runs in
# parallel lanes on the one GPU. First `python bench/device/make_carry.py`, then run
#   bash bench/device/run.sh      with carry [".whl", ".devmodel", ".devdata"]
# Env: DATA (BEIR folder; default: unpack .devdata/nfcorpus.tgz), EXTRA (flags for every quality run),
# QUALITY (flag sets for bench/quality.py separated by ';', one lane each), TPUT_FLAGS, BREAK_FLAGS,
# TPUT_TIMEOUT, LANE_TIMEOUT, BUDGET (seconds the whole script may take; the breakdown gets what is left),
# SKIP_SETUP=1 + PY (local dry run).
set -u
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
OUT=${OUT:-/tmp/gpuout}; mkdir -p $OUT
T0=$(date +%s)
PY=${PY:-python3}
. bench/device/setup.sh
DATA=${DATA:-/tmp/nfcorpus}
export PY DATA EXTRA="${EXTRA:-}"
echo "setup $(( $(date +%s) - T0 ))s"
cat $OUT/card.txt > $OUT/throughput.log 2>/dev/null; rm -f $OUT/card.txt
timeout ${TPUT_TIMEOUT:-300} $PY bench/train_throughput.py $DATA ${TPUT_FLAGS:---variants eager,compile} >> $OUT/throughput.log 2>&1
echo "throughput done at $(( $(date +%s) - T0 ))s" | tee -a $OUT/throughput.log
grep -v "Loading weights\|it/s\]\|Writing model\|widget\|^RESULT" $OUT/throughput.log | tail -40

LT=${LANE_TIMEOUT:-240}
IFS=';' read -ra SETS <<< "${QUALITY:---compile always;--compile never}"
i=0
for flags in "${SETS[@]}"; do
  i=$((i + 1))
  ( echo "### flags: $flags"
    timeout $LT $PY bench/quality.py $DATA --workspace /tmp/bq/lane$i $flags ${EXTRA:-} 2>&1 \
      | grep --line-buffered -v "Loading weights\|it/s\]\|Writing model\|Batches:" ) > $OUT/lane_$i.log 2>&1 &
done
wait
echo "all done at $(( $(date +%s) - T0 ))s"
grep -h "^RESULT" $OUT/lane_*.log | $PY -c "
import json, sys
for line in sys.stdin:
    r = json.loads(line[7:]); s = r['settings']; b, t = r['base'] or {}, r['tuned'] or {}
    d = (t.get('ndcg@10', 0) - b.get('ndcg@10', 0)) / b['ndcg@10'] * 100 if b else float('nan')
    print(f\"{r['mode']:8s} compile {s.get('compile')} neg {s['negatives']} bs {s['batch_size']:>4} ep {s['epochs']} lr {s['lr']:.0e} T {s['temperature']} cap {s['max_rows_per_question']} L {s['max_seq_length']}: \"
          f\"nDCG@10 {b.get('ndcg@10', float('nan')):.4f} -> {t.get('ndcg@10', float('nan')):.4f} ({d:+.1f}%) R@10 {b.get('recall@10', float('nan')):.4f} -> {t.get('recall@10', float('nan')):.4f} gate {r['gate']} train {r['train'].get('steps')} steps {r['train'].get('rows_per_second')} rows/s times {r['times']}\")
" | tee $OUT/summary.txt
# The step breakdown last, in whatever time is left of BUDGET seconds (it explains a miss; it proves nothing).
LEFT=$(( ${BUDGET:-500} - ($(date +%s) - T0) ))
if [ $LEFT -gt 40 ]; then
  timeout $LEFT $PY bench/train_step_breakdown.py $DATA ${BREAK_FLAGS:---compile --cache-only --profile} > $OUT/breakdown.log 2>&1
  echo "breakdown done at $(( $(date +%s) - T0 ))s" | tee -a $OUT/breakdown.log
  grep -v "Loading weights\|it/s\]" $OUT/breakdown.log | cut -c1-200 | tail -32
fi
