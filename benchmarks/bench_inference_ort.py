"""CPU inference against the engine people deploy BERT on: sbert's forward beside ONNX Runtime and transformers.

One random BERT-base-shape model (vocab 21128; `--quick`: a tiny one) is built with transformers; sbert loads its
weights through the same name table the CLI uses, and the transformers model is exported to ONNX (opset 17,
dynamic batch and length) and run by ONNX Runtime at ORT_ENABLE_ALL with as many intra-op threads as torch has.
Every row computes the last hidden state of the same batch (64 x 32 tokens by default, no padding); with
`--head cls`, the logits of a 10-label sentence classifier (transformers' BertForSequenceClassification, pooler and
classifier, and sbert's, loaded from its weights): what eval, predict and serve's /predict compute. There sbert's
last layer runs at [CLS] only (the one position the head reads); ONNX Runtime computes the whole last layer.

- sbert fp32 eager: BertModel (or the classifier) after prepare_for_inference (what eval, predict, embed and serve run);
- sbert bf16 weights: the weights cast once at load (`--precision bf16` at inference), where the CPU has native
  bf16 (or with --bf16 anywhere: emulated bf16 is slow and says nothing about an AMX Xeon);
- transformers fp32 eager, and transformers bf16 autocast (the bf16 way people write it) beside sbert's bf16;
- ONNX Runtime fp32, ORT_ENABLE_ALL;
- with --compile, sbert fp32 under torch.compile (a probe: its first call, the compile, is printed apart).

The rows run round-robin (the order rotates each repetition) after one warm-up call each; the table gives median
seconds per batch, sequences/s and the ratio to ONNX Runtime. The CPU, its bf16 flags, the threads, the torch and
onnxruntime versions and the load average are printed with the figures.

    pip install onnxruntime onnx                                 # test-only: sbert never imports them
    python benchmarks/bench_inference_ort.py                     # BERT-base, 64 x 32, 7 repetitions
    python benchmarks/bench_inference_ort.py --repeats 11 --threads 2
    python benchmarks/bench_inference_ort.py --head cls               # the classifier's logits (eval, predict)
    python benchmarks/bench_inference_ort.py --quick             # tiny model, 2 repetitions: a smoke test
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_forward import build_pair, make_batch  # noqa: E402  (the same pair bench_forward times)

BASE = dict(vocab_size=21128, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
            max_position_embeddings=512)
TINY = dict(BASE, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256)


def build_cls_pair(config_kwargs: dict, seed: int, labels: int = 10):
    """(ours, theirs): a random transformers BertForSequenceClassification and ours loaded with its weights."""
    import transformers

    from sbert_cli.model.bert import BertForSequenceClassification
    from sbert_cli.model.config import BertConfig
    from sbert_cli.model.hf_weights import convert_hf_state_dict
    from sbert_cli.model.model_dir import expected_shapes

    torch.manual_seed(seed)
    id2label = {i: f"label{i}" for i in range(labels)}
    theirs = transformers.BertForSequenceClassification(transformers.BertConfig(id2label=id2label, **config_kwargs)).eval()
    config = BertConfig(id2label=id2label, **config_kwargs)
    state, _ = convert_hf_state_dict(theirs.state_dict(), expected_shapes(config))
    ours = BertForSequenceClassification(config).eval()
    ours.load_state_dict(state)
    return ours, theirs


def output_of(theirs_output):
    """transformers' output -> the tensor the rows compare: logits (a classifier) or the last hidden state."""
    return theirs_output.logits if hasattr(theirs_output, "logits") else theirs_output.last_hidden_state


