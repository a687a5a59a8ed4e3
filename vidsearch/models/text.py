"""Text side of InternVideo2 stage-2: tokenizer, BERT-large text path, ITM fusion layers.

The official code (``models/backbones/bert/xbert.py``, ``tokenization_bert.py``) is a fork of
Hugging Face BERT with two quirks reproduced here (facts §2):

* a single text is tokenised as ``[CLS] w1 ... wn [PAD] ...`` with NO ``[SEP]``;
* only layers ``0 .. fusion_layer-1`` (19 of 24) form the text encoder; layers 19-23 add a
  cross-attention to the vision tokens and are used only for ITM re-ranking. Their key/value
  Linears read ``encoder_width`` (1408) wide inputs, which ``transformers.BertModel`` cannot host,
  so ``BertFusionLayer`` below is a small custom module with BERT's parameter names.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vidsearch.schemas.model_config import TextCfg

from .wordpiece import WordPieceTokenizer

_logger = logging.getLogger(__name__)

__all__ = [
    "TextTokenizer",
    "TokenBatch",
    "BertTextEncoder",
    "TextEncoderOutput",
    "build_text_encoder",
    "BertFusionLayer",
    "BertFusion",
]


@dataclass(frozen=True)
class TokenBatch:
    """Token ids of a batch of texts, padded to the context length."""

    input_ids: torch.Tensor  # (B, L) int64
    attention_mask: torch.Tensor  # (B, L) int64, 1 on [CLS] and word pieces

    def to(self, device: torch.device | str) -> TokenBatch:
        """Move both tensors to ``device``."""
        return TokenBatch(self.input_ids.to(device), self.attention_mask.to(device))


class TextTokenizer(WordPieceTokenizer):
    """``WordPieceTokenizer`` whose batches are torch tensors (``TokenBatch``)."""

    def __call__(self, texts: Sequence[str]) -> TokenBatch:
        """Tokenise a batch of texts to (B, context_length) ids and mask."""
        ids, mask = self.encode(texts)
        return TokenBatch(torch.from_numpy(ids), torch.from_numpy(mask))


# ----------------------------------------------------------------------------- BERT text path
# The text path is the first ``fusion_layer`` layers of BERT, written here with the parameter
# names of ``transformers.BertModel`` (so checkpoints map 1:1) and the same operations in the same
# order as its SDPA path, so that the outputs are bit-identical (a unit test compares them).
# transformers is not imported: importing BertModel costs seconds and pulls in torch._dynamo,
# which every one-shot search paid before encoding its query.


@dataclass(frozen=True)
class TextEncoderOutput:
    """What ``BertTextEncoder`` returns (the field name of transformers' output)."""

    last_hidden_state: torch.Tensor  # (B, L, hidden)


class _BertEmbeddings(nn.Module):
    """word + token type + position embeddings, then LayerNorm (``BertEmbeddings``)."""

    def __init__(self, cfg: TextCfg) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=0)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        L = input_ids.shape[1]
        if self.position_embeddings.num_embeddings < L:
            raise ValueError(f"{L} tokens exceed the {self.position_embeddings.num_embeddings} positions")
        position_ids = torch.arange(L, device=input_ids.device)[None]  # (1, L)
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)  # (B, L, h)
        x = x + self.position_embeddings(position_ids)
        return self.LayerNorm(x)


class _BertTextSelfAttention(nn.Module):
    """``BertSelfAttention`` on the SDPA path (explicit scale, boolean key mask)."""

    def __init__(self, hidden: int, num_heads: int) -> None:
        super().__init__()
        self.head_dim = hidden // num_heads
        self.scaling = self.head_dim**-0.5  # a Python float, as transformers passes it
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        B, L, _ = x.shape
        shape = (B, L, -1, self.head_dim)
        q = self.query(x).view(shape).transpose(1, 2)  # (B, H, L, hd)
        k = self.key(x).view(shape).transpose(1, 2)  # (B, H, L, hd)
        v = self.value(x).view(shape).transpose(1, 2)  # (B, H, L, hd)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=0.0, scale=self.scaling, is_causal=False
        )  # (B, H, L, hd)
        return out.transpose(1, 2).contiguous().reshape(B, L, -1).contiguous()  # (B, L, h)


