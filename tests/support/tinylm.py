"""A tiny random causal LM built locally (no download) for tests of the transformers engine."""

from __future__ import annotations

import json
from pathlib import Path

CORPUS = [
    "The lighthouse keeper logs the weather every evening at six.",
    "Retrieval augmented generation cites the passages it used.",
    "Question: what does the keeper log? Answer: the weather [1].",
    "Answer the question using only the numbered passages below.",
] * 4


def build_tiny_lm(path: Path, min_new_tokens: int = 0) -> Path:
    """Train a byte-level BPE tokenizer and save a 2-layer Llama with random weights."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        model_input_names=["input_ids", "attention_mask"],
    )
    config = LlamaConfig(
        vocab_size=fast.vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=4096,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
    )
    import torch

    # Fixed weights: greedy decoding of random weights may emit only byte pieces that never
    # complete a character (no text to stream) for one draw and not for another.
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    fast.save_pretrained(path)
    if min_new_tokens:  # random weights may emit EOS early; the model's own config forbids it
        gen = path / "generation_config.json"
        data = json.loads(gen.read_text()) if gen.exists() else {}
        data["min_new_tokens"] = min_new_tokens
        gen.write_text(json.dumps(data))
    return path
