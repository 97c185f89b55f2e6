#!/usr/bin/env bash
# torchrun ends cleanly on every rank (issue 21): run the 2-process train-cls of tests/test_distributed.py N times
# with BUSY busy loops beside it, and count runs that exit non-zero or print `terminate called` (a rank aborting
# at exit after the run succeeded). Usage: benchmarks/torchrun_clean_exit.sh [N=100] [BUSY=1] [WORK=/tmp/sbert-exit]
set -u
N=${1:-100}; BUSY=${2:-1}; WORK=${3:-/tmp/sbert-exit}
export OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
mkdir -p "$WORK"
python - "$WORK" <<'PY'
import sys
from pathlib import Path
sys.path.insert(0, "tests")
from conftest import make_hf_checkpoint
from sbert_cli.resources import THUCNEWS_DEV, THUCNEWS_TRAIN
work = Path(sys.argv[1])
if not (work / "mlm").is_dir():
    make_hf_checkpoint(work / "mlm", "mlm")
(work / "data").mkdir(exist_ok=True)
(work / "data" / "train.txt").write_text("".join(THUCNEWS_TRAIN.read_text(encoding="utf-8").splitlines(keepends=True)[:81]), encoding="utf-8")
(work / "data" / "dev.txt").write_text("".join(THUCNEWS_DEV.read_text(encoding="utf-8").splitlines(keepends=True)[:21]), encoding="utf-8")
PY
busy=()
for _ in $(seq 1 "$BUSY"); do (while :; do :; done) & busy+=($!); done
trap 'kill "${busy[@]}" 2>/dev/null' EXIT
failures=0
for i in $(seq 1 "$N"); do
  rm -rf "$WORK/run"
  timeout 300 python -m torch.distributed.run --nproc-per-node 2 --master-port $((20000 + RANDOM % 20000)) -m sbert_cli \
    train-cls --data-dir "$WORK/data" --model "$WORK/mlm" --out "$WORK/run" --epochs 2 --batch-size 2 --grad-accum 2 \
    --lr 1e-3 --max-seq-len 32 --eval-every 5 --no-plot --device cpu --precision fp32 > "$WORK/stdout" 2> "$WORK/stderr"
  rc=$?
  if [ $rc -ne 0 ] || grep -q "terminate called" "$WORK/stderr"; then
    failures=$((failures + 1)); cp "$WORK/stderr" "$WORK/failed-$i.stderr"
  fi
  echo "run $i: exit $rc, failures so far $failures"
done
echo "$N runs, $failures failures ($BUSY busy loops beside)"
[ $failures -eq 0 ]
