"""Train your TinyLlama for one to three minutes on CPU, then let it write. Run: python exercises/12_tiny_llama/train_tiny.py

Not a test and not graded: a reward for finishing the capstone. The text is the Zen of Python, which
every Python installation ships (`import this`); the tokens are its characters. A 2-layer TinyLlama
(hidden 64, GQA with 4 query and 2 key/value heads) learns it by heart in a few hundred steps of AdamW,
and your `generate` (greedy, with your KV cache) then recites it from a short prompt.

    python exercises/12_tiny_llama/train_tiny.py                     # your llama.py, next to this file
    python exercises/12_tiny_llama/train_tiny.py --steps 800 --prompt "Errors"
"""

import argparse
import contextlib
import importlib.util
import io
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F


def zen_of_python() -> str:
    """The text of `import this`, without printing it."""
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        import this  # noqa: F401  (prints the Zen the first time it is imported)
    text = printed.getvalue()
    if not text:  # imported before: decode the module's ROT13 source instead
        import codecs

        import this

        text = codecs.decode(this.s, "rot13") + "\n"
    return text


def load_llama(path: Path):
    spec = importlib.util.spec_from_file_location("learner_llama", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", type=Path, default=Path(__file__).with_name("llama.py"), help="the llama.py to train")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--prompt", default="Beautiful is")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)  # tiny matrices: one thread is fastest

    text = zen_of_python()
    chars = sorted(set(text))
    encode = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([encode[c] for c in text])  # (len(text),) character ids

    llama = load_llama(args.file)
    config = SimpleNamespace(  # the fields of a transformers.LlamaConfig that TinyLlama reads
        vocab_size=len(chars), hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-6, tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    model = llama.TinyLlama(config)
    with torch.no_grad():  # transformers' initialisation: small weights, norms at one
        for name, p in model.named_parameters():
            if not name.endswith("norm.weight"):
                p.normal_(0.0, 0.02)
    print(f"{len(text)} characters, {len(chars)} distinct; TinyLlama with {sum(p.numel() for p in model.parameters()):,} parameters")

    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.steps, eta_min=1e-4)
    context, batch = 256, 8  # generation stays within the positions seen in training
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        offsets = torch.randint(0, len(data) - context - 1, (batch,))
        window = torch.stack([data[o:o + context + 1] for o in offsets])  # (batch, context + 1)
        logits = model(window[:, :-1])  # each position predicts the next character
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), window[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == 1:
            print(f"step {step:4d}  loss {loss.item():.3f}  ({time.perf_counter() - start:.0f} s)")

    model.eval()
    prompt = torch.tensor([[encode[c] for c in args.prompt if c in encode]])
    tokens = model.generate(prompt, max_new_tokens=context - prompt.shape[1])
    print("\n" + "".join(chars[i] for i in tokens[0].tolist()))


if __name__ == "__main__":
    main()
