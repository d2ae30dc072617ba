"""Deep multimodal prompts (paper section 5.2, appendix E): the only trained part of MiraGe.

For each layer i = 1..J the learner owns n_ctx text context vectors P_i and, when vision prompts
are on, a linear map F_i: d_text -> d_vision that makes that layer's vision prompts F_i(P_i).
"""

from __future__ import annotations

import torch
from torch import nn

from .backbone import Backbone
from .config import ModelConfig

#: Filler word for context slots beyond the template's own words (its embedding is replaced).
_FILLER = "x"


class PromptLearner(nn.Module):
    """Owns the prompt parameters and the tokenized class sentences they are spliced into.

    Layer 1's context replaces the token embeddings of the first n_ctx slots after the start token
    and starts from the template words' embeddings ("a photo of a"); slots beyond the template's
    words hold a filler token and start random, as do the deeper layers' prompts.
    """

    def __init__(self, backbone: Backbone, config: ModelConfig, depth: int) -> None:
        super().__init__()
        self.n_ctx = config.n_ctx
        self.depth = depth if self.n_ctx > 0 else 0
        tok = backbone.tokenizer
        prefix = config.template.split("{}")[0].strip()
        prefix_ids = tok(prefix, add_special_tokens=False)["input_ids"] if prefix else []
        n_fill = max(0, self.n_ctx - len(prefix_ids))
        fill = " ".join([_FILLER] * n_fill)
        sentences = [
            " ".join(filter(None, [fill, config.template.format(c)])) for c in config.classes
        ]
        enc = tok(sentences, padding=True, return_tensors="pt")
        input_ids = enc["input_ids"]
        self.register_buffer("input_ids", input_ids, persistent=False)
        self.register_buffer("eot_index", _eot_index(input_ids, backbone), persistent=False)
        self.sentences = sentences

        d_text, d_vision = backbone.text_width, backbone.vision_width
        token_embedding = backbone.model.text_model.embeddings.token_embedding
        generator = torch.Generator().manual_seed(0)

        def random_ctx() -> torch.Tensor:
            return torch.randn(self.n_ctx, d_text, generator=generator) * config.init_std

        self.ctx = nn.ParameterList()
        if self.depth > 0:
            first = random_ctx()
            if n_fill < self.n_ctx:
                slots = input_ids[0, 1 + n_fill : 1 + self.n_ctx]
                with torch.no_grad():
                    words = token_embedding(slots.to(token_embedding.weight.device))
                    first[n_fill:] = words.float().cpu()
            self.ctx.append(nn.Parameter(first))
            for _ in range(1, self.depth):
                self.ctx.append(nn.Parameter(random_ctx()))
        self.maps = nn.ModuleList()
        if config.vision_prompts and self.depth > 0:
            for _ in range(self.depth):
                self.maps.append(nn.Linear(d_text, d_vision))

    def text_prompts(self) -> list[torch.Tensor]:
        """[P_1, ..., P_J], each (n_ctx, d_text)."""
        return list(self.ctx)

    def vision_prompts(self) -> list[torch.Tensor]:
        """[F_1(P_1), ..., F_J(P_J)], each (n_ctx, d_vision); empty without vision prompts."""
        return [f(p) for f, p in zip(self.maps, self.ctx, strict=False)]


def _eot_index(input_ids: torch.Tensor, backbone: Backbone) -> torch.Tensor:
    """Position of each sentence's end token, by the same rule as transformers' CLIPTextModel."""
    eos = backbone.model.config.text_config.eos_token_id
    if eos == 2:  # legacy configs: the end token has the highest id
        return input_ids.argmax(dim=-1)
    return (input_ids == eos).int().argmax(dim=-1)
