"""ICL vs IWL circuits in a pretrained language model (default: SmolLM2-135M-Instruct, offline).

Modules, one concept each:

* :mod:`.loading`: the model offline as a TransformerLens bridge (:func:`load_lm`).
* :mod:`.tiny`: a tiny random Llama with a local word tokenizer (tests, no weights).
* :mod:`.heads`: induction / previous-token / duplicate-token scores on repeated random
  tokens, TransformerLens ``detect_head`` scores, the repeated half's loss.
* :mod:`.ablation`: top-k induction heads against k random heads (zero / mean ablation).
* :mod:`.tasks`: ICL, IWL and conflict prompts from the word lists in ``data/`` (CC0).
* :mod:`.scoring`: candidate answers scored by log-probability, accuracy with chance.
* :mod:`.finetune`: fine-tuning on memorisable prompt collections into a run folder.
* :mod:`.study`: evaluation of every checkpoint, the competition table, run reading.

Nothing here downloads: a missing model is one line saying how to install it.
"""

from icl_circuits.llm.loading import DEFAULT_MODEL, LanguageModel, ModelNotFoundError, load_lm

__all__ = ["DEFAULT_MODEL", "LanguageModel", "ModelNotFoundError", "load_lm"]
