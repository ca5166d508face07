"""The reference solutions against the libraries, forward and backward, on CPU (and CUDA if present).

    python benchmarks/kernels.py          # a table
    python benchmarks/kernels.py --json   # rows for benchmarks/run.py

Each pair is timed with `torch.utils.benchmark.Timer.blocked_autorange` (a median over many blocks),
the reference and the library alternated, and reported as a ratio: reference time / library time.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import OrderedDict
from pathlib import Path

import torch
from torch.utils import benchmark

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from grader.harness.course import get_module  # noqa: E402
from grader.harness.loader import load_implementation  # noqa: E402


def reference(name: str):
    return load_implementation(ROOT / "solutions", get_module(name))


def median_seconds(fn, min_run_time: float = 0.5) -> float:
    fn()  # warm up
    return benchmark.Timer(stmt="fn()", globals={"fn": fn}).blocked_autorange(min_run_time=min_run_time).median


def compare(what: str, ours, theirs, rounds: int = 3) -> dict:
    """Alternate the two `rounds` times; the ratio of the medians."""
    a, b = [], []
    for _ in range(rounds):
        a.append(median_seconds(ours))
        b.append(median_seconds(theirs))
    a.sort(), b.sort()
    ours_s, theirs_s = a[len(a) // 2], b[len(b) // 2]
    ratio = ours_s / theirs_s
    return {"what": what, "seconds": ours_s, "library_seconds": theirs_s, "ratio": ratio,
            "target": "met (<= 1.5)" if ratio <= 1.5 else "MISSED (> 1.5)"}


def fwd_bwd(module_or_fn, *inputs):
    def step():
        out = module_or_fn(*inputs)
        out = out[0] if isinstance(out, tuple) else out
        out.sum().backward()

    return step


def rmsnorm_rows(device: str) -> list[dict]:
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    ref = reference("01_rmsnorm")
    x = torch.randn(8, 512, 1024, device=device, requires_grad=True)
    ours, theirs = ref.RMSNorm(1024).to(device), LlamaRMSNorm(1024).to(device)
    weight = torch.ones(1024, device=device, requires_grad=True)
    return [
        compare(f"RMSNorm vs LlamaRMSNorm ({device})", fwd_bwd(ours, x), fwd_bwd(theirs, x)),
        compare(f"rms_norm vs F.rms_norm ({device})", fwd_bwd(lambda t: ref.rms_norm(t, weight), x),
                fwd_bwd(lambda t: torch.nn.functional.rms_norm(t, (1024,), weight, 1e-6), x)),
    ]


def rope_rows(device: str) -> list[dict]:
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    ref = reference("02_rope")
    q = torch.randn(4, 16, 512, 128, device=device, requires_grad=True)
    k = torch.randn(4, 16, 512, 128, device=device, requires_grad=True)
    cos, sin = ref.rope_cos_sin(torch.arange(512, device=device), 128)

    def ours():
        (ref.apply_rope(q, cos, sin).sum() + ref.apply_rope(k, cos, sin).sum()).backward()

    def theirs():
        qe, ke = apply_rotary_pos_emb(q, k, cos[None], sin[None])
        (qe.sum() + ke.sum()).backward()

    return [compare(f"apply_rope vs apply_rotary_pos_emb, q and k ({device})", ours, theirs)]


def lora_rows(device: str) -> list[dict]:
    from peft import LoraConfig, get_peft_model

    ref = reference("03_lora")
    torch.manual_seed(0)
    base = torch.nn.Linear(1024, 1024)
    ours = ref.LoRALinear(torch.nn.Linear(1024, 1024), r=16, alpha=32).to(device)
    model = torch.nn.Sequential(OrderedDict(proj=base))
    theirs = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=["proj"])).to(device)
    x = torch.randn(16, 256, 1024, device=device)
    return [compare(f"LoRALinear vs peft lora.Linear, r=16 ({device})", fwd_bwd(ours, x), fwd_bwd(theirs, x))]


def int8_rows(device: str) -> list[dict]:
    import bitsandbytes.functional as bnbf

    ref = reference("05_int8_quant")
    x = torch.randn(4096, 4096, device=device, dtype=torch.float16)
    return [compare(f"absmax_quantize vs bnb int8_vectorwise_quant, fp16 4096x4096, forward ({device})",
                    lambda: ref.absmax_quantize(x), lambda: bnbf.int8_vectorwise_quant(x))]


def kv_cache_rows(device: str) -> list[dict]:
    ref = reference("06_kv_cache")
    torch.manual_seed(0)
    model = ref.TinyDecoder(vocab_size=256, dim=128, num_layers=4, num_heads=8, num_kv_heads=2).to(device).eval()
    prompt = torch.randint(0, 256, (1, 16), device=device)
    rows = []
    for new_tokens in (64, 128, 256, 512):
        cached = median_seconds(lambda: ref.generate(model, prompt, new_tokens, use_cache=True), 0.2)
        full = median_seconds(lambda: ref.generate(model, prompt, new_tokens, use_cache=False), 0.2)
        rows.append({"what": f"{new_tokens} new tokens", "seconds": cached, "library_seconds": full,
                     "ratio": full / cached, "target": "speed-up grows with length"})
    return rows


_PEAK = """
import resource, sys, torch
sys.path.insert(0, {root!r})
from grader.harness.course import get_module
from grader.harness.loader import load_implementation
from pathlib import Path
ref = load_implementation(Path({root!r}) / "solutions", get_module("10_flash_attention"))
torch.set_num_threads(1)
def naive(q, k, v):
    return torch.softmax(q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5, dim=-1) @ v
def tiled(q, k, v):
    return ref.flash_attention(q, k, v)[0]
fn = {{"naive": naive, "tiled": tiled}}[sys.argv[1]]
with torch.no_grad():
    fn(*(torch.randn(1, 1, 256, 64) for _ in range(3)))  # warm up on a short sequence
    q, k, v = (torch.randn(1, 1, {tokens}, 64) for _ in range(3))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = fn(q, k, v)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) * 1024)  # ru_maxrss is in KiB on Linux
"""


def flash_attention_memory_rows(device: str, tokens: int = 4096) -> list[dict]:
    """Peak resident memory added by one forward of naive attention and of the tiled reference (a fresh process each)."""
    if device != "cpu":
        return []
    import subprocess

    peak = {}
    for kind in ("naive", "tiled"):
        run = subprocess.run([sys.executable, "-c", _PEAK.format(root=str(ROOT), tokens=tokens), kind],
                             capture_output=True, text=True, check=True)
        peak[kind] = max(int(run.stdout.split()[-1]), 4096)  # below one page the high-water mark did not move
    return [{"what": f"flash_attention at {tokens} tokens (1 head of 64, fp32, blocks of 64): peak {peak['tiled'] / 2**20:.1f} MiB "
                     f"against {peak['naive'] / 2**20:.1f} MiB naive (peak memory)",
             "seconds": None, "ratio": peak["naive"] / peak["tiled"], "target": "naive / tiled peak memory"}]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        for part in (rmsnorm_rows, rope_rows, lora_rows, int8_rows, kv_cache_rows, flash_attention_memory_rows):
            try:
                rows += part(device)
            except Exception as error:  # a library that does not support the device: say so, go on
                rows.append({"what": f"{part.__name__} ({device})", "seconds": None, "ratio": None,
                             "target": f"not measured: {type(error).__name__}: {error}"[:200]})
    if args.json:
        print(json.dumps(rows))
    else:
        for r in rows:
            print(f"{r['what']:<80} {r.get('ratio') or float('nan'):6.2f}  {r['target']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