def ort_session(theirs, input_ids, attention_mask, folder: Path, threads: int):
    """transformers' model exported to ONNX, in an ONNX Runtime session at ORT_ENABLE_ALL."""
    import onnxruntime as ort

    class ByName(torch.nn.Module):  # transformers' forward takes more than these two positionally
        def __init__(self):
            super().__init__()
            self.bert = theirs

        def forward(self, input_ids, attention_mask):
            return output_of(self.bert(input_ids=input_ids, attention_mask=attention_mask))

    path = folder / "bert.onnx"
    axes = {0: "batch", 1: "tokens"}
    torch.onnx.export(ByName().eval(), (input_ids, attention_mask), str(path), input_names=["input_ids", "attention_mask"],
                      output_names=["output"], opset_version=17, dynamo=False,
                      dynamic_axes={"input_ids": axes, "attention_mask": axes, "output": {0: "batch"}})
    theirs.eval()  # the export restores the wrapper's mode to its children: keep dropout off
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch and ORT intra-op threads (default: torch's)")
    parser.add_argument("--head", choices=("encoder", "cls"), default="encoder",
                        help="encoder: the last hidden state (embed, similar); cls: a classifier's logits (eval, predict)")
    parser.add_argument("--bf16", action="store_true", help="bf16 rows even without native bf16 (emulated: slow)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall (default); cpu: this process's CPU time, steadier on a shared machine with --threads 1")
    parser.add_argument("--compile", action="store_true", help="add a torch.compile row (sbert fp32) and its compile time")
    parser.add_argument("--quick", action="store_true", help="a tiny model, 2 repetitions: a smoke test")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.repeats = 2
    import onnxruntime
    import transformers

    from sbert_cli.model.precision import cpu_supports_bf16, machine_summary, prepare_for_inference

    threads = torch.get_num_threads()
    config = TINY if args.quick else BASE
    ours, theirs = build_cls_pair(config, args.seed) if args.head == "cls" else build_pair(config, args.seed)
    ours_output = (lambda out: out) if args.head == "cls" else (lambda out: out[0])  # logits, or the hidden states
    input_ids, attention_mask = make_batch(args.batch_size, args.seq_len, 21128, False, args.seed)
    bf16 = args.bf16 or cpu_supports_bf16()
    with tempfile.TemporaryDirectory() as folder:
        session = ort_session(theirs, input_ids, attention_mask, Path(folder), threads)
        feed = {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()}
        ours_fp32 = prepare_for_inference(ours, "fp32")
        rows = {
            "sbert fp32 eager": lambda: ours_output(ours_fp32(input_ids, attention_mask)),
            "transformers fp32 eager": lambda: output_of(theirs(input_ids=input_ids, attention_mask=attention_mask)),
            "ONNX Runtime fp32 (ORT_ENABLE_ALL)": lambda: session.run(None, feed)[0],
        }
        with torch.inference_mode():
            reference = rows["transformers fp32 eager"]()
            diffs = {name: (torch.as_tensor(run()) - reference).abs().max().item() for name, run in rows.items()}
        if bf16:
            import copy

            ours_bf16 = prepare_for_inference(copy.deepcopy(ours), "bf16")

            def theirs_autocast():
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return output_of(theirs(input_ids=input_ids, attention_mask=attention_mask))

            rows["sbert bf16 weights"] = lambda: ours_output(ours_bf16(input_ids, attention_mask))
            rows["transformers bf16 autocast"] = theirs_autocast
        if args.compile:
            compiled = torch.compile(ours_fp32)
            started = time.perf_counter()
            with torch.inference_mode():
                compiled(input_ids, attention_mask)
            print(f"torch.compile: first call {time.perf_counter() - started:.1f} s (compiling)")
            rows["sbert fp32 torch.compile"] = lambda: ours_output(compiled(input_ids, attention_mask))
        print(f"{machine_summary()}; onnxruntime {onnxruntime.__version__}, transformers {transformers.__version__}; "
              f"{time.strftime('%Y-%m-%d %H:%M %Z')}")
        shape = "tiny (--quick)" if args.quick else "BERT-base"
        computed = "10-label classifier logits" if args.head == "cls" else "last hidden state"
        print(f"{shape} shape, vocab 21128, {computed}, batch {args.batch_size} x {args.seq_len} tokens, no padding; "
              f"{args.repeats} repetitions, round-robin, {args.clock} time; load average {os.getloadavg()[0]:.2f} at the start")
        clock = time.perf_counter if args.clock == "wall" else time.process_time
        times: dict[str, list[float]] = {name: [] for name in rows}
        names = list(rows)
        with torch.inference_mode():
            for run in rows.values():
                run()  # warm-up
            for rep in range(args.repeats):
                for name in names[rep % len(names):] + names[: rep % len(names)]:
                    start = clock()
                    rows[name]()
                    times[name].append(clock() - start)
    ort_s = statistics.median(times["ONNX Runtime fp32 (ORT_ENABLE_ALL)"])
    print(f"load average at the end {os.getloadavg()[0]:.2f}\n")
    print("| row | s/batch (median) | seq/s | vs ONNX Runtime | max abs diff to transformers fp32 |")
    print("|---|---:|---:|---:|---:|")
    for name in rows:
        seconds = statistics.median(times[name])
        diff = f"{diffs[name]:.1e}" if name in diffs else "-"
        print(f"| {name} | {seconds:.4f} | {args.batch_size / seconds:.1f} | {ort_s / seconds:.2f}x | {diff} |")


if __name__ == "__main__":
    main()
