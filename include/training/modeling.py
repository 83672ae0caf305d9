"""The acceptance classifier: tokenizer, model, training loop, metrics.

`tiny` builds a small DistilBERT-style model from a config with a WordPiece tokenizer trained
on our own text (no hub download, ever); any local Hugging Face checkpoint directory works as
a base on a GPU run, optionally with LoRA (merged before saving, so the saved directory is a
plain transformers model).
"""
from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass

MAX_LENGTH = 160
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TINY = "tiny"


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


VOCAB_SIZE = 30000  # far above the words of the demo (about 580): a word left out is spelled letter by letter


def train_tokenizer(texts: Iterable[str], vocab_size: int = VOCAB_SIZE, report: dict | None = None):
    """A WordPiece tokenizer whose vocabulary is learned from our own examples, deterministically.

    The vocabulary is the special tokens, every character seen (alone and as a `##`
    continuation, so unseen words still split into known pieces), then the most frequent
    words (ties by spelling). The `tokenizers` WordPiece trainer was not used because its
    vocabulary varied between identical runs, which broke seed determinism. Every value of the
    texts is one word that names its field (`include.core.features`), so a word that does not fit
    loses its meaning: `report` (when given) receives `tokenizer_words` and
    `tokenizer_words_dropped`, and a dropped word is a warning.
    """
    from collections import Counter

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = sorted({char for word in counts for char in word})
    pieces = [*SPECIAL_TOKENS, *chars, *(f"##{char}" for char in chars)]
    known = set(pieces)
    words = [w for w, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0])) if w not in known]
    kept = words[:max(0, vocab_size - len(pieces))]
    if len(kept) < len(words):
        logging.getLogger("planner.train").warning(
            "the tokenizer's vocabulary (%d) holds %d of the %d distinct words: the %d rarest (e.g. %s) are spelled "
            "letter by letter; raise vocab_size", vocab_size, len(kept), len(words), len(words) - len(kept),
            ", ".join(words[-3:]))
    if report is not None:
        report.update(tokenizer_words=len(kept), tokenizer_words_dropped=len(words) - len(kept))
    vocab = {token: index for index, token in enumerate(pieces + kept)}

    tokenizer = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                   model_max_length=MAX_LENGTH)


def tokenizer_sha256(tokenizer) -> str:
    """The tokenizer's whole definition (vocabulary, normalizer, templates) as a digest: a checkpoint's
    weights belong to these token ids."""
    import hashlib
    import json as json_module

    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json_module.dumps(tokenizer.get_vocab(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def build_model(base_model: str, tokenizer, lora: dict | None = None):
    """(model, tokenizer) for `tiny` (tokenizer given) or a local checkpoint directory."""
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DistilBertConfig,
        DistilBertForSequenceClassification,
    )

    if base_model == TINY:
        config = DistilBertConfig(vocab_size=len(tokenizer), dim=64, n_layers=2, n_heads=4, hidden_dim=256,
                                  max_position_embeddings=MAX_LENGTH, num_labels=2, pad_token_id=tokenizer.pad_token_id,
                                  dropout=0.1, attention_dropout=0.1, seq_classif_dropout=0.1)
        model = DistilBertForSequenceClassification(config)
    else:
        tokenizer = AutoTokenizer.from_pretrained(base_model, local_files_only=True)
        model = AutoModelForSequenceClassification.from_pretrained(base_model, num_labels=2, local_files_only=True)
    model.config.id2label, model.config.label2id = {0: "replaced", 1: "kept"}, {"replaced": 0, "kept": 1}
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=lora["r"], lora_alpha=lora["alpha"],
                                                 lora_dropout=0.05,
                                                 target_modules=lora.get("target_modules") or _lora_targets(model)))
    return model, tokenizer


def _lora_targets(model) -> list[str] | None:
    """peft has no default target modules for DistilBERT (`tiny` included): its attention's query and value."""
    return ["q_lin", "v_lin"] if getattr(model.config, "model_type", "") == "distilbert" else None


@dataclass
class Encoded:
    """Token ids of every example, ragged: example i is `tokens[offsets[i]:offsets[i + 1]]`
    (int32 in one array, so memory is about four bytes a token, not a Python list per example)."""

    tokens: object   # numpy int32
    offsets: object  # numpy int64, one more than the examples
    labels: object   # numpy int64
    seconds: float = 0.0

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, count: int) -> Encoded:
        return Encoded(self.tokens[:self.offsets[count]], self.offsets[:count + 1], self.labels[:count])


