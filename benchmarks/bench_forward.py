"""Forward throughput: sbert's BertModel against transformers' BertModel holding the same weights.

BERT-base shape (vocab 21128), batch 64 x 32 tokens by default, fp32 and bf16 autocast, on the CPU.
Runs alternate between the two models (ours first on even repetitions, theirs first on odd ones), so
load from other processes hits both alike. Times are medians of wall-clock seconds; the speed-ups are
ratios of medians, in wall time and in CPU time of this process (the steadier of the two when other
processes share the cores; with --threads 1 it counts only the work done).

    python benchmarks/bench_forward.py                       # fp32 and bf16, 7 + 3 repetitions
    python benchmarks/bench_forward.py --repeats 11 --precisions fp32 --padded
    python benchmarks/bench_forward.py --device cuda --repeats 50 --bf16-repeats 50
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def build_pair(config_kwargs: dict, seed: int):
    """(ours, theirs): a random transformers BertModel and our BertModel loaded with its weights."""
    import transformers

    from sbert_cli.model.bert import BertModel
    from sbert_cli.model.config import BertConfig
    from sbert_cli.model.hf_weights import convert_hf_state_dict
    from sbert_cli.model.model_dir import expected_shapes

    torch.manual_seed(seed)
    theirs = transformers.BertModel(transformers.BertConfig(**config_kwargs)).eval()
    config = BertConfig(**config_kwargs)
    state, _ = convert_hf_state_dict(theirs.state_dict(), expected_shapes(config))
    ours = BertModel(config).eval()
    ours.load_state_dict({k[len("bert.") :]: v for k, v in state.items() if k.startswith("bert.")})
    return ours, theirs


def make_batch(batch_size: int, seq_len: int, vocab_size: int, padded: bool, seed: int):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1000, vocab_size, (batch_size, seq_len), generator=generator)
    attention_mask = torch.ones(batch_size, seq_len, dtype=torch.long)
    if padded:  # lengths spread over [seq_len / 2, seq_len], as a length-sorted batch would not be
        lengths = torch.randint(seq_len // 2, seq_len + 1, (batch_size,), generator=generator)
        attention_mask = (torch.arange(seq_len)[None, :] < lengths[:, None]).long()
        input_ids = input_ids * attention_mask
    return input_ids, attention_mask


def run_ours(model, input_ids, attention_mask):
    return model(input_ids, attention_mask)[0]


def run_theirs(model, input_ids, attention_mask):
    return model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def time_once(fn, model, precision: str, input_ids, attention_mask) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) for one forward pass."""
    device = input_ids.device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    with torch.inference_mode(), autocast:
        synchronize(device)
        wall, cpu = time.perf_counter(), time.process_time()
        fn(model, input_ids, attention_mask)
        synchronize(device)
        return time.perf_counter() - wall, time.process_time() - cpu


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(ours, theirs, precision: str, repeats: int, input_ids, attention_mask) -> dict[str, list[tuple[float, float]]]:
    times = {"sbert": [], "transformers": []}
    contenders = [("sbert", run_ours, ours), ("transformers", run_theirs, theirs)]
    for _, fn, model in contenders:  # warm-up: first-call allocations and kernel selection
        time_once(fn, model, precision, input_ids, attention_mask)
    for rep in range(repeats):
        for name, fn, model in contenders if rep % 2 == 0 else contenders[::-1]:
            times[name].append(time_once(fn, model, precision, input_ids, attention_mask))
    return times


def median(runs: list[tuple[float, float]], which: int) -> float:
    return statistics.median(run[which] for run in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7, help="fp32 repetitions per model")
    parser.add_argument("--bf16-repeats", type=int, default=3, help="bf16 repetitions per model (slow without AMX)")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--padded", action="store_true", help="also time a batch with padding (attention mask)")
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu (the figure the README reports) or cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import transformers

    from sbert_cli.model.precision import cpu_supports_bf16, machine_summary

    config = dict(vocab_size=21128, hidden_size=768, num_hidden_layers=args.layers, num_attention_heads=12,
                  intermediate_size=3072, max_position_embeddings=512)
    device = torch.device(args.device)
    ours, theirs = (model.to(device) for model in build_pair(config, args.seed))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 for both
        print(f"device {torch.cuda.get_device_name(device)}")
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, threads {torch.get_num_threads()}, "
          f"attn_implementation={theirs.config._attn_implementation}, cpu bf16 (avx512_bf16/amx): {cpu_supports_bf16()}")
    print(machine_summary())
    print(f"BERT-base shape ({args.layers} layers, vocab 21128), batch {args.batch_size} x {args.seq_len} tokens")

    batches = [("no padding", False)] + ([("padded", True)] if args.padded else [])
    for batch_name, padded in batches:
        input_ids, attention_mask = (t.to(device) for t in make_batch(args.batch_size, args.seq_len, 21128, padded, args.seed))
        with torch.inference_mode():  # same weights, same numbers: the comparison is fair
            diff = (run_ours(ours, input_ids, attention_mask) - run_theirs(theirs, input_ids, attention_mask)).abs().max()
        print(f"\n[{batch_name}] fp32 max abs diff of last hidden state: {diff.item():.2e}")
        print(f"{'precision':<10}{'sbert s':>10}{'transformers s':>16}{'sbert seq/s':>13}{'speed-up':>10}"
              f"{'speed-up in CPU time':>22}")
        for precision in args.precisions:
            repeats = args.repeats if precision == "fp32" else args.bf16_repeats
            times = bench(ours, theirs, precision, repeats, input_ids, attention_mask)
            ours_s, theirs_s = median(times["sbert"], 0), median(times["transformers"], 0)
            cpu_ratio = median(times["transformers"], 1) / median(times["sbert"], 1)
            print(f"{precision:<10}{ours_s:>10.3f}{theirs_s:>16.3f}{args.batch_size / ours_s:>13.1f}"
                  f"{theirs_s / ours_s:>9.2f}x{cpu_ratio:>21.2f}x")


if __name__ == "__main__":
    main()
