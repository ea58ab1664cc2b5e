"""A cold `longweave ask` against the same command answered from the completion cache.

Both runs are whole processes (import, model load when needed, chunking, the strategy), timed
side by side in one run with a fresh cache directory. The cached run must not load the model.

    python benchmarks/cached_ask.py [DOCUMENT] [QUESTION] [--strategy NAME] [--model local]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def ask(
    document: str, question: str, strategy: str, model: str, cache_dir: str
) -> tuple[float, dict]:
    env = dict(os.environ, LONGWEAVE_CACHE_DIR=cache_dir, HF_HUB_OFFLINE="1")
    command = [
        sys.executable,
        "-m",
        "longweave.cli",
        "ask",
        document,
        question,
        "--strategy",
        strategy,
        "--model",
        model,
        "--json",
    ]
    started = time.perf_counter()
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return time.perf_counter() - started, json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("document", nargs="?", default=str(ROOT / "examples" / "moon_stories.txt"))
    parser.add_argument("question", nargs="?", default="Why did Marcia secretly go to the Moon?")
    parser.add_argument("--strategy", default="chain-of-agents")
    parser.add_argument("--model", default="local")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cache_dir:
        # Warm the dequantized-model cache first so the cold run measures answering, not conversion.
        from longweave.local_models import LocalLLM

        if args.model == "local":
            LocalLLM.bundled(cache_dir=Path(cache_dir)).load()
        cold_s, cold = ask(args.document, args.question, args.strategy, args.model, cache_dir)
        warm_s, warm = ask(args.document, args.question, args.strategy, args.model, cache_dir)
    print("| run | wall s | calls | from cache | prompt tokens |")
    print("|---|---|---|---|---|")
    for name, secs, answer in (("cold", cold_s, cold), ("cached", warm_s, warm)):
        u = answer["usage"]
        print(f"| {name} | {secs:.1f} | {u['calls']} | {u['cache_hits']} | {u['prompt_tokens']} |")
    print(f"\nspeed-up: {cold_s / warm_s:.1f}x; same answer: {cold['text'] == warm['text']}")


if __name__ == "__main__":
    main()
