"""A tiny BERT-style Hugging Face folder with its own tokenizer and a text task, built offline.

The tokenizer is a WordPiece model trained here with the ``tokenizers`` library on the task's own
sentences; the model is a 2-layer BERT with random weights (``save_pretrained``). The task is a
synthetic two-class sentiment set: templates filled with positive or negative words, so labels are
learnable and nothing is downloaded. With ``sentence_transformers=True`` the folder also gets the
files a sentence-transformers model has (``modules.json``, ``1_Pooling/config.json``, ...).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

POSITIVE = ("great", "wonderful", "excellent", "good", "lovely", "superb", "brilliant", "fine")
NEGATIVE = ("awful", "terrible", "bad", "boring", "poor", "dreadful", "weak", "dull")
SUBJECTS = ("the movie", "this book", "the food", "our trip", "the show", "that song", "the game")
TEMPLATES = (
    "{s} was {w}",
    "i think {s} is {w}",
    "honestly {s} felt {w} and {w2}",
    "{s} , {w} from start to end",
    "everyone said {s} was really {w}",
)
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def sentences(count: int, seed: int = 0) -> list[tuple[str, int]]:
    """``count`` (text, label) pairs; label 1 for positive words, 0 for negative."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        label = rng.randrange(2)
        words = POSITIVE if label else NEGATIVE
        text = rng.choice(TEMPLATES).format(
            s=rng.choice(SUBJECTS), w=rng.choice(words), w2=rng.choice(words)
        )
        out.append((text, label))
    return out


def save_tokenizer(folder: Path, texts: list[str]) -> None:
    """A lower-casing WordPiece tokenizer trained on ``texts``, saved with save_pretrained."""
    import transformers
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=120, special_tokens=SPECIAL)
    tok.train_from_iterator(texts, trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    fast.save_pretrained(str(folder))


def tiny_bert(
    folder: Path,
    *,
    classifier: bool = False,
    sentence_transformers: bool = False,
    hidden: int = 32,
    layers: int = 2,
    seed: int = 0,
) -> Path:
    """A tiny BERT (encoder, or 2-class sequence classifier) and its tokenizer in ``folder``."""
    import torch
    import transformers

    folder.mkdir(parents=True, exist_ok=True)
    save_tokenizer(folder, [t for t, _ in sentences(400, seed=99)])
    config = transformers.BertConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        vocab_size=120,
        max_position_embeddings=64,
        num_labels=2,
    )
    torch.manual_seed(seed)
    cls = transformers.BertForSequenceClassification if classifier else transformers.BertModel
    cls(config).save_pretrained(str(folder))
    if sentence_transformers:
        _sentence_transformer_files(folder, hidden)
    return folder


def _sentence_transformer_files(folder: Path, hidden: int) -> None:
    """The files sentence-transformers writes beside a Transformer + mean Pooling model."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
    ]
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": 32, "do_lower_case": False})
    )
    (folder / "config_sentence_transformers.json").write_text(
        json.dumps({"__version__": {"sentence_transformers": "3.0.0"}})
    )
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": hidden, "pooling_mode_mean_tokens": True})
    )


def write_text(path: Path, count: int, *, labels: bool = False, seed: int = 0) -> Path:
    """``count`` examples as a plain text file, or a .jsonl with labels."""
    rows = sentences(count, seed)
    if labels:
        path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows))
    else:
        path.write_text("".join(t + "\n" for t, _ in rows))
    return path
