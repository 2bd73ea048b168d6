"""Random-weight Llama checkpoints for tests, demos and benchmarks (no model hub needed).

`generate_model(size, seed, out_dir)` writes a Hugging Face layout directory (config.json,
model.safetensors, tokenizer.json, tokenizer_config.json with a chat template) that vLLM
loads exactly like a downloaded model. Everything is derived from the seed, so two runs
with the same seed give byte-identical weights and the same tokenizer.

Weights are drawn wider than a trained model's init (`initializer_range`) so greedy
decoding is decisive (large logit gaps) and varied rather than one repeated token: tests
that compare migrated and unmigrated outputs token by token then mean something.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from llumctl.errors import InputError


@dataclass(frozen=True)
class ModelSize:
    """Shape of a generated Llama model."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int
    initializer_range: float


SIZES: dict[str, ModelSize] = {
    # head_dim 64 (vLLM CPU rejects 16); ~1M parameters: engine start is dominated by vLLM.
    "tiny": ModelSize(256, 2, 4, 2, 512, 512, 8192, 0.08),
    # ~110M parameters: big enough that decode steps and KV sizes are not toy-like.
    "bench": ModelSize(768, 16, 12, 4, 2048, 2048, 8192, 0.05),
}

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SPECIAL_TOKENS = ("<s>", "</s>", "<unk>")
_SYLLABLES = "ba be bi bo bu da de di do du ka ke ki ko ku la le li lo lu ma me mi mo mu na ne "
_SYLLABLES += "ni no nu ra re ri ro ru sa se si so su ta te ti to tu the and of to in is it"


def num_parameters(size: ModelSize) -> int:
    """Parameter count of a generated model (untied embeddings)."""
    head_dim = size.hidden_size // size.num_heads
    attn = 2 * size.hidden_size * size.hidden_size
    attn += 2 * size.hidden_size * size.num_kv_heads * head_dim
    mlp = 3 * size.hidden_size * size.intermediate_size
    per_layer = attn + mlp + 2 * size.hidden_size
    return size.num_layers * per_layer + 2 * size.vocab_size * size.hidden_size + size.hidden_size


def _corpus(seed: int, num_lines: int = 4000) -> list[str]:
    """Pseudo-text to train the tokenizer on (deterministic in the seed)."""
    rng = random.Random(seed)
    words = [
        "".join(rng.choice(_SYLLABLES.split()) for _ in range(rng.randint(1, 3)))
        for _ in range(300)
    ]
    return [
        " ".join(rng.choice(words) for _ in range(rng.randint(4, 16))) + rng.choice(".,!?")
        for _ in range(num_lines)
    ]


def write_tokenizer(out_dir: Path, vocab_size: int, seed: int, max_len: int) -> None:
    """Train a byte-level BPE tokenizer locally and save it in HF layout."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(seed), trainer=trainer)
    tokenizer.save(str(out_dir / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "</s>",
        "model_max_length": max_len,
        "add_bos_token": False,
        "chat_template": CHAT_TEMPLATE,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2))


def write_weights(out_dir: Path, size: ModelSize, seed: int) -> None:
    """Random Llama weights (float32 on disk) plus config.json."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=size.vocab_size,
        hidden_size=size.hidden_size,
        intermediate_size=size.intermediate_size,
        num_hidden_layers=size.num_layers,
        num_attention_heads=size.num_heads,
        num_key_value_heads=size.num_kv_heads,
        max_position_embeddings=size.max_position_embeddings,
        initializer_range=size.initializer_range,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        tie_word_embeddings=False,
        dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)  # type: ignore[no-untyped-call]
    model.save_pretrained(str(out_dir), safe_serialization=True)


def generate_model(size: str, seed: int, out_dir: Path | str) -> Path:
    """Write a random-weight Llama checkpoint; return its directory."""
    if size not in SIZES:
        raise InputError(f"unknown model size {size!r}; choose from {', '.join(SIZES)}")
    shape = SIZES[size]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_tokenizer(out, shape.vocab_size, seed, shape.max_position_embeddings)
    write_weights(out, shape, seed)
    (out / "llumctl-model.json").write_text(json.dumps({"size": size, "seed": seed}))
    return out


def cached_model(size: str, seed: int, cache_dir: Path | str | None = None) -> Path:
    """The checkpoint for (size, seed) in a cache directory, generated on first use."""
    root = Path(cache_dir) if cache_dir else Path.home() / ".cache" / "llumctl" / "models"
    out = root / f"{size}-{seed}"
    if not (out / "llumctl-model.json").exists():
        # Generate beside the target and rename, so a crashed run leaves no half model.
        tmp = root / f".{size}-{seed}.tmp{random.randrange(1 << 30)}"
        generate_model(size, seed, tmp)
        try:
            tmp.rename(out)
        except OSError:
            pass  # another process won the race; its copy is identical
    return out
