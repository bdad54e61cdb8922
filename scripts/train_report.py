#!/usr/bin/python3
"""The FP8-vs-BF16 report of scripts/train-default.sh as Markdown (standard library only).

Reads RUNS/NAME/train_log.jsonl (or RUNS/NAME.jsonl) for runs named PRECISION-sSEED (fp8, bf16, fp32) and the
routing-bias ablation (bias-sSEED, nobias-sSEED), and optionally the JSON that
scripts/mtp_acceptance.py, `dsv3 bench --json` and `dsv3 perplexity --json` wrote.
"""
import argparse
import json
import math
import os
import re
import statistics
import sys


def load_log(path):
    steps, valids = [], []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                j = json.loads(line)
            except json.JSONDecodeError as e:
                sys.exit(f"train_report: {path}:{n}: {e}")
            (valids if "valid_ce" in j else steps).append(j)
    return steps, valids


def load_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def fmt_pct(x):
    return f"{100 * x:+.2f}%"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", required=True, help="folder of the run folders")
    p.add_argument("--mtp", help="scripts/mtp_acceptance.py output")
    p.add_argument("--bench", help="dsv3 bench --json output")
    p.add_argument("--perplexity", help="dsv3 perplexity --json output")
    p.add_argument("--best-fp8", action="store_true",
                   help="only print the path of the fp8 run with the lowest final validation CE")
    a = p.parse_args()

    runs = {}
    for entry in sorted(os.listdir(a.runs)):
        # A run folder NAME/train_log.jsonl, or a log kept as NAME.jsonl (docs/training-runs).
        name = entry[: -len(".jsonl")] if entry.endswith(".jsonl") else entry
        log = os.path.join(a.runs, entry)
        if not entry.endswith(".jsonl"):
            log = os.path.join(log, "train_log.jsonl")
        m = re.fullmatch(r"(fp8|bf16|fp32|bias|nobias)-s(\d+)", name)
        if m and os.path.isfile(log):
            steps, valids = load_log(log)
            if steps and valids:
                runs[name] = {"kind": m.group(1), "seed": int(m.group(2)), "steps": steps,
                              "valids": valids, "path": os.path.join(a.runs, entry)}
    if not runs:
        sys.exit(f"train_report: no finished run logs under {a.runs}")
    if a.best_fp8:
        fp8 = [r for r in runs.values() if r["kind"] == "fp8"]
        if not fp8:
            sys.exit(f"train_report: no finished fp8 run under {a.runs}")
        print(min(fp8, key=lambda r: r["valids"][-1]["valid_ce"])["path"])
        return

    print("| run | precision | seed | steps | tokens | final valid CE | valid PPL | MTP valid CE "
          "| train tokens/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in runs.items():
        last, final = r["steps"][-1], r["valids"][-1]
        precision = r["kind"] if r["kind"] in ("fp8", "bf16", "fp32") else "fp8"
        tps = statistics.median(s["tokens_per_s"] for s in r["steps"])
        tokens = last["step"] * 8 * 256
        mtp = f"{final['valid_mtp_ce']:.4f}" if "valid_mtp_ce" in final else "-"
        print(f"| {name} | {precision} | {r['seed']} | {last['step']} | {tokens / 1e6:.2f} M "
              f"| {final['valid_ce']:.4f} | {final['valid_ppl']:.2f} | {mtp} | {tps:.0f} |")
    print()

    def final_ce(kind, seed):
        r = runs.get(f"{kind}-s{seed}")
        return r["valids"][-1]["valid_ce"] if r else None

    seeds = sorted({r["seed"] for r in runs.values()})
    gaps = []
    for s in seeds:
        f8, b16 = final_ce("fp8", s), final_ce("bf16", s)
        if f8 is not None and b16 is not None:
            gaps.append((s, (f8 - b16) / b16))
    if gaps:
        print("| FP8 vs BF16 (same seed: same initialization and data order) | relative gap in "
              "final validation CE |")
        print("|---|---|")
        for s, g in gaps:
            print(f"| seed {s} | {fmt_pct(g)} |")
        values = [g for _, g in gaps]
        spread = f", spread {fmt_pct(min(values))} .. {fmt_pct(max(values))}" if len(values) > 1 else ""
        print(f"| **mean of {len(values)} pairs** | **{fmt_pct(statistics.mean(values))}**{spread} |")
        b16s = [final_ce("bf16", s) for s in seeds if final_ce("bf16", s) is not None]
        if len(b16s) > 1:
            floor = (max(b16s) - min(b16s)) / statistics.mean(b16s)
            print(f"| BF16 seed-to-seed spread (the noise floor) | {100 * floor:.2f}% |")
        for s in seeds:
            f32, b16 = final_ce("fp32", s), final_ce("bf16", s)
            if f32 is not None and b16 is not None:
                print(f"| BF16 vs FP32, seed {s} | {fmt_pct((b16 - f32) / f32)} |")
            f8 = final_ce("fp8", s)
            if f32 is not None and f8 is not None:
                print(f"| FP8 vs FP32, seed {s} | {fmt_pct((f8 - f32) / f32)} |")
        print()

    balance_runs = [n for n in runs if runs[n]["kind"] in ("bias", "nobias", "fp8")]
    if balance_runs:
        v0 = runs[balance_runs[0]]["valids"][-1]
        layers = v0.get("moe_layers", [])
        # With MTP the last MoE layer is the MTP module's (index num_hidden_layers).
        names = [f"layer {l}" + (" (MTP)" if "valid_mtp_ce" in v0 and l == layers[-1] else "")
                 for l in layers]
        print("| expert load at the end: max / mean tokens per routed expert | " +
              " | ".join(names) + " | final valid CE |")
        print("|---|" + "---|" * (len(runs[balance_runs[0]]["valids"][-1].get("moe_layers", [])) + 1))
        for n in balance_runs:
            v = runs[n]["valids"][-1]
            label = {"bias": "bias update on", "nobias": "bias update off (--bias-gamma 0)"}.get(
                runs[n]["kind"], "full run")
            loads = " | ".join(f"{x:.2f}" for x in v.get("load_max_over_mean", []))
            print(f"| {n} ({label}, {runs[n]['steps'][-1]['step']} steps) | {loads} | "
                  f"{v['valid_ce']:.4f} |")
        print()

    if a.perplexity:
        j = load_json(a.perplexity)
        print(f"`dsv3 perplexity -c {j['ctx']}` of {os.path.basename(j['file'])}: "
              f"{j['windows']} windows, {j['scored_tokens']} tokens scored, mean CE "
              f"{j['mean_ce']:.4f} +/- {j['mean_ce_stderr']:.4f} nats/token, PPL "
              f"{j['perplexity']:.2f}")
        print()
    if a.mtp:
        j = load_json(a.mtp)
        print(f"| MTP, first draft, {j['stories']} validation stories | acceptance | tokens per "
              "main step | decode tokens/s |")
        print("|---|---|---|---|")
        for mode in [k for k in j if isinstance(j[k], dict)]:
            m = j[mode]
            acc = f"{100 * m['acceptance']:.1f}%" if m["drafts_checked"] else "-"
            print(f"| {mode} | {acc} | {m['tokens_per_main_step']:.2f} | "
                  f"{m['decode_tokens_per_second']:.1f} |")
        print(f"| greedy speedup from the drafts | | | x{j['greedy_speedup']:.2f} |")
        print()
    if a.bench:
        j = load_json(a.bench)
        for r in j["runs"]:
            m = r.get("mtp")
            if m:
                acc = ", ".join(f"{100 * x:.1f}%" for x in m["acceptance_by_position"])
                print(f"`dsv3 bench` speculative decoding ({r['threads']} threads, draft "
                      f"{m['draft']}): acceptance {acc}, {m['tokens_per_step']:.2f} tokens per "
                      f"step, {m['decode_tokens_per_second']:.0f} tokens/s against "
                      f"{m['plain_decode_tokens_per_second']:.0f} plain: x{m['speedup']:.2f} "
                      f"(a verify pass of {m['draft'] + 1} tokens costs "
                      f"{m['verify_cost_by_tokens'][-1]:.2f} single-token steps)")
        print()


if __name__ == "__main__":
    main()