class _BertTextAttention(nn.Module):
    def __init__(self, cfg: TextCfg) -> None:
        super().__init__()
        self.self = _BertTextSelfAttention(cfg.hidden_size, cfg.num_attention_heads)
        self.output = _BertOutput(cfg.hidden_size, cfg.hidden_size, cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.output(self.self(x, mask), x)


class _BertTextLayer(nn.Module):
    """``BertLayer`` of an encoder: self-attention, FFN, post-LN."""

    def __init__(self, cfg: TextCfg) -> None:
        super().__init__()
        self.attention = _BertTextAttention(cfg)
        self.intermediate = _BertIntermediate(cfg.hidden_size, cfg.intermediate_size)
        self.output = _BertOutput(cfg.intermediate_size, cfg.hidden_size, cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = self.attention(x, mask)  # (B, L, h)
        return self.output(self.intermediate(x), x)  # (B, L, h)


class _BertTextLayers(nn.Module):
    def __init__(self, cfg: TextCfg) -> None:
        super().__init__()
        self.layer = nn.ModuleList([_BertTextLayer(cfg) for _ in range(cfg.fusion_layer)])


class BertTextEncoder(nn.Module):
    """BERT's first ``fusion_layer`` layers without a pooler (``BertModel(add_pooling_layer=False)``).

    Keys: ``embeddings.*`` and ``encoder.layer.{i}.*`` as in transformers. Built with transformers'
    random init (same RNG draws in the same order), so seeded test models keep their weights.
    """

    def __init__(self, cfg: TextCfg) -> None:
        super().__init__()
        if cfg.hidden_act != "gelu":
            raise ValueError(f"text hidden_act {cfg.hidden_act!r} is not supported (only the exact 'gelu')")
        self.embeddings = _BertEmbeddings(cfg)
        self.encoder = _BertTextLayers(cfg)
        self._init_like_transformers()

    @torch.no_grad()
    def _init_like_transformers(self) -> None:
        # PreTrainedModel.post_init: children before parents (smart_apply), normal(0, 0.02) for
        # Linear and Embedding (padding row zeroed), ones/zeros for LayerNorm.
        def init(m: nn.Module) -> None:
            for child in m.children():
                init(child)
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, mean=0.0, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, mean=0.0, std=0.02)
                if m.padding_idx is not None:
                    m.weight[m.padding_idx].zero_()
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

        if not self.embeddings.word_embeddings.weight.is_meta:
            init(self)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> TextEncoderOutput:
        """Hidden states of the last layer for ``input_ids`` (B, L); mask 1 = attend."""
        B, L = input_ids.shape
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.embeddings(input_ids, token_type_ids)  # (B, L, h)
        mask: torch.Tensor | None = None
        if attention_mask is not None and not bool(attention_mask.all()):
            # transformers' bidirectional mask for SDPA: boolean (B, 1, L, L), True = attend;
            # none at all when every token of the batch attends.
            mask = attention_mask.bool()[:, None, None, :].expand(B, 1, L, L).contiguous()
        for layer in self.encoder.layer:
            x = layer(x, mask)
        return TextEncoderOutput(x)


def build_text_encoder(cfg: TextCfg) -> BertTextEncoder:
    """The text path: BERT's first ``fusion_layer`` layers, no pooler (see ``BertTextEncoder``)."""
    return BertTextEncoder(cfg)


class _BertSelfAttention(nn.Module):
    """BERT attention projections (``self.query/key/value``); key/value may read another width."""

    def __init__(self, hidden: int, num_heads: int, kv_width: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden // num_heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(kv_width, hidden)
        self.value = nn.Linear(kv_width, hidden)

    def forward(self, x: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        B, Lq, C = x.shape
        Lk = kv.shape[1]
        q = self.query(x).view(B, Lq, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, Lq, hd)
        k = self.key(kv).view(B, Lk, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, Lk, hd)
        v = self.value(kv).view(B, Lk, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, Lk, hd)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, Lq, hd)
        return out.transpose(1, 2).reshape(B, Lq, C)  # (B, Lq, C)


class _BertOutput(nn.Module):
    """``dense`` + residual + post-LN ``LayerNorm`` (BERT's SelfOutput / Output)."""

    def __init__(self, in_dim: int, hidden: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(in_dim, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class _BertAttention(nn.Module):
    def __init__(self, hidden: int, num_heads: int, kv_width: int, eps: float) -> None:
        super().__init__()
        self.self = _BertSelfAttention(hidden, num_heads, kv_width)
        self.output = _BertOutput(hidden, hidden, eps)

    def forward(self, x: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.output(self.self(x, kv, mask), x)


class _BertIntermediate(nn.Module):
    def __init__(self, hidden: int, inter: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, inter)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))  # config_bert_large.json: "gelu" = exact erf


class BertFusionLayer(nn.Module):
    """One xbert fusion layer: self-attn, cross-attn to vision tokens, FFN; post-LN like BERT.

    Parameter names equal ``text_encoder.bert.encoder.layer.{i}.*`` of the official checkpoint.
    """

    def __init__(self, cfg: TextCfg, encoder_width: int) -> None:
        super().__init__()
        h, eps = cfg.hidden_size, cfg.layer_norm_eps
        self.attention = _BertAttention(h, cfg.num_attention_heads, h, eps)
        self.crossattention = _BertAttention(h, cfg.num_attention_heads, encoder_width, eps)
        self.intermediate = _BertIntermediate(h, cfg.intermediate_size)
        self.output = _BertOutput(cfg.intermediate_size, h, eps)

    def forward(self, x: torch.Tensor, text_mask: torch.Tensor | None, vision: torch.Tensor) -> torch.Tensor:
        x = self.attention(x, x, text_mask)  # (B, L, h)
        x = self.crossattention(x, vision, None)  # all-ones vision mask = no mask
        return self.output(self.intermediate(x), x)  # (B, L, h)


class BertFusion(nn.Module):
    """Layers ``fusion_layer .. num_hidden_layers-1`` (5 for BERT-large), stored as ``layer.{j}``."""

    def __init__(self, cfg: TextCfg, encoder_width: int) -> None:
        super().__init__()
        n = cfg.num_hidden_layers - cfg.fusion_layer
        self.layer = nn.ModuleList([BertFusionLayer(cfg, encoder_width) for _ in range(n)])
        self.init_weights(cfg)

    @torch.no_grad()
    def init_weights(self, cfg: TextCfg) -> None:
        """BERT init: normal(0, 0.02) Linears, unit LayerNorms (only matters without weights)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, text_hidden: torch.Tensor, attention_mask: torch.Tensor, vision: torch.Tensor) -> torch.Tensor:
        """Fuse text tokens (B, L, h) with vision tokens (B, Nv, w); returns (B, L, h)."""
        # Boolean key mask (B, 1, 1, L): True = attend. Same zero pad weight as xbert's -10000 in fp32.
        mask = attention_mask.bool()[:, None, None, :]
        x = text_hidden
        for layer in self.layer:
            x = layer(x, mask, vision)
        return x
