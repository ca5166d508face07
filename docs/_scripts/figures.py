"""Draw the chapters' figures from the reference solutions (run by the docs build, see hooks.py).

    python docs/_scripts/figures.py [OUT_DIR]      # default: docs/figures

Every figure is computed by the course's own reference code (`solutions/NN_name/`), loaded the way the
tests load it, so a figure can never disagree with what the grader accepts. A module whose reference is
not there (a learner's handout) is skipped: the handout ships the figures already drawn.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no screen: write PNG files
matplotlib.rcParams.update({"axes.titlesize": 10, "axes.labelsize": 9})
import matplotlib.pyplot as plt  # noqa: E402

# Tensors go to matplotlib as NumPy arrays (`.numpy()`): handed a tensor, imshow and bar call NumPy 2 APIs that
# torch's `__array__`/`__array_wrap__` do not support yet, and each call prints a DeprecationWarning.
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from grader.harness.course import get_module  # noqa: E402
from grader.harness.loader import load_implementation  # noqa: E402

BLUE, ORANGE, GREEN, RED, GREY = "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#7f7f7f"


def reference(name: str):
    return load_implementation(ROOT / "solutions", get_module(name))


def new_figure(width: float = 8.0, height: float = 3.4, cols: int = 2):
    fig, axes = plt.subplots(1, cols, figsize=(width, height), dpi=110, constrained_layout=True)
    return fig, axes


# 01 ---------------------------------------------------------------------------------------------


def rmsnorm_vs_layernorm(out: Path) -> None:
    ref = reference("01_rmsnorm")
    torch.manual_seed(0)
    x = torch.randn(300, 2) * torch.tensor([1.5, 0.6]) + torch.tensor([2.0, 1.0])
    rms = ref.rms_norm(x)
    layer = torch.nn.functional.layer_norm(x, (2,))
    fig, (left, right) = new_figure()
    left.scatter(x[:, 0], x[:, 1], s=6, color=GREY, label="input x")
    left.scatter(rms[:, 0], rms[:, 1], s=6, color=BLUE, label="rms_norm(x)")
    left.add_patch(plt.Circle((0, 0), math.sqrt(2), fill=False, ls="--", color=BLUE))
    left.set_aspect("equal")
    left.set_title("RMSNorm: every vector rescaled to RMS 1\n(direction kept, circle of radius $\\sqrt{d}$)")
    left.legend(loc="lower right", fontsize=8)
    shifts = torch.linspace(-4, 4, 81)
    base = torch.randn(64)
    rms_means = [ref.rms_norm(base + s).mean().item() for s in shifts]
    ln_means = [torch.nn.functional.layer_norm(base + s, (64,)).mean().item() for s in shifts]
    right.plot(shifts, rms_means, color=BLUE, label="RMSNorm")
    right.plot(shifts, ln_means, color=ORANGE, label="LayerNorm")
    right.set_xlabel("constant c added to every entry")
    right.set_ylabel("mean of the normalised vector")
    right.set_title("LayerNorm removes the mean;\nRMSNorm keeps it")
    right.legend(fontsize=8)
    del layer
    fig.savefig(out / "01_rmsnorm_vs_layernorm.png")


# 02 ---------------------------------------------------------------------------------------------


def rope_rotations(out: Path) -> None:
    ref = reference("02_rope")
    head_dim, positions = 64, torch.arange(256)
    cos, sin = ref.rope_cos_sin(positions, head_dim)
    fig, (left, right) = new_figure()
    image = left.imshow(cos[:, : head_dim // 2].T.numpy(), aspect="auto", cmap="RdBu", origin="lower")
    left.set_xlabel("position m")
    left.set_ylabel("pair i (frequency $\\theta_i = 10000^{-2i/d}$)")
    left.set_title("cos(m $\\theta_i$): fast pairs at the bottom,\nslow pairs at the top")
    fig.colorbar(image, ax=left, shrink=0.8)
    # The score between one query and one key at distance m - n depends only on that distance.
    torch.manual_seed(0)
    q = torch.randn(1, 1, 1, head_dim).expand(1, 1, 256, head_dim)
    k = torch.randn(1, 1, 1, head_dim)
    q_rot = ref.apply_rope(q, cos, sin)[0, 0]  # the same query placed at every position
    k_at_0 = ref.apply_rope(k, cos[:1], sin[:1])[0, 0, 0]
    k_at_100 = ref.apply_rope(k.expand(1, 1, 256, head_dim), cos, sin)[0, 0, 100]
    right.plot(positions, q_rot @ k_at_0, color=BLUE, label="key at position 0")
    right.plot(positions - 100, q_rot @ k_at_100, color=ORANGE, ls="--", label="key at position 100, shifted")
    right.set_xlabel("query position minus key position")
    right.set_ylabel("q · k after RoPE")
    right.set_title("The score depends only on\nthe relative distance")
    right.legend(fontsize=8)
    fig.savefig(out / "02_rope_rotations.png")


# 03 ---------------------------------------------------------------------------------------------


def lora_parameter_counts(out: Path) -> None:
    ref = reference("03_lora")
    size = 1024
    ranks = [1, 2, 4, 8, 16, 32, 64, 128, 256]
    counts = []
    for r in ranks:
        layer = ref.LoRALinear(torch.nn.Linear(size, size, bias=False), r=r, alpha=2 * r)
        counts.append(ref.trainable_parameters(layer))
    fig, (left, right) = new_figure()
    left.loglog(ranks, counts, "o-", color=BLUE, label="LoRA: r (in + out)")
    left.axhline(size * size, color=RED, ls="--", label="full fine-tuning: in x out")
    left.set_xlabel("rank r")
    left.set_ylabel("trainable parameters")
    left.set_title(f"One {size} x {size} layer")
    left.legend(fontsize=8)
    right.bar([str(r) for r in ranks], [100 * c / size**2 for c in counts], color=BLUE)
    right.set_xlabel("rank r")
    right.set_ylabel("% of the layer's parameters")
    right.set_title("Trainable fraction\n= r (in + out) / (in x out)")
    fig.savefig(out / "03_lora_parameter_counts.png")


# 04 ---------------------------------------------------------------------------------------------


def zero_memory_per_stage(out: Path) -> None:
    ref = reference("04_zero_memory")
    gpus = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
    fig, (left, right) = new_figure()
    for stage, color in zip(range(4), [GREY, BLUE, ORANGE, GREEN]):
        gb = [ref.model_state_bytes(7.5e9, n, stage) / 1e9 for n in gpus]
        left.loglog(gpus, gb, "o-", color=color, label=f"stage {stage}", base=2)
        fits = [ref.max_params(80e9, n, stage) / 1e9 for n in gpus]
        right.loglog(gpus, fits, "o-", color=color, label=f"stage {stage}", base=2)
    left.axhline(80, color=RED, ls=":", label="80 GB GPU")
    left.set_xlabel("GPUs N")
    left.set_ylabel("model states per GPU (GB)")
    left.set_title("7.5B parameters,\nmixed-precision Adam (K = 12)")
    left.legend(fontsize=7)
    right.set_xlabel("GPUs N")
    right.set_ylabel("largest model (billions of parameters)")
    right.set_title("What fits in 80 GB per GPU")
    right.legend(fontsize=7)
    fig.savefig(out / "04_zero_memory_per_stage.png")


# 05 ---------------------------------------------------------------------------------------------


def int8_outlier_error(out: Path) -> None:
    ref = reference("05_int8_quant")
    torch.manual_seed(0)
    x = torch.randn(64, 512)
    w = torch.randn(256, 512) * 0.05
    magnitudes = [1, 2, 4, 6, 8, 12, 16, 24, 32, 48, 64]
    plain, mixed = [], []
    for m in magnitudes:
        xo = x.clone()
        xo[:, :4] *= m  # a few feature columns with large values, as in LLM activations
        exact = xo.double() @ w.double().T
        for results, y in ((plain, ref.int8_matmul(xo, w)), (mixed, ref.int8_matmul_with_outliers(xo, w, 6.0))):
            results.append(((y.double() - exact).norm() / exact.norm()).item())
    q, scale = ref.absmax_quantize(x[:1])
    fig, (left, right) = new_figure()
    left.semilogy(magnitudes, plain, "o-", color=RED, label="int8_matmul (absmax per row)")
    left.semilogy(magnitudes, mixed, "o-", color=GREEN, label="int8_matmul_with_outliers (threshold 6)")
    left.set_xlabel("scale of 4 outlier feature columns")
    left.set_ylabel("relative error of x @ w.T")
    left.set_title("Outliers ruin absmax;\nLLM.int8 keeps them in float")
    left.legend(fontsize=7)
    right.hist((ref.absmax_dequantize(q, scale) - x[:1]).flatten(), bins=40, color=BLUE)
    right.axvline(-scale.item() / 254, color=GREY, ls="--")
    right.axvline(scale.item() / 254, color=GREY, ls="--", label="± absmax / 254")
    right.set_xlabel("dequantised - original")
    right.set_title("Rounding error of one row:\nat most half a step")
    right.legend(fontsize=8)
    fig.savefig(out / "05_int8_outlier_error.png")


# 06 ---------------------------------------------------------------------------------------------


def kv_cache_cost(out: Path) -> None:
    ref = reference("06_kv_cache")
    lengths = [512 * 2**i for i in range(9)]
    fig, (left, right) = new_figure()
    for name, heads, color in (("Llama-2-7B (32 KV heads)", 32, BLUE), ("with GQA, 8 KV heads", 8, GREEN)):
        gib = [ref.kv_cache_bytes(32, heads, 128, n, 1) / 2**30 for n in lengths]
        left.loglog(lengths, gib, "o-", color=color, label=name, base=2)
    left.axhline(13.5, color=RED, ls=":", label="the 7B weights in fp16")
    left.set_xlabel("sequence length")
    left.set_ylabel("KV cache, GiB (batch 1, fp16)")
    left.set_title("The cache grows linearly with the context")
    left.legend(fontsize=7)
    steps = torch.arange(1, 257)
    prompt = 16
    right.plot(steps, (prompt + steps).cumsum(0), color=RED, label="no cache: every step re-reads all tokens")
    right.plot(steps, prompt + steps, color=GREEN, label="with cache: one new token a step")
    right.set_xlabel("tokens generated")
    right.set_ylabel("token positions computed (total)")
    right.set_title("Quadratic against linear work")
    right.legend(fontsize=7)
    fig.savefig(out / "06_kv_cache_cost.png")


# 07 ---------------------------------------------------------------------------------------------


def dpo_loss_against_margin(out: Path) -> None:
    ref = reference("07_dpo_loss")
    margin = torch.linspace(-40, 40, 401)  # (pc - pr) - (rc - rr)
    zeros = torch.zeros_like(margin)
    fig, (left, right) = new_figure()
    for loss_type, color in (("sigmoid", BLUE), ("hinge", ORANGE), ("ipo", GREEN)):
        losses, _, _ = ref.dpo_loss(margin, zeros, zeros, zeros, beta=0.1, loss_type=loss_type)
        left.plot(margin, losses, color=color, label=loss_type)
    left.set_ylim(0, 6)
    left.set_xlabel("log-ratio margin (chosen - rejected, policy - reference)")
    left.set_ylabel("loss (beta = 0.1)")
    left.set_title("DPO losses against the margin")
    left.legend(fontsize=8)
    for beta, color in ((0.05, GREY), (0.1, BLUE), (0.5, RED)):
        m = margin.clone().requires_grad_(True)
        losses, _, _ = ref.dpo_loss(m, zeros, zeros, zeros, beta=beta)
        (grad,) = torch.autograd.grad(losses.sum(), m)
        right.plot(margin, -grad / beta, color=color, label=f"beta = {beta}")
    right.set_xlabel("log-ratio margin")
    right.set_ylabel("weight sigmoid(-beta * margin)")
    right.set_title("Wrongly ranked pairs\nget the largest updates")
    right.legend(fontsize=8)
    fig.savefig(out / "07_dpo_loss_against_margin.png")


# 08 ---------------------------------------------------------------------------------------------


def ranks_and_collectives(out: Path) -> None:
    ref = reference("08_distributed_launch")
    world_size, batch = 4, torch.arange(16)
    shards = [ref.shard(batch, rank, world_size) for rank in range(world_size)]
    # Each rank's gradient of a tiny linear model on its shard, and their average (what
    # all_reduce_gradients computes), against the gradient of the whole batch in one process.
    torch.manual_seed(0)
    inputs, targets = torch.randn(16, 3), torch.randn(16)
    weight = torch.randn(3, requires_grad=True)

    def grad_on(rows):
        loss = ((inputs[rows] @ weight - targets[rows]) ** 2).mean()
        return torch.autograd.grad(loss, weight)[0]

    local = torch.stack([grad_on(s) for s in shards])
    fig, (left, right) = new_figure(9.0, 3.4)
    colors = [BLUE, ORANGE, GREEN, RED]
    for rank, rows in enumerate(shards):
        left.barh([f"rank {rank}"], [len(rows)], left=[rows[0].item()], color=colors[rank])
        left.text(rows[0].item() + len(rows) / 2, rank, f"rows {rows[0].item()}..{rows[-1].item()}",
                  ha="center", va="center", color="white", fontsize=8)
    left.set_xlim(0, 16)
    left.set_xlabel("sample index of the global batch")
    left.set_title("shard(batch, rank, 4): one contiguous slice each")
    width = 0.16
    for rank in range(world_size):
        right.bar((torch.arange(3) + (rank - 2) * width).numpy(), local[rank].numpy(), width, color=colors[rank], label=f"rank {rank}")
    right.bar((torch.arange(3) + 2 * width).numpy(), local.mean(0).numpy(), width, color="black", label="all-reduce mean")
    right.scatter(torch.arange(3) + 2 * width, grad_on(batch), marker="*", s=80, color="gold", zorder=3,
                  label="one process, whole batch")
    right.set_xticks(range(3), [f"grad w[{i}]" for i in range(3)])
    right.set_title("Mean of the local gradients\n= the full-batch gradient")
    right.legend(fontsize=7, ncol=2)
    fig.savefig(out / "08_ranks_and_collectives.png")


def collectives(out: Path) -> None:
    """All-reduce = reduce-scatter + all-gather, on 4 ranks holding 4 chunks each (values computed)."""
    world = 4
    before = torch.arange(1, world * world + 1, dtype=torch.float32).view(world, world)  # rank r: row r
    total = before.sum(0)
    reduce_scatter = torch.full((world, world), float("nan"))
    for rank in range(world):
        reduce_scatter[rank, rank] = total[rank]  # rank r keeps the summed chunk r
    all_gather = total.expand(world, world)  # every rank gathers every summed chunk
    panels = [("before: rank r holds its own 4 chunks", before), ("reduce-scatter: rank r keeps summed chunk r", reduce_scatter),
              ("all-gather of those = all-reduce", all_gather)]
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.2), dpi=110, constrained_layout=True)
    for ax, (title, values) in zip(axes, panels):
        ax.imshow(torch.nan_to_num(values, nan=0.0).numpy(), cmap="Blues", vmin=0, vmax=total.max().item() * 1.3)
        for r in range(world):
            for c in range(world):
                if not math.isnan(values[r, c]):
                    ax.text(c, r, f"{values[r, c]:.0f}", ha="center", va="center", fontsize=9)
        ax.set_xticks(range(world), [f"chunk {c}" for c in range(world)], fontsize=7)
        ax.set_yticks(range(world), [f"rank {r}" for r in range(world)], fontsize=8)
        ax.set_title(title, fontsize=9)
    fig.savefig(out / "08_collectives.png")


def distributed(out: Path) -> None:
    ranks_and_collectives(out)
    collectives(out)


FIGURES = {
    "01_rmsnorm": rmsnorm_vs_layernorm,
    "02_rope": rope_rotations,
    "03_lora": lora_parameter_counts,
    "04_zero_memory": zero_memory_per_stage,
    "05_int8_quant": int8_outlier_error,
    "06_kv_cache": kv_cache_cost,
    "07_dpo_loss": dpo_loss_against_margin,
    "08_distributed_launch": distributed,
}


def make_all(out: Path) -> list[str]:
    """Draw every figure whose module has a reference; return the modules skipped (no reference)."""
    out.mkdir(parents=True, exist_ok=True)
    skipped = []
    for module, draw in FIGURES.items():
        if not (ROOT / "solutions" / module).is_dir():
            skipped.append(module)
            continue
        try:
            draw(out)
        finally:
            plt.close("all")
    return skipped


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "figures"
    missing = make_all(target)
    print(f"figures written to {target}" + (f"; no reference for {', '.join(missing)}" if missing else ""))
