#!/usr/bin/env python3
"""Helpers of `tools/bench/run.sh` (standard library only).

    report.py exec --meta META.json -- CMD ARGS...
        Runs CMD and records how busy the machine was meanwhile: load average before and
        after, and the CPU time that *other* processes used during the run (from /proc/stat
        minus the child's own rusage), in cores.

    report.py table DIR
        Reads the `rust-t{N}-r{R}.json` / `py-t{N}-r{R}.json` result files (and their
        `.meta.json`) in DIR, checks that both sides ran the same prompt ids and produced the
        same greedy tokens, and prints one Markdown table per thread count: per measurement the
        median over rounds of each round's median, the minimum over all samples, and the ratios
        transformers / runtime of the medians and of the minima (> 1: the runtime is faster).
        Also writes DIR/summary.json.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import time

# (key, label, runtime metric, transformers metric)
ROWS = [
    ("load", "load model + tokenizer", "load", "load"),
    ("preprocess", "preprocess image (decode, resize, crop, normalise)", "preprocess", "preprocess"),
    ("prefill", "**prefill**: chat prompt + 1 image → first token", "prefill", "prefill"),
    ("prefill.vision", "↳ vision tower + projector", "prefill.vision", "prefill.vision"),
    ("prefill.decoder", "↳ decoder over the {t} prompt positions + LM head", "prefill.decoder", "prefill.decoder"),
    ("decode", "**decode**: {n} greedy tokens, KV cache", "decode", "decode"),
    ("generate", "generate end to end (prefill + {n} tokens)", "generate", "generate"),
    ("activate", "**activate** concept, k = 16", "activate", "activate"),
    ("deactivate", "**deactivate** concept", "deactivate", "deactivate"),
    (
        "activate_no_mean_resizing",
        "activate; transformers with `mean_resizing=False`",
        "activate",
        "activate_no_mean_resizing",
    ),
    ("activate_package", "activate from `.ycpt` bytes (parse + fingerprint check)", "activate_package", None),
]


def cpu_times() -> tuple[float, float, float]:
    """(busy, steal, total) jiffies of the whole machine, in seconds."""
    fields = [int(x) for x in pathlib.Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    hz = os.sysconf("SC_CLK_TCK")
    busy = user + nice + system + irq + softirq
    return busy / hz, steal / hz, (busy + idle + iowait + steal) / hz


def loadavg() -> list[float]:
    return [float(x) for x in pathlib.Path("/proc/loadavg").read_text().split()[:3]]


def cmd_exec(args: argparse.Namespace) -> int:
    cmd = args.cmd[1:] if args.cmd and args.cmd[0] == "--" else args.cmd
    before_load = loadavg()
    busy0, steal0, _ = cpu_times()
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - t0
    busy1, steal1, _ = cpu_times()
    own = usage.ru_utime + usage.ru_stime
    meta = {
        "cmd": cmd,
        "wall_s": wall,
        "own_cpu_s": own,
        "others_cores": max(0.0, (busy1 - busy0) - own) / wall,
        "steal_cores": (steal1 - steal0) / wall,
        "loadavg_before": before_load,
        "loadavg_after": loadavg(),
        "cpus": os.cpu_count(),
    }
    pathlib.Path(args.meta).write_text(json.dumps(meta, indent=2) + "\n")
    code = os.waitstatus_to_exitcode(status)
    print(
        f"exec: {wall:.1f} s, own cpu {own:.1f} s, other processes {meta['others_cores']:.2f} cores, "
        f"load {before_load[0]:.2f} -> {meta['loadavg_after'][0]:.2f}",
        file=sys.stderr,
    )
    return code


def fmt_time(s: float) -> str:
    if s >= 1.0:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.0f} µs"


def aggregate(runs: list[dict], metric: str) -> dict | None:
    per_round = [r["metrics"][metric] for r in runs if metric in r["metrics"]]
    if not per_round:
        return None
    return {
        "median_s": statistics.median(m["median_s"] for m in per_round),
        "min_s": min(m["min_s"] for m in per_round),
        "round_medians_s": [m["median_s"] for m in per_round],
        "rounds": len(per_round),
        "samples_per_round": per_round[0]["n"],
    }


def load_runs(directory: pathlib.Path, prefix: str, threads: int) -> tuple[list[dict], list[dict]]:
    runs, metas = [], []
    for path in sorted(directory.glob(f"{prefix}-t{threads}-r*.json")):
        if path.name.endswith(".meta.json"):
            continue
        runs.append(json.loads(path.read_text()))
        meta = path.with_name(path.stem + ".meta.json")
        if meta.is_file():
            metas.append(json.loads(meta.read_text()))
    return runs, metas


def cmd_table(args: argparse.Namespace) -> int:
    directory = pathlib.Path(args.dir)
    thread_counts = sorted(
        {int(m.group(1)) for p in directory.glob("*-t*-r*.json") if (m := re.search(r"-t(\d+)-r", p.name))}
    )
    if not thread_counts:
        sys.exit(f"no results in {directory}")
    summary: dict = {"threads": {}}
    ok = True
    for t in thread_counts:
        rust, rust_meta = load_runs(directory, "rust", t)
        py, py_meta = load_runs(directory, "py", t)
        if not rust or not py:
            print(f"threads {t}: missing results (runtime {len(rust)}, transformers {len(py)} rounds)")
            ok = False
            continue
        n = rust[0]["decode_tokens"]
        same_prompt = all(r["prompt_ids"] == rust[0]["prompt_ids"] for r in rust + py)
        same_tokens = all(r["generated_ids"] == rust[0]["generated_ids"] for r in rust + py)
        ok &= same_prompt and same_tokens
        metas = rust_meta + py_meta
        others = [m["others_cores"] for m in metas]
        loads = [m["loadavg_before"][0] for m in metas] + [m["loadavg_after"][0] for m in metas]
        print(f"\n#### {t} thread(s): {len(rust)} rounds each side\n")
        print(
            "| measurement | concepts-runtime median (min) | transformers median (min) "
            "| transformers / runtime, medians (minima) |"
        )
        print("| --- | ---: | ---: | ---: |")
        rows = {}
        for key, label, rm, pm in ROWS:
            a = aggregate(rust, rm) if rm else None
            b = aggregate(py, pm) if pm else None
            label = label.format(n=n, t=len(rust[0]["prompt_ids"]))
            cell = lambda x: f"{fmt_time(x['median_s'])} ({fmt_time(x['min_s'])})" if x else "—"  # noqa: E731
            if key == "decode" and a and b:
                cell = lambda x: (  # noqa: E731
                    f"{n / x['median_s']:.0f} tok/s ({n / x['min_s']:.0f}); {fmt_time(x['median_s'] / n)}/tok"
                )
            ratio = f"{b['median_s'] / a['median_s']:.2f}× ({b['min_s'] / a['min_s']:.2f}×)" if a and b else "—"
            print(f"| {label} | {cell(a)} | {cell(b)} | {ratio} |")
            rows[key] = {"runtime": a, "transformers": b}
        print(
            f"\nSame prompt ids ({len(rust[0]['prompt_ids'])} tokens) on both sides: "
            f"{'yes' if same_prompt else 'NO'}; same {n + 1} greedy tokens: {'yes' if same_tokens else 'NO'}. "
            f"Load average (1 min) during the runs: {min(loads):.2f}–{max(loads):.2f}; "
            f"other processes used {statistics.median(others):.2f} cores (median over runs; "
            f"range {min(others):.2f}–{max(others):.2f}) of {metas[0]['cpus']}."
        )
        summary["threads"][str(t)] = {
            "rounds": len(rust),
            "rows": rows,
            "same_prompt_ids": same_prompt,
            "same_generated_ids": same_tokens,
            "loadavg_1min_range": [min(loads), max(loads)],
            "others_cores": others,
            "runtime": {"versions": rust[0]["versions"]},
            "transformers": {"versions": py[0]["versions"]},
        }
    (directory / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if ok else 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("exec")
    ex.add_argument("--meta", required=True)
    ex.add_argument("cmd", nargs=argparse.REMAINDER)
    tb = sub.add_parser("table")
    tb.add_argument("dir")
    args = ap.parse_args()
    sys.exit(cmd_exec(args) if args.command == "exec" else cmd_table(args))


if __name__ == "__main__":
    main()
