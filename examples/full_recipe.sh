#!/usr/bin/env bash
# The full recipe on a real checkpoint: download hfl/chinese-bert-wwm-ext, convert it, continue its
# masked-LM pretraining on your text (whole-word masking, re-masked every epoch), fine-tune a
# classifier from the result, evaluate it, and fill masks.
#
#   examples/full_recipe.sh                      # THUCNews titles bundled with sbert, into runs/recipe
#   WORK=runs/mine TRAIN=train.txt DEV=dev.txt LABELS=class.txt examples/full_recipe.sh
#
# The download needs the Hugging Face hub, or a mirror: HF_ENDPOINT=https://hf-mirror.com. With no
# network, put a BERT dir you already have (HF or sbert format) in MODEL_DIR and the download is skipped:
#   MODEL_DIR=path/to/chinese-bert-wwm-ext examples/full_recipe.sh
# At these settings (BERT-base, 9,000 titles) pretraining and fine-tuning take minutes on a GPU and
# about an hour on a CPU. PRETRAIN_ARGS and CLS_ARGS replace the length options (e.g. "--max-steps 5").
set -euo pipefail

REPO=${REPO:-hfl/chinese-bert-wwm-ext}
WORK=${WORK:-runs/recipe}
RESOURCES=$(python -c "from sbert_cli.resources import RESOURCES; print(RESOURCES)")
TRAIN=${TRAIN:-$RESOURCES/thucnews-train.txt}   # text<TAB>label, one example per line
DEV=${DEV:-$RESOURCES/thucnews-dev.txt}
LABELS=${LABELS:-$RESOURCES/thucnews-class.txt}  # label names, line i = label i
PRETRAIN_ARGS=${PRETRAIN_ARGS:---epochs 2}
CLS_ARGS=${CLS_ARGS:---epochs 3}

if [ -d "$WORK" ] && [ -n "$(ls -A "$WORK")" ]; then
    echo "error: $WORK is not empty; remove it or set WORK to another folder" >&2
    exit 1
fi
mkdir -p "$WORK"
set -x

# 1. The checkpoint: config.json, vocab.txt and the weights only (no TF/Flax files).
if [ -z "${MODEL_DIR:-}" ]; then
    sbert download "$REPO" --out "$WORK/hf-model"
    MODEL_DIR=$WORK/hf-model
fi

# 2. An sbert model dir. Optional (every command reads HF dirs directly), but it checks every tensor
#    against the name table and probes the MLM head: an untrained head is reported here.
sbert convert-weights "$MODEL_DIR" "$WORK/bert"

# 3. Pretraining data in the model's own vocab, unmasked: pretrain --dynamic-masking re-masks whole
#    words (rjieba segmentation) every epoch.
sbert make-mlm-data "$TRAIN" --model "$WORK/bert" --out "$WORK/mlm-data" --max-seq-len 64 --no-mask --workers 2

# 4. Continue masked-LM pretraining (domain adaptation), holding out 2% for accuracy and perplexity.
#    OUT/best is the checkpoint with the lowest held-out loss.
sbert pretrain --model "$WORK/bert" --data "$WORK/mlm-data" --dynamic-masking --eval-fraction 0.02 \
    --out "$WORK/pretrain" --batch-size 32 --lr 5e-5 $PRETRAIN_ARGS

# 5. Fine-tune a classifier from the adapted model; dev picks OUT/best.
sbert train-cls --model "$WORK/pretrain/best" --train "$TRAIN" --dev "$DEV" --labels "$LABELS" \
    --max-seq-len 64 --out "$WORK/classifier" --batch-size 32 --lr 2e-5 $CLS_ARGS

# 6. Report, confusion-matrix PNG and the misclassified examples (train-cls printed this for dev already;
#    eval is how any other labelled file, such as a test set, is scored).
sbert eval --model "$WORK/classifier/best" --data "$DEV" --out "$WORK/eval"

# 7. Use them.
sbert predict --model "$WORK/classifier/best" "央行宣布下调存款准备金率0.5个百分点" "湖人主场加时险胜凯尔特人"
sbert fill-mask --model "$WORK/pretrain/best" "北京是中国的[MASK]都。" "今天股市大[MASK]。"
