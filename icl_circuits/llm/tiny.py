"""A tiny randomly initialised Llama with a word-level tokenizer built locally (tests, no weights).

It has the default model's architecture (RoPE, RMSNorm, gated MLP, grouped-query attention)
at toy size, so every code path of :mod:`icl_circuits.llm` runs in seconds without a download.
The tokenizer splits on whitespace and punctuation and knows the words of the task word lists.
"""

from __future__ import annotations

import torch

from icl_circuits.llm.loading import LanguageModel, bridge

SPECIALS = ["<unk>", "<s>", "</s>"]


def word_tokenizer(words: list[str]):
    """A ``PreTrainedTokenizerFast`` with one token per word of ``words`` (plus punctuation)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for w in [*SPECIALS, ".", ",", ":", "?", "!", *words]:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    # The bridge rebuilds tokenizers from ``name_or_path`` unless they already add BOS.
    fast.init_kwargs.update(name_or_path="tiny-word-tokenizer", add_bos_token=True)
    return fast


def tiny_lm(words: list[str] | None = None, seed: int = 0, n_layers: int = 2, n_heads: int = 4) -> LanguageModel:
    """A 2-layer Llama (d_model 64, 4 heads, 2 key-value heads) bridged, with a word tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if words is None:
        from icl_circuits.llm.tasks import vocabulary

        words = vocabulary()
    tok = word_tokenizer(words)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=max(1, n_heads // 2),
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(seed)
    hf = LlamaForCausalLM(cfg).float().eval()
    model = bridge(hf, tok, "tiny-llama")
    return LanguageModel(model, tok, "tiny-llama", "", tok.bos_token_id)
