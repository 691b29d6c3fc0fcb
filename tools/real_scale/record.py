"""The one JSON record every column of `bench.sh` prints (the keys of `runtime/benches/real_scale.rs`)."""

from __future__ import annotations

import json
import resource


def peak_rss_bytes() -> int:
    """Peak resident set of this process (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def emit(*, load_s: float, positions: int, prefill_s: float, decode_tokens: int, decode_s: float,
         rss_after_load: int, ids: list[int], **extra) -> None:
    record = dict(extra)
    record.update({
        "load_s": load_s,
        "prompt_positions": positions,
        "prefill_s": prefill_s,
        "decode_tokens": decode_tokens,
        "decode_s": decode_s,
        "decode_tokens_per_s": decode_tokens / decode_s,
        "peak_rss_after_load_bytes": rss_after_load,
        "peak_rss_bytes": peak_rss_bytes(),
        "ids": ids,
    })
    print(json.dumps(record, indent=2))
