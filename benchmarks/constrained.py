"""Constrained decoding engines side by side: memory and time to prepare each strategy's schemas.

For every reply schema the strategies send with their default settings, this builds what
constrained decoding needs before the first token, once with llguidance (the local backend's
engine) and once with outlines-core (a token-level automaton of the schema's regex, the
engine the backend used before), each in a fresh subprocess under an address-space cap, and
reports seconds and the growth of peak resident memory. llguidance also reports the median and
worst time of a token mask (computed and applied to the logits, torch on one thread) over a
walk through the grammar.

    python benchmarks/constrained.py [--cap-gb 10] [--schemas prism_final,gr_answer,...]
        [--engines llguidance,outlines-core] [--timeout 600]

outlines-core comes with `pip install outlines-core` (in the `bench` extra).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any


def _schemas() -> dict[str, tuple[str, Callable[[], Any]]]:
    from longweave.agents import graph_reader_prompts as gp
    from longweave.agents import light_prompts as lp
    from longweave.agents import prism_prompts as pp
    from longweave.agents.graph_reader import GraphReader
    from longweave.agents.light import LIGHT
    from longweave.agents.prism import Prism
    from longweave.memory.structured_memory import from_model

    p, g, li = Prism(), GraphReader(), LIGHT()
    return {
        "prism_final": ("PRISM final answer", lambda: pp.final_schema(p.answer_chars)),
        "prism_revisions": ("PRISM revisions (QA memory)", lambda: pp.revision_schema(
            from_model(pp.QAMemory), p._ops(), p.value_chars, p.list_items, p.max_revisions)),
        "gr_extraction": ("GraphReader extraction", lambda: gp.extraction_schema(
            g.max_facts, g.fact_chars, g.key_chars, g.max_keys)),
        "gr_answer": ("GraphReader answer", lambda: gp.answer_schema(
            g.analysis_chars, g.answer_chars)),
        "light_kv": ("LIGHT key/value index", lambda: lp.kv_schema(li.kv_items)),
        "light_facts": ("LIGHT facts", lambda: lp.facts_schema(li.fact_items)),
        "light_compressed": ("LIGHT compressed scratchpad",
                             lambda: lp.compressed_schema(li.section_items)),
    }


def _tokenizer() -> Any:
    from longweave.local_models.backend import LocalLLM
    from longweave.local_models.loader import bundled_source

    return LocalLLM(bundled_source())._hf()


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(name: str, engine: str) -> dict[str, Any]:
    """One schema on one engine, in this (fresh) process."""
    from longweave.local_models.constrained import schema_text

    hf = _tokenizer()
    schema = _schemas()[name][1]()
    out: dict[str, Any] = {"schema": name, "engine": engine}
    if engine == "llguidance":
        import torch

        # One thread: on a busy 2-core machine torch's pool turns a 0.2 ms mask fill into 25 ms.
        torch.set_num_threads(1)
        from longweave.local_models.constrained import SchemaCompiler, SchemaLogitsProcessor

        compiler = SchemaCompiler(hf, hf.eos_token_id)
        compiler.grammar(_schemas()["gr_answer"][1]())  # token table: paid once per tokenizer
        rss, started = _maxrss_mb(), time.perf_counter()
        grammar = compiler.grammar(schema)
        processor = SchemaLogitsProcessor(grammar)
        vocab = grammar.tokenizer.vocab_size
        scores = processor(torch.tensor([[0]]), torch.zeros((1, vocab)))
        out["build_s"] = time.perf_counter() - started
        out["rss_mb"] = _maxrss_mb() - rss
        # Walk the grammar: take the allowed token in the middle of the allowed set each step.
        ids, times = [0], []
        for _ in range(200):
            allowed = (scores[0] > float("-inf")).nonzero().flatten().tolist()
            token = allowed[len(allowed) // 2]
            if token == hf.eos_token_id:
                break
            ids.append(token)
            started = time.perf_counter()
            scores = processor(torch.tensor([ids]), torch.zeros((1, vocab)))
            times.append(time.perf_counter() - started)
        times.sort()
        out["mask_ms_median"] = 1000 * times[len(times) // 2]
        out["mask_ms_max"] = 1000 * times[-1]
    else:
        from outlines_core import Index, Vocabulary
        from outlines_core.json_schema import build_regex_from_schema

        by_text: dict[str, list[int]] = {}
        special = set(hf.all_special_ids)
        for token, token_id in hf.get_vocab().items():
            if token_id not in special:
                by_text.setdefault(hf.convert_tokens_to_string([token]), []).append(token_id)
        vocabulary = Vocabulary(hf.eos_token_id, by_text)
        rss, started = _maxrss_mb(), time.perf_counter()
        Index(build_regex_from_schema(schema_text(schema), ""), vocabulary)
        out["build_s"] = time.perf_counter() - started
        out["rss_mb"] = _maxrss_mb() - rss
    return out


def run(name: str, engine: str, cap_gb: float, timeout: float) -> dict[str, Any]:
    code = (f"import json,resource,sys; sys.path.insert(0, {str(__file__.rsplit('/', 1)[0])!r}); "
            f"resource.setrlimit(resource.RLIMIT_AS, ({int(cap_gb * 2**30)}, "
            f"{int(cap_gb * 2**30)})); import constrained as c; "
            f"print(json.dumps(c.child({name!r}, {engine!r})))")
    started = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"schema": name, "engine": engine, "failed": f"over {timeout:.0f} s"}
    if done.returncode != 0:
        reason = "memory cap" if "MemoryError" in done.stderr or done.returncode < 0 \
            or "memory allocation" in done.stderr else done.stderr.strip().splitlines()[-1]
        return {"schema": name, "engine": engine,
                "failed": f"{reason} after {time.perf_counter() - started:.0f} s"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    names = list(_schemas())
    parser.add_argument("--schemas", default=",".join(names))
    parser.add_argument("--engines", default="llguidance,outlines-core")
    parser.add_argument("--cap-gb", type=float, default=10.0)
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()
    labels = {key: label for key, (label, _) in _schemas().items()}
    rows = []
    for name in args.schemas.split(","):
        for engine in args.engines.split(","):
            row = run(name, engine, args.cap_gb, args.timeout)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    print(f"\nSchemas at default settings; cap {args.cap_gb:g} GB of address space per run.\n")
    print("| schema | engine | prepare s | peak RSS growth MB | mask ms (median / max) |")
    print("|---|---|---:|---:|---:|")
    for row in rows:
        if "failed" in row:
            cells = f"failed: {row['failed']} | — | —"
        else:
            mask = (f"{row['mask_ms_median']:.3f} / {row['mask_ms_max']:.2f}"
                    if "mask_ms_median" in row else "—")
            cells = f"{row['build_s']:.2f} | {row['rss_mb']:,.0f} | {mask}"
        print(f"| {labels[row['schema']]} | {row['engine']} | {cells} |")


if __name__ == "__main__":
    main()