def encode(tokenizer, examples, chunk: int = 8192) -> Encoded:
    """Tokenize `ExampleColumns` chunk by chunk into an `Encoded`."""
    import numpy as np

    started = time.perf_counter()
    tokens, lengths = [], []
    for contexts, meals in examples.text_chunks(chunk):
        ids = tokenizer(contexts, meals, truncation="only_first", max_length=MAX_LENGTH,
                        return_attention_mask=False, return_token_type_ids=False)["input_ids"]
        lengths.append(np.fromiter((len(row) for row in ids), dtype=np.int64, count=len(ids)))
        tokens.append(np.fromiter((t for row in ids for t in row), dtype=np.int32, count=int(lengths[-1].sum())))
    offsets = np.zeros(len(examples) + 1, dtype=np.int64)
    if lengths:
        np.cumsum(np.concatenate(lengths), out=offsets[1:])
    return Encoded(np.concatenate(tokens) if tokens else np.zeros(0, np.int32), offsets,
                   np.asarray(examples.labels, dtype=np.int64), time.perf_counter() - started)


def collate(encoded: Encoded, index, pad_id: int):
    """(input_ids, attention_mask, labels) tensors of the examples `index`, padded to the longest."""
    import numpy as np
    import torch

    index = np.asarray(index, dtype=np.int64)
    starts, ends = encoded.offsets[index], encoded.offsets[index + 1]
    ids = np.full((len(index), int((ends - starts).max())), pad_id, dtype=np.int64)
    for row, (start, end) in enumerate(zip(starts.tolist(), ends.tolist())):
        ids[row, :end - start] = encoded.tokens[start:end]
    ids = torch.from_numpy(ids)
    return ids, (ids != pad_id).long(), torch.from_numpy(encoded.labels[index])


def epoch_order(count: int, seed: int, epoch: int) -> list[int]:
    """The example order of one epoch: the same for a seed and an epoch, whatever the processes."""
    order = list(range(count))
    random.Random(seed * 1000 + epoch).shuffle(order)
    return order


def batches(encoded: Encoded, batch_size: int, pad_id: int, shuffle_seed: int | None = None):
    """(input_ids, attention_mask, labels) tensors, padded to the longest in each batch."""
    order = list(range(len(encoded)))
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(order)
    for start in range(0, len(order), batch_size):
        yield collate(encoded, order[start:start + batch_size], pad_id)


def roc_auc(labels: list[int], scores: list[float]) -> float:
    """Area under the ROC curve (rank statistic, ties averaged)."""
    pairs = sorted(zip(scores, labels))
    positives = sum(labels)
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    rank_sum, i = 0.0, 0
    while i < len(pairs):
        j = i
        while j < len(pairs) and pairs[j][0] == pairs[i][0]:
            j += 1
        average_rank = (i + j + 1) / 2
        rank_sum += average_rank * sum(label for _, label in pairs[i:j])
        i = j
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def classification_metrics(labels: list[int], probabilities: list[float]) -> dict:
    eps = 1e-7
    loss = -sum(y * math.log(max(p, eps)) + (1 - y) * math.log(max(1 - p, eps))
                for y, p in zip(labels, probabilities)) / len(labels)
    accuracy = sum((p >= 0.5) == bool(y) for y, p in zip(labels, probabilities)) / len(labels)
    return {"loss": loss, "accuracy": accuracy, "auc": roc_auc(labels, probabilities)}


def predict_proba(model, encoded: Encoded, batch_size: int, pad_id: int, device, index=None) -> list[float]:
    """P(kept) of the examples `index` (default: all), in that order."""
    import torch

    index = list(range(len(encoded))) if index is None else list(index)
    model.eval()
    out: list[float] = []
    with torch.no_grad():
        for start in range(0, len(index), batch_size):
            ids, mask, _ = collate(encoded, index[start:start + batch_size], pad_id)
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            out += torch.softmax(logits.float(), dim=-1)[:, 1].cpu().tolist()
    return out


def keep_rate_baseline(train, val) -> dict:
    """The trivial floor: each recipe's keep rate in training (smoothed towards the mean).
    `train` and `val` are `ExampleColumns`."""
    prior = float(train.labels.mean())
    kept: dict[str, list[int]] = {}
    for recipe_id, label in zip(train.recipe_ids.to_pylist(), train.labels.tolist()):
        counts = kept.setdefault(recipe_id, [0, 0])
        counts[0] += label
        counts[1] += 1
    rate = {r: (k + 5 * prior) / (n + 5) for r, (k, n) in kept.items()}
    metrics = classification_metrics(val.labels.tolist(), [rate.get(r, prior) for r in val.recipe_ids.to_pylist()])
    return {f"baseline_val_{k}": v for k, v in metrics.items()}
