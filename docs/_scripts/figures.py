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


# 09 ---------------------------------------------------------------------------------------------


def gqa_cache_and_groups(out: Path) -> None:
    ref = reference("09_attention")
    # Llama-2-70B: 80 layers, 64 query heads of 128; 4096 tokens, batch 1, float16 (2 bytes): K and V.
    layers, heads, head_dim, tokens = 80, 64, 128, 4096
    mha_gib = 2 * layers * heads * head_dim * tokens * 2 / 2**30
    kv_heads = [1, 2, 4, 8, 16, 32, 64]
    gib = [mha_gib / ref.kv_cache_saving(heads, n) for n in kv_heads]
    fig, (left, right) = new_figure(9.0, 3.4)
    left.loglog(kv_heads, gib, "o-", color=BLUE, base=2)
    for n, g, label in ((1, gib[0], "MQA"), (8, gib[3], "GQA-8 (the real model)"), (64, gib[-1], "MHA")):
        left.annotate(f"{label}: {g:.2f} GiB", (n, g), textcoords="offset points", xytext=(-80 if n == 64 else 6, -12 if n == 64 else 4), fontsize=7)
    left.set_xlabel("key/value heads (64 query heads)")
    left.set_ylabel("KV cache, GiB (4096 tokens, fp16)")
    left.set_title("Llama-2-70B's KV cache against\nthe number of key/value heads")
    # Which kv head each of 8 query heads reads, as repeat_kv lays them out.
    rows = []
    for n in (8, 4, 2, 1):
        ids = torch.arange(n, dtype=torch.float32).view(1, n, 1, 1)
        rows.append(ref.repeat_kv(ids, 8 // n).flatten())  # (8,): the kv head of each query head
    right.imshow(torch.stack(rows).numpy(), cmap="tab10", vmin=-0.5, vmax=9.5, aspect="auto")
    for r, n in enumerate((8, 4, 2, 1)):
        for h in range(8):
            right.text(h, r, f"{rows[r][h]:.0f}", ha="center", va="center", fontsize=8, color="white")
    right.set_yticks(range(4), ["MHA (8 kv)", "GQA (4 kv)", "GQA (2 kv)", "MQA (1 kv)"], fontsize=8)
    right.set_xticks(range(8), [f"q{h}" for h in range(8)], fontsize=8)
    right.set_title("repeat_kv: the kv head each query head reads")
    fig.savefig(out / "09_gqa_cache_and_groups.png")


# 10 ---------------------------------------------------------------------------------------------


def flash_attention_memory(out: Path) -> None:
    ref = reference("10_flash_attention")
    lengths = [256 * 2**i for i in range(10)]  # 256 .. 131072 tokens
    sizes = [ref.attention_memory_bytes(n, 128, 64, 64) for n in lengths]  # float32, head_dim 128, blocks of 64
    fig, (left, right) = new_figure(9.0, 3.4)
    left.loglog(lengths, [naive / 2**20 for naive, _ in sizes], "o-", color=RED, label="naive: the whole score matrix", base=2)
    left.loglog(lengths, [tiled / 2**20 for _, tiled in sizes], "o-", color=GREEN, label="tiled: one 64 x 64 tile + its state", base=2)
    left.axhline(228 / 1024, color=GREY, ls=":", label="H100 shared memory per SM (228 KiB)")
    left.set_xlabel("sequence length")
    left.set_ylabel("MiB per (batch, head), fp32")
    left.set_title("Scores held at once: quadratic against constant")
    left.legend(fontsize=7)
    # The online softmax on one query: the running output, normalised, after each block of 16 keys.
    torch.manual_seed(0)
    scores, v = torch.randn(1, 256) * 3, torch.randn(256, 1)
    m, l, acc = torch.full((1,), float("-inf")), torch.zeros(1), torch.zeros(1, 1)
    running, maxima = [], []
    for start in range(0, 256, 16):
        m, l, acc = ref.online_softmax_update(m, l, acc, scores[:, start:start + 16], v[start:start + 16])
        running.append((acc / l[:, None]).item())
        maxima.append(m.item())
    exact = (scores.softmax(-1) @ v).item()
    blocks = range(1, 17)
    right.plot(blocks, running, "o-", color=BLUE, label="acc / l after each block")
    right.axhline(exact, color=GREY, ls="--", label="softmax(scores) @ v")
    twin = right.twinx()
    twin.step(blocks, maxima, where="post", color=ORANGE, label="running max m")
    twin.set_ylabel("running max m", color=ORANGE)
    right.set_xlabel("blocks of 16 keys folded in")
    right.set_ylabel("output of one query")
    right.set_title("The online softmax: exact once\nthe last block is in")
    right.legend(fontsize=7, loc="lower right")
    fig.savefig(out / "10_flash_attention_memory.png")
# 11 ---------------------------------------------------------------------------------------------


def sampling_filters(out: Path) -> None:
    ref = reference("11_sampling")
    logits = torch.tensor([[2.6, 2.2, 1.9, 1.5, 1.2, 0.9, 0.5, 0.1, -0.4, -0.9, -1.5, -2.2]])
    seen = torch.tensor([[0, 1, 0]])  # tokens 0 and 1 are already in the sequence
    tokens = torch.arange(logits.shape[-1]).numpy()  # matplotlib takes NumPy arrays, not tensors
    panels = [
        ("temperature 0.6", ref.apply_temperature(logits, 0.6)),
        ("temperature 1.8", ref.apply_temperature(logits, 1.8)),
        ("top-k, k = 4", ref.top_k_filter(logits, 4)),
        ("top-p, p = 0.8", ref.top_p_filter(logits, 0.8)),
        ("min-p, min_p = 0.15", ref.min_p_filter(logits, 0.15)),
        ("repetition penalty 1.5\n(tokens 0 and 1 seen)", ref.apply_repetition_penalty(logits, seen, 1.5)),
    ]
    before = logits.softmax(-1)[0].numpy()
    fig, axes = plt.subplots(2, 3, figsize=(10, 5.2), dpi=110, constrained_layout=True, sharey=True)
    for ax, (title, processed) in zip(axes.flat, panels):
        after = processed.softmax(-1)[0].numpy()
        ax.bar(tokens - 0.2, before, 0.4, color=GREY, label="before")
        ax.bar(tokens + 0.2, after, 0.4, color=BLUE, label="after")
        removed = (~torch.isfinite(processed[0])).numpy()
        ax.scatter(tokens[removed], [0.0] * int(removed.sum()), marker="x", color=RED, zorder=3, label="removed")
        ax.set_title(f"{title}: {int((~removed).sum())} tokens left")
        ax.set_xticks(tokens)
        ax.set_xlabel("token (by logit, largest first)")
    axes[0, 0].set_ylabel("probability")
    axes[1, 0].set_ylabel("probability")
    axes[0, 0].legend(fontsize=7)
    fig.savefig(out / "11_sampling_filters.png")


# 12 ---------------------------------------------------------------------------------------------


def tiny_llama_block(out: Path) -> None:
    """The forward pass as one picture (shapes from a reference TinyLlama), and a 1B model's parameters by part."""
    from types import SimpleNamespace

    ref = reference("12_tiny_llama")
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 6.2), dpi=110, constrained_layout=True,
                                      gridspec_kw={"width_ratios": [1.15, 1]})
    # Left: the boxes of the forward pass, the shapes printed by running a small reference model.
    config = SimpleNamespace(vocab_size=1000, hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-6, tie_word_embeddings=True,
                             rope_parameters={"rope_theta": 10000.0})
    model = ref.TinyLlama(config).eval()
    shapes = {}

    def remember(name):
        def hook(module, args, output):  # returns None: the output is left as it is
            shapes[name] = tuple(output.shape)
        return hook

    for name in ("model.embed_tokens", "model.layers.0.self_attn", "model.layers.0.mlp", "model.norm", "lm_head"):
        model.get_submodule(name).register_forward_hook(remember(name))
    with torch.no_grad():
        model(torch.randint(0, 1000, (2, 7)))
    boxes = [  # (y, label, module where it comes from, colour)
        (11.0, f"input_ids {(2, 7)}", "", GREY),
        (10.0, f"embed_tokens -> {shapes['model.embed_tokens']}", "", GREY),
        (8.9, "input_layernorm (RMSNorm)", "01", BLUE),
        (7.9, "q, k, v = q_proj, k_proj, v_proj;  RoPE on q, k", "02", BLUE),
        (6.9, f"GQA attention, KV cache -> o_proj {shapes['model.layers.0.self_attn']}", "06, 09, 10", BLUE),
        (5.8, "+ residual", "", BLUE),
        (4.8, "post_attention_layernorm (RMSNorm)", "01", ORANGE),
        (3.8, f"SwiGLU: down(silu(gate) * up) {shapes['model.layers.0.mlp']}", "12", ORANGE),
        (2.8, "+ residual", "", ORANGE),
        (1.7, f"final norm {shapes['model.norm']}", "01", GREY),
        (0.7, f"lm_head (tied) -> logits {shapes['lm_head']}", "", GREY),
        (-0.3, "next token: greedy or sampled", "11", GREEN),
    ]
    for y, label, where, colour in boxes:
        left.text(0.40, y, label, ha="center", va="center", fontsize=8,
                  bbox={"boxstyle": "round,pad=0.35", "facecolor": colour, "alpha": 0.18, "edgecolor": colour})
        if where:
            left.text(1.0, y, f"module {where}", ha="right", va="center", fontsize=7, color=GREY)
    for (y0, *_), (y1, *_) in zip(boxes, boxes[1:]):
        left.annotate("", xy=(0.40, y1 + 0.3), xytext=(0.40, y0 - 0.3), arrowprops={"arrowstyle": "->", "color": GREY})
    left.add_patch(plt.Rectangle((0.0, 2.35), 0.80, 7.05, fill=False, ls="--", color=GREY))
    left.text(0.01, 2.12, f"x {config.num_hidden_layers} decoder layers", fontsize=8, color=GREY, va="center")
    left.set_xlim(0, 1)
    left.set_ylim(-0.9, 11.6)
    left.axis("off")
    left.set_title("The forward pass of TinyLlama\n(shapes of a reference run: batch 2, 7 tokens, hidden 64)")
    # Right: where the parameters of a Llama-3.2-1B-shaped model sit (built on the meta device: no memory).
    big = SimpleNamespace(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                          num_key_value_heads=8, head_dim=64, rms_norm_eps=1e-5, tie_word_embeddings=True,
                          rope_parameters={"rope_theta": 500000.0})
    with torch.device("meta"):
        model = ref.TinyLlama(big)
    parts = {"embeddings (tied head)": 0, "attention q, k, v, o": 0, "MLP gate, up, down": 0, "RMSNorm weights": 0}
    for name, p in model.named_parameters():  # a tied head is named once
        key = ("embeddings (tied head)" if "embed" in name or "lm_head" in name else "attention q, k, v, o" if "self_attn" in name
               else "MLP gate, up, down" if "mlp" in name else "RMSNorm weights")
        parts[key] += p.numel()
    total = sum(parts.values())
    right.barh(list(parts), [v / 1e6 for v in parts.values()], color=[GREY, BLUE, ORANGE, GREEN])
    for i, v in enumerate(parts.values()):
        right.text(v / 1e6, i, f" {v / 1e6:,.1f} M ({100 * v / total:.1f} %)", va="center", fontsize=8)
    right.set_xlim(0, max(parts.values()) / 1e6 * 1.45)
    right.invert_yaxis()
    right.set_xlabel("parameters (millions)")
    right.set_title(f"Parameters of a Llama-3.2-1B-shaped TinyLlama\n{total:,} in all")
    fig.savefig(out / "12_tiny_llama_block.png")
