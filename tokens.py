"""Word pieces: the BERT tokenizer of a model or data directory (sec. 5.1 uses bert-base-uncased's).

A directory holds either a `tokenizer.json` (the `tokenizers` library's format; the built-in world writes one)
or a BERT `vocab.txt`, for which the lower-case BERT pipeline is rebuilt here. Padding and truncation are off:
the sequence builder (vlm.py) adds [CLS] / [SEP] and the callers pad and truncate, counting what they cut.

Tests: python -m pytest -q tests/test_vlm.py      (the same ids as transformers' BertTokenizerFast)
"""
import os

from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece


def load_tokenizer(path):
    """tokenizers.Tokenizer from DIR/tokenizer.json, else the lower-case BERT word-piece pipeline on DIR/vocab.txt.

    Padding and truncation are switched off. Content text is encoded WITHOUT special tokens (the sequence
    builder adds [CLS]/[SEP]): `piece_ids`.
    """
    tj, vt = os.path.join(path, "tokenizer.json"), os.path.join(path, "vocab.txt")
    if os.path.exists(tj):
        try:
            tok = Tokenizer.from_file(tj)
        except Exception as e:  # truncated or not a tokenizers JSON file
            raise ValueError(f"{tj}: cannot read the tokenizer: {e}") from None
        tok.no_padding()  # some tokenizer.json files pad/truncate to 128; callers pad and truncate (and count)
        tok.no_truncation()
        return tok
    if not os.path.exists(vt):
        raise FileNotFoundError(f"{path}: no tokenizer.json or vocab.txt")
    tok = Tokenizer(WordPiece.from_file(vt, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    if cls_id is not None and sep_id is not None:
        tok.post_processor = processors.BertProcessing(("[SEP]", sep_id), ("[CLS]", cls_id))
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok


def special_ids(tok):
    """dict(cls=, sep=, mask=, pad=) from a tokenizer's vocabulary."""
    out = {}
    for name in ("cls", "sep", "mask", "pad"):
        i = tok.token_to_id(f"[{name.upper()}]")
        if i is None:
            raise ValueError(f"tokenizer has no [{name.upper()}] token")
        out[name] = i
    return out


def piece_ids(tok, text):
    """Content word pieces of one text, no [CLS]/[SEP]."""
    return tok.encode(text, add_special_tokens=False).ids
