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

import inspect
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vidsearch.schemas.model_config import TextCfg

_logger = logging.getLogger(__name__)

__all__ = ["TextTokenizer", "TokenBatch", "build_text_encoder", "BertFusionLayer", "BertFusion"]


@dataclass(frozen=True)
class TokenBatch:
    """Token ids of a batch of texts, padded to the context length."""

    input_ids: torch.Tensor  # (B, L) int64
    attention_mask: torch.Tensor  # (B, L) int64, 1 on [CLS] and word pieces

    def to(self, device: torch.device | str) -> TokenBatch:
        """Move both tensors to ``device``."""
        return TokenBatch(self.input_ids.to(device), self.attention_mask.to(device))


class TextTokenizer:
    """bert-large-uncased WordPiece with the official single-text layout (no ``[SEP]``).

    Word pieces come from ``transformers.BertTokenizer`` with ``add_special_tokens=False``; the ids
    are then built by hand: truncate to ``context_length - 1`` pieces, prepend ``[CLS]``, pad with
    ``[PAD]``. The attention mask covers ``[CLS]`` and the pieces; token types are all 0.
    """

    def __init__(self, vocab_file: str | Path, context_length: int = 40, do_lower_case: bool = True) -> None:
        from transformers import BertTokenizer

        vocab_file = Path(vocab_file)
        if not vocab_file.is_file():
            raise FileNotFoundError(f"tokenizer vocabulary not found: {vocab_file}")
        # transformers 5 renamed the argument `vocab_file` -> `vocab` and silently ignores the old
        # name (giving an EMPTY vocabulary); pass whichever this version accepts.
        params = inspect.signature(BertTokenizer.__init__).parameters
        key = "vocab" if "vocab" in params else "vocab_file"
        self._tok = BertTokenizer(**{key: str(vocab_file)}, do_lower_case=do_lower_case)
        with open(vocab_file, encoding="utf-8") as f:
            vocab = {line.rstrip("\n"): i for i, line in enumerate(f) if line.rstrip("\n")}
        missing = [t for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]") if t not in vocab]
        if missing:
            # BertTokenizer would silently append them as new ids the checkpoint never saw.
            raise ValueError(f"vocabulary {vocab_file} has no {', '.join(missing)} token")
        if self._tok.convert_tokens_to_ids("[CLS]") != vocab["[CLS]"] or len(self._tok) < len(vocab):
            raise RuntimeError(f"tokenizer did not load {vocab_file} ({len(self._tok)} tokens)")
        self.vocab_file = vocab_file
        self.vocab_size = len(vocab)
        self.context_length = context_length
        self.cls_id = vocab["[CLS]"]
        self.pad_id = vocab["[PAD]"]
        self.sep_id = vocab["[SEP]"]

    def tokenize(self, text: str) -> list[str]:
        """Word pieces of ``text`` (lower-cased, no special tokens)."""
        return self._tok.tokenize(text)

    def __call__(self, texts: Sequence[str]) -> TokenBatch:
        """Tokenise a batch of texts to (B, context_length) ids and mask."""
        if isinstance(texts, str):
            raise TypeError("pass a list of strings, not a single string")
        L = self.context_length
        ids = torch.full((len(texts), L), self.pad_id, dtype=torch.long)  # (B, L)
        mask = torch.zeros((len(texts), L), dtype=torch.long)  # (B, L)
        for i, text in enumerate(texts):
            pieces = self._tok(text, add_special_tokens=False)["input_ids"][: L - 1]
            row = [self.cls_id, *pieces]  # official: [CLS] + pieces, no [SEP]
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = 1
        return TokenBatch(ids, mask)


def build_text_encoder(cfg: TextCfg, attn_implementation: str = "sdpa") -> nn.Module:
    """``transformers.BertModel`` with the first ``fusion_layer`` layers and no pooler.

    SDPA vs the official eager ``(1-mask)*-10000`` additive mask: both give exactly zero weight to
    pads in fp32 (exp underflows), so they agree to fp32 rounding; a unit test checks sdpa == eager.
    """
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.fusion_layer,
        num_attention_heads=cfg.num_attention_heads,
        intermediate_size=cfg.intermediate_size,
        hidden_act=cfg.hidden_act,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        max_position_embeddings=cfg.max_position_embeddings,
        type_vocab_size=cfg.type_vocab_size,
        layer_norm_eps=cfg.layer_norm_eps,
    )
    config._attn_implementation = attn_implementation
    model = BertModel(config, add_pooling_layer=False)
    assert model.config._attn_implementation == attn_implementation
    return model


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