# 13 ---------------------------------------------------------------------------------------------


def nf4_levels_and_error(out: Path) -> None:
    ref = reference("13_nf4")
    code = ref.NF4_CODE.double()
    sigma_of_last = float(torch.special.ndtri(torch.tensor(0.9677083, dtype=torch.float64)))  # where 1.0 sits, in units of sigma
    z = torch.linspace(-2.6, 2.6, 400, dtype=torch.float64)
    fig, (left, right) = new_figure()
    left.plot(z, torch.exp(-z**2 / 2) / math.sqrt(2 * math.pi), color=GREY, label="N(0, 1) density")
    for i, level in enumerate(code * sigma_of_last):
        left.axvline(float(level), color=BLUE, lw=0.9, ls="-" if i != 7 else "--")
    uniform = torch.linspace(-1, 1, 16, dtype=torch.float64) * sigma_of_last
    left.plot(uniform, torch.full((16,), -0.02), "|", color=ORANGE, ms=8, label="16 uniform levels (int4)")
    left.plot([], [], color=BLUE, lw=0.9, label="16 NF4 levels (NF4_CODE)")
    left.set_xlabel("weight / sigma")
    left.set_title("NF4 levels sit at normal quantiles:\ndense where the weights are")
    left.legend(fontsize=7, loc="upper right")
    torch.manual_seed(0)
    w = torch.randn(256, 1024)
    blocksizes = [32, 64, 128, 256, 1024, 4096]
    nf4_err, int4_err = [], []
    for bs in blocksizes:
        packed, absmax = ref.quantize_nf4(w, bs)
        restored = ref.dequantize_nf4(packed, absmax, tuple(w.shape), bs)
        nf4_err.append(float((restored - w).pow(2).mean().sqrt()))
        blocks = w.reshape(-1, bs)
        a = blocks.abs().amax(1, keepdim=True)
        int4 = (torch.round(blocks / a * 7).clamp(-7, 7) / 7 * a).reshape(w.shape)  # symmetric absmax int4
        int4_err.append(float((int4 - w).pow(2).mean().sqrt()))
    right.semilogx(blocksizes, int4_err, "o-", color=ORANGE, label="int4 (absmax, uniform levels)", base=2)
    right.semilogx(blocksizes, nf4_err, "o-", color=BLUE, label="NF4 (quantize_nf4)", base=2)
    right.set_xlabel("block size")
    right.set_ylabel("RMS round-trip error (sigma = 1)")
    right.set_title("Error on normal weights:\nNF4 below int4 at every block size")
    right.legend(fontsize=7)
    fig.savefig(out / "13_nf4_levels_and_error.png")


