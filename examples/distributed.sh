#!/usr/bin/env bash
# Multi-process training with torchrun (python -m torch.distributed.run): one process per GPU, NCCL
# between them; on a CPU-only machine the processes use gloo. Every sbert training command runs
# unchanged under torchrun: rank 0 prints and writes the run dir, all ranks share each global batch.
#
#   examples/distributed.sh                       # 2 processes, fine-tunes hfl/chinese-bert-wwm-ext
#   NPROC=8 examples/distributed.sh               # one node with 8 GPUs
#   NPROC=2 MODEL_ARGS="--config tiny" TRAIN_ARGS="--max-steps 6" examples/distributed.sh   # a CPU smoke test
#
# The global batch is --batch-size x --grad-accum x processes (here 32 x 1 x NPROC), cut from the same
# seeded order as in one process, so the gradient does not depend on how it is split. A run resumes
# (--resume) with the same number of processes. --dist-timeout sets how long a rank waits for the others.
#
# Several nodes: run the same command on every node, with its own --node-rank (0 on the first):
#   python -m torch.distributed.run --nnodes 2 --node-rank $NODE_RANK --nproc-per-node 8 \
#       --master-addr 10.0.0.1 --master-port 29500 -m sbert_cli train-cls ...
# or let the nodes meet through a rendezvous (any node may start first):
#   python -m torch.distributed.run --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d \
#       --rdzv-endpoint 10.0.0.1:29500 --rdzv-id my-job -m sbert_cli train-cls ...
# Download a hub model once before launching (sbert download hfl/chinese-bert-wwm-ext), rather than in
# every process. Rank 0 writes the run dir (--out); keep it on storage that survives the job.
set -euo pipefail

NPROC=${NPROC:-2}
WORK=${WORK:-runs/distributed}
MODEL_ARGS=${MODEL_ARGS:---model hfl/chinese-bert-wwm-ext}
TRAIN_ARGS=${TRAIN_ARGS:---epochs 3}
RESOURCES=$(python -c "from sbert_cli.resources import RESOURCES; print(RESOURCES)")
set -x

python -m torch.distributed.run --standalone --nproc-per-node "$NPROC" -m sbert_cli train-cls $MODEL_ARGS \
    --train "$RESOURCES/thucnews-train.txt" --dev "$RESOURCES/thucnews-dev.txt" --labels "$RESOURCES/thucnews-class.txt" \
    --max-seq-len 64 --batch-size 32 --out "$WORK/classifier" $TRAIN_ARGS

# Pretraining is launched the same way (make-mlm-data runs once, in one process, with --workers):
sbert make-mlm-data "$RESOURCES/thucnews-train.txt" --out "$WORK/mlm-data" --max-seq-len 64 --no-mask --workers 2
python -m torch.distributed.run --standalone --nproc-per-node "$NPROC" -m sbert_cli pretrain $MODEL_ARGS \
    --data "$WORK/mlm-data" --dynamic-masking --eval-fraction 0.02 --batch-size 32 --out "$WORK/pretrain" $TRAIN_ARGS
