"""The course's modules: one registry that the harness, the grader, the CLI and the meta-suite share.

A module is a folder `NN_name/` holding one learner file. Adding a module means adding a line here
(and its folders); nothing else in the harness changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Module:
    name: str  # folder name, e.g. "01_rmsnorm"
    file: str  # the learner's file inside it, e.g. "rmsnorm.py"
    title: str

    @property
    def stem(self) -> str:
        return Path(self.file).stem

    @property
    def chapter(self) -> str:
        """The docs chapter a failing test points to."""
        return f"docs/{self.name}.md"


MODULES: tuple[Module, ...] = (
    Module("01_rmsnorm", "rmsnorm.py", "RMSNorm"),
    Module("02_rope", "rope.py", "Rotary position embeddings"),
    Module("03_lora", "lora.py", "LoRA"),
    Module("04_zero_memory", "zero_memory.py", "ZeRO memory arithmetic"),
    Module("05_int8_quant", "int8_quant.py", "Int8 quantization"),
    Module("06_kv_cache", "kv_cache.py", "The KV cache"),
    Module("07_dpo_loss", "dpo.py", "The DPO loss"),
    Module("08_distributed_launch", "launch.py", "Launching distributed training"),
    Module("09_attention", "attention.py", "Attention: MHA, MQA and GQA"),
    Module("10_flash_attention", "flash_attention.py", "FlashAttention's tiling"),
    Module("11_sampling", "sampling.py", "Sampling the next token"),
    Module("12_tiny_llama", "llama.py", "A tiny Llama (the capstone)"),
    Module("13_nf4", "nf4.py", "NF4 and QLoRA"),
    Module("14_mixed_precision", "mixed_precision.py", "Mixed precision: loss scaling and master weights"),
)

_BY_NAME = {module.name: module for module in MODULES}


def get_module(name: str) -> Module:
    try:
        return _BY_NAME[name]
    except KeyError:
        known = ", ".join(_BY_NAME)
        raise KeyError(f"unknown module {name!r}; the course has: {known}") from None


def find_module(name: str) -> Module | None:
    return _BY_NAME.get(name)


class UnknownModule(KeyError):
    """A name that designates no module; its message is one line naming the closest module."""

    def __str__(self) -> str:
        return str(self.args[0])


def resolve_module(name: str) -> Module:
    """The module a learner means: `03_lora`, `03`, `3`, `lora`, `3_lora` (any case) all give 03_lora."""
    import difflib

    wanted = name.strip().lower().strip("/").rsplit("/", 1)[-1]
    number, _, topic = wanted.partition("_")
    for module in MODULES:
        module_number, _, module_topic = module.name.partition("_")
        if wanted == module.name or wanted == module_topic:
            return module
        if number.isdigit() and int(number) == int(module_number) and topic in ("", module_topic):
            return module
    names = [m.name for m in MODULES] + [m.name.partition("_")[2] for m in MODULES]
    close = difflib.get_close_matches(wanted, names, n=1, cutoff=0.0)
    closest = next(m.name for m in MODULES if close and close[0] in (m.name, m.name.partition("_")[2]))
    raise UnknownModule(f"no module {name!r}: did you mean {closest}? (`llmlab progress` lists the modules)")


def existing_modules(root: Path = REPO_ROOT / "solutions") -> list[Module]:
    """The registered modules that have a folder under `root` (modules are added one by one)."""
    return [module for module in MODULES if (root / module.name / module.file).is_file()]
