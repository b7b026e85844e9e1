from __future__ import annotations

from typing import Annotated, Literal, Sequence

import torch
from torch import nn

from compose_retrieval.errors import ComposeRetrievalError, OptionError
from compose_retrieval import TextEncoder, TextFeatures
from compose_retrieval.options import Range

POOLINGS = ("mean", "cls")


class TransformersTextEncoder(TextEncoder):
    """Any Hugging Face encoder by name or local path: mean-pooled or CLS sentence vector plus token states.

    Options: ``model_name`` (a Hub id or a local directory with config, weights and
    tokenizer), ``pooling`` ("mean" over real tokens, or "cls"), ``freeze`` (keep the
    transformer's weights fixed and its dropout off), ``max_length`` (tokens per text),
    ``pretrained`` (start from the model's weights; false: its architecture with fresh weights).
    The checkpoint stores the fine-tuned weights and references the tokenizer by
    ``model_name``, which must still resolve when the model is loaded. transformers is
    imported when the encoder is built, never when plugins are listed.
    """

    path_options = ("model_name",)  # a Hub id or a local folder, read from a checkpoint too (safetensors only)

    def __init__(
        self,
        out_dim: int = 512,
        model_name: str = "sentence-transformers/all-MiniLM-L6-v2",
        pooling: Literal["mean", "cls"] = "mean",
        freeze: bool = False,
        max_length: Annotated[int, Range(1, 8192)] = 64,
        pretrained: bool = True,
    ):
        super().__init__()
        if pooling not in POOLINGS:
            raise OptionError(f"unknown pooling {pooling!r}; use one of {', '.join(POOLINGS)}")
        try:
            from transformers import AutoConfig, AutoModel, AutoTokenizer
        except ImportError:
            raise ComposeRetrievalError(
                'the transformers text encoder needs the transformers package: pip install "compose-retrieval[transformers]"'
            ) from None
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model_name, trust_remote_code=False)
            if pretrained:  # safetensors only: a model folder's pickled weights (pytorch_model.bin) are never unpickled
                self.transformer = AutoModel.from_pretrained(model_name, use_safetensors=True, trust_remote_code=False)
            else:  # the architecture alone; the weights come from a checkpoint
                self.transformer = AutoModel.from_config(AutoConfig.from_pretrained(model_name, trust_remote_code=False))
        except OSError as exc:
            raise ComposeRetrievalError(
                f"cannot load the transformers model {model_name!r}: {str(exc).splitlines()[0]} "
                "(give a local directory, or a Hub id that is cached or reachable)"
            ) from None
        self.pooling, self.freeze, self.max_length = pooling, freeze, max_length
        hidden = self.transformer.config.hidden_size
        self.out_dim, self.token_dim = out_dim, hidden
        self.fc = nn.Linear(hidden, out_dim)
        if freeze:
            self.transformer.requires_grad_(False)
            self.transformer.eval()

    @classmethod
    def options_for_loading(cls, options: dict) -> dict:
        return {**options, "pretrained": False}  # the checkpoint holds the fine-tuned weights

    def train(self, mode: bool = True) -> "TransformersTextEncoder":
        super().train(mode)
        if self.freeze:
            self.transformer.eval()
        return self

    def forward(self, texts: Sequence[str]) -> TextFeatures:
        device = self.fc.weight.device
        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(device)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze):
            states = self.transformer(**batch).last_hidden_state
        mask = batch["attention_mask"].bool()
        if self.pooling == "cls":
            sentence = states[:, 0]
        else:
            weights = mask.unsqueeze(-1).to(states.dtype)
            sentence = (states * weights).sum(1) / weights.sum(1).clamp(min=1)
        return TextFeatures(self.fc(sentence), states, mask)