# 14 ---------------------------------------------------------------------------------------------


def mixed_precision_ranges_and_scale(out: Path) -> None:
    ref = reference("14_mixed_precision")
    formats = [  # name, dtype, mantissa bits
        ("float32", torch.float32, 23), ("tf32 (matmul inputs)", torch.float32, 10),
        ("bfloat16", torch.bfloat16, 7), ("float16", torch.float16, 10),
    ]
    fig, (left, right) = new_figure(width=9.0)
    for row, (name, dtype, mantissa) in enumerate(formats):
        info = torch.finfo(dtype)
        smallest_subnormal = math.log2(info.smallest_normal) - mantissa
        low, high = math.log2(info.smallest_normal), math.log2(info.max)
        left.barh(row, high - low, left=low, color=BLUE, height=0.5)
        left.barh(row, low - smallest_subnormal, left=smallest_subnormal, color=BLUE, alpha=0.35, height=0.5)
        left.text(high + 3, row, f"{mantissa} mantissa bits", va="center", fontsize=7)
    left.axvspan(-40, -14, color=ORANGE, alpha=0.15, label="small gradients\n(2**-40 .. 2**-14)")
    left.set_yticks(range(len(formats)), [f[0] for f in formats], fontsize=8)
    left.set_xlim(-160, 200)
    left.set_xlabel("log2 of the magnitude (light: subnormals)")
    left.set_title("Representable ranges: float16 is narrow,\nbfloat16 as wide as float32")
    left.legend(fontsize=7, loc="upper left")
    # A float16 run: true gradients of varying size, scaled, stored in float16; the reference scaler adapts.
    torch.manual_seed(0)
    scaler = ref.DynamicLossScaler(init_scale=2.0**16, growth_interval=100)
    param = torch.nn.Parameter(torch.zeros(1, dtype=torch.float16))
    optimizer = torch.optim.SGD([param], lr=0.0)
    scales, overflows = [], []
    for step in range(1500):
        magnitude = 10 ** (torch.rand(()) * 2 - 3) * (30.0 if 600 <= step < 700 else 1.0)  # a rough patch at 600
        param.grad = (magnitude * scaler.get_scale()).reshape(1).to(torch.float16)  # inf above 65504
        if not bool(torch.isfinite(param.grad).all()):
            overflows.append((step, math.log2(scaler.get_scale())))
        scaler.step(optimizer)
        scaler.update()
        scales.append(math.log2(scaler.get_scale()))
    right.plot(scales, color=BLUE, label="log2(scale)")
    right.plot(*zip(*overflows), "x", color=RED, ms=4, label="overflow: step skipped, scale halved")
    right.set_xlabel("step")
    right.set_ylabel("log2 of the loss scale")
    right.set_title("DynamicLossScaler over a float16 run\n(grows every 100 finite steps)")
    right.legend(fontsize=7, loc="lower right")
    fig.savefig(out / "14_mixed_precision_ranges_and_scale.png")


FIGURES = {
    "01_rmsnorm": rmsnorm_vs_layernorm,
    "02_rope": rope_rotations,
    "03_lora": lora_parameter_counts,
    "04_zero_memory": zero_memory_per_stage,
    "05_int8_quant": int8_outlier_error,
    "06_kv_cache": kv_cache_cost,
    "07_dpo_loss": dpo_loss_against_margin,
    "08_distributed_launch": distributed,
    "09_attention": gqa_cache_and_groups,
    "10_flash_attention": flash_attention_memory,
    "11_sampling": sampling_filters,
    "12_tiny_llama": tiny_llama_block,
    "13_nf4": nf4_levels_and_error,
    "14_mixed_precision": mixed_precision_ranges_and_scale,
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
