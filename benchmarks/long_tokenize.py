"""Memory and time of token offsets for a long text with the local model's tokenizer, side by
side in one run: the whole text in one tokenizer call (what longweave did) against pieces cut
where the tokenizer always splits (what it does: `HFTokenizer._pieces`).

Each way runs in its own process, so that its peak resident memory is its own; both must give
the same token starts. The text is L-Eval's documents, repeated up to the size asked for.

    .venv/bin/python benchmarks/long_tokenize.py ../shared/data --mb 20
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

from chunking import load_text  # noqa: E402


def measure(data_dir: str, megabytes: int, whole: bool, out: str) -> None:
    """One way, in this process: peak RSS above the loaded tokenizer, seconds, and the starts."""
    import numpy as np

    import longweave.tokenizers as tokenizers
    from longweave.llm import resolve_model

    base = load_text(Path(data_dir), 1_000_000)
    size = megabytes * 1_000_000
    text = (base * (size // len(base) + 1))[:size]
    tokenizer = resolve_model("local").tokenizer
    tokenizer.count("warm up")
    if whole:
        tokenizers.PIECE_CHARS = len(text)  # one piece: the text whole
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    starts = tokenizer.token_starts(text)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    np.save(out + ".npy", starts)
    Path(out).write_text(json.dumps({"seconds": seconds, "peak_mb": (peak - before) / 1024,
                                     "tokens": len(starts), "chars": len(text)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="the shared data folder (holds leval/)")
    parser.add_argument("--mb", type=int, default=20, help="text size in millions of characters")
    parser.add_argument("--child", choices=["whole", "pieces"], help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        measure(args.data, args.mb, args.child == "whole", args.result)
        return
    import tempfile

    import numpy as np

    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for way in ("whole", "pieces"):
            result = os.path.join(tmp, way)
            subprocess.run([sys.executable, __file__, args.data, "--mb", str(args.mb),
                            "--child", way, "--result", result], check=True,
                           env={**os.environ, "HF_HUB_OFFLINE": "1"})
            rows[way] = json.loads(Path(result).read_text())
            rows[way]["starts"] = np.load(result + ".npy")
    same = np.array_equal(rows["whole"]["starts"], rows["pieces"]["starts"])
    whole, pieces = rows["whole"], rows["pieces"]
    print(f"{pieces['chars']:,} characters, {pieces['tokens']:,} tokens; "
          f"{platform.python_version()}, {os.cpu_count()} CPUs")
    print("| way | seconds | peak memory above the loaded tokenizer |")
    print("|---|---|---|")
    for way, row in (("whole text, one call", whole), ("pieces (now)", pieces)):
        print(f"| {way} | {row['seconds']:.1f} | {row['peak_mb']:,.0f} MB |")
    print(f"\npieces / whole: time x{pieces['seconds'] / whole['seconds']:.2f}, "
          f"memory x{pieces['peak_mb'] / whole['peak_mb']:.2f}; same token starts: {same}")
    if not same:
        raise SystemExit("the pieces gave other token starts than the whole text")


if __name__ == "__main__":
    main()
