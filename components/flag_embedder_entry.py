"""FlagEmbedding's encoder-only embedder entry point, with the word embeddings frozen.

torchrun runs this module instead of ``FlagEmbedding.finetune.embedder.encoder_only.base``
when ``TrainConfig.freeze_word_embeddings`` is set; every flag is FlagEmbedding's own.
Freezing pays on CPU and small GPUs: a multilingual vocabulary makes the word-embedding
matrix most of a small model (96 M of e5-small's 118 M parameters), and AdamW would update
all of it every step although a batch touches a few hundred rows.
"""

from __future__ import annotations

import logging

from FlagEmbedding.finetune.embedder.encoder_only.base import EncoderOnlyEmbedderRunner
from FlagEmbedding.finetune.embedder.encoder_only.base.__main__ import main

logger = logging.getLogger(__name__)

_load_tokenizer_and_model = EncoderOnlyEmbedderRunner.load_tokenizer_and_model


def _load_with_frozen_word_embeddings(self: EncoderOnlyEmbedderRunner):
    tokenizer, model = _load_tokenizer_and_model(self)
    frozen = 0
    for name, parameter in model.named_parameters():
        if "word_embeddings" in name:
            parameter.requires_grad = False
            frozen += parameter.numel()
    logger.warning("froze %d word-embedding parameters", frozen)
    return tokenizer, model


EncoderOnlyEmbedderRunner.load_tokenizer_and_model = _load_with_frozen_word_embeddings

if __name__ == "__main__":
    main()
