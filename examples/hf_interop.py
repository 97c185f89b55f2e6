"""Hand an sbert model to transformers: `sbert convert-weights --to hf`, load it with transformers, compare outputs.

    python examples/hf_interop.py sbert-demo/classifier/last   # a classifier (from `sbert demo`)
    python examples/hf_interop.py sbert-demo/pretrain/best     # a masked-LM model
    python examples/hf_interop.py MODEL_DIR --out DIR          # where to write the HF copy (default: MODEL_DIR-hf)

The other way needs no conversion: every sbert command reads a Hugging Face BERT dir (or hub repo id)
directly; `sbert convert-weights HF_DIR DST` keeps an sbert copy. Needs `pip install transformers`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch
import transformers

import sbert_cli

TEXTS = ["央行宣布下调存款准备金率0.5个百分点", "湖人主场加时险胜凯尔特人", "北京是中国的[MASK]都。"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="an sbert model dir with a classification or masked-LM head")
    parser.add_argument("--out", type=Path, help="folder for the Hugging Face copy (default: MODEL-hf)")
    args = parser.parse_args()
    hf_dir = args.out or args.model.with_name(args.model.name + "-hf")

    # 1. The CLI writes config.json, model.safetensors under transformers' names, vocab.txt, tokenizer_config.json.
    command = [sys.executable, "-m", "sbert_cli", "convert-weights", str(args.model), str(hf_dir), "--to", "hf"]
    print("$ sbert", " ".join(command[3:]))
    subprocess.run(command, check=True)
    architecture = json.loads((hf_dir / "config.json").read_text(encoding="utf-8"))["architectures"][0]

    # 2. transformers loads it with its own classes; no sbert code involved.
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
    hf_model = getattr(transformers, architecture).from_pretrained(hf_dir).eval()
    print(f"transformers loaded {type(hf_model).__name__} ({sum(p.numel() for p in hf_model.parameters()):,} parameters)")

    # 3. The same texts through both: identical token ids, logits equal to float rounding.
    task = "cls" if architecture == "BertForSequenceClassification" else "mlm"
    texts = TEXTS if task == "mlm" else TEXTS[:2]
    model, tokenizer = sbert_cli.load_model(args.model, task), sbert_cli.load_tokenizer(args.model)
    batch = hf_tokenizer(texts, padding=True, return_tensors="pt")
    ours = [ids for ids in tokenizer.encode(texts)]
    assert [row[: len(ids)].tolist() for row, ids in zip(batch["input_ids"], ours)] == ours, "tokenizers disagree"
    with torch.inference_mode():
        theirs = hf_model(**batch).logits
        mine = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    real = batch["attention_mask"].bool() if task == "mlm" else torch.ones(len(texts), dtype=torch.bool)
    difference = (theirs - mine).abs()[real].max().item()
    print(f"max |logit difference| sbert vs transformers: {difference:.2e}")
    torch.testing.assert_close(mine[real], theirs[real], rtol=1e-4, atol=1e-4)

    if task == "cls":
        labels = hf_model.config.id2label
        for text, row in zip(texts, theirs.softmax(-1)):
            print(f"  {text}  ->  {labels[int(row.argmax())]} {row.max():.4f}")
    else:
        for text, ids, row in zip(texts, batch["input_ids"], theirs):
            for position in (ids == hf_tokenizer.mask_token_id).nonzero().flatten().tolist():
                top = row[position].softmax(-1).topk(5)
                words = ", ".join(f"{hf_tokenizer.convert_ids_to_tokens(i)} {p:.3f}" for p, i in zip(top.values.tolist(), top.indices.tolist()))
                print(f"  {text}  [MASK] -> {words}")
    print("ok: transformers reproduces sbert's outputs")


if __name__ == "__main__":
    main()
