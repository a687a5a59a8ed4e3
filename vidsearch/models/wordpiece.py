"""The text tower's tokenizer: bert-large-uncased WordPiece, official layout (no torch here).

Used by ``text.TextTokenizer`` (torch tensors) and the NumPy query encoder (``text_numpy``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["WordPieceTokenizer"]


class WordPieceTokenizer:
    """bert-large-uncased WordPiece with the official single-text layout (no ``[SEP]``).

    Word pieces come from a ``tokenizers`` WordPiece pipeline built exactly as
    ``transformers.BertTokenizer`` builds it (BertNormalizer, BertPreTokenizer, the special tokens
    matched whole), without importing transformers (seconds per process). A unit test checks that
    both give the same ids. The ids are then built by hand: truncate to ``context_length - 1``
    pieces, prepend ``[CLS]``, pad with ``[PAD]``. The attention mask covers ``[CLS]`` and the
    pieces; token types are all 0.
    """

    SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

    def __init__(self, vocab_file: str | Path, context_length: int = 40, do_lower_case: bool = True) -> None:
        from tokenizers import Tokenizer, normalizers, pre_tokenizers
        from tokenizers.models import WordPiece

        vocab_file = Path(vocab_file)
        if not vocab_file.is_file():
            raise FileNotFoundError(f"tokenizer vocabulary not found: {vocab_file}")
        # One token per line, id = line number; the last of duplicate lines wins (BertTokenizer's
        # load_vocab, whose ids the checkpoints were trained with).
        with open(vocab_file, encoding="utf-8") as f:
            lines = f.read().split("\n")
        if lines and lines[-1] == "":
            lines.pop()  # the final newline ends the last line, it does not start another
        vocab = {token: i for i, token in enumerate(lines)}
        missing = [t for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]") if t not in vocab]
        if missing:
            # A tokenizer would silently append them as new ids the checkpoint never saw.
            raise ValueError(f"vocabulary {vocab_file} has no {', '.join(missing)} token")
        tok = Tokenizer(WordPiece(vocab, unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=do_lower_case
        )
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        # Special tokens written in a text ("[SEP]") are matched whole, as BertTokenizer does; only
        # those the vocabulary has, so that no id past the embedding table can appear.
        tok.add_special_tokens([t for t in self.SPECIAL_TOKENS if t in vocab])
        if tok.get_vocab_size(with_added_tokens=True) != len(vocab):
            raise RuntimeError(f"tokenizer did not load {vocab_file} ({tok.get_vocab_size()} tokens)")
        self._tok = tok
        self.vocab_file = vocab_file
        self.vocab_size = len(lines)
        self.context_length = context_length
        self.cls_id = vocab["[CLS]"]
        self.pad_id = vocab["[PAD]"]
        self.sep_id = vocab["[SEP]"]

    def tokenize(self, text: str) -> list[str]:
        """Word pieces of ``text`` (lower-cased, no special tokens)."""
        return list(self._tok.encode(text, add_special_tokens=False).tokens)

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Tokenise a batch of texts: (ids, mask), each int64 (B, context_length)."""
        if isinstance(texts, str):
            raise TypeError("pass a list of strings, not a single string")
        L = self.context_length
        ids = np.full((len(texts), L), self.pad_id, dtype=np.int64)  # (B, L)
        mask = np.zeros((len(texts), L), dtype=np.int64)  # (B, L)
        encoded = self._tok.encode_batch(list(texts), add_special_tokens=False) if texts else []
        for i, enc in enumerate(encoded):
            row = [self.cls_id, *enc.ids[: L - 1]]  # official: [CLS] + pieces, no [SEP]
            ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        return ids, mask
