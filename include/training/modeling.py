"""The acceptance classifier: tokenizer, model, training loop, metrics.

`tiny` builds a small DistilBERT-style model from a config with a WordPiece tokenizer trained
on our own text (no hub download, ever); any local Hugging Face checkpoint directory works as
a base on a GPU run, optionally with LoRA (merged before saving, so the saved directory is a
plain transformers model).
"""
from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from include.training.examples import Example

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


def train_tokenizer(texts: Iterable[str], vocab_size: int = 3000):
    """A WordPiece tokenizer whose vocabulary is learned from our own examples, deterministically.

    The vocabulary is the special tokens, every character seen (alone and as a `##`
    continuation, so unseen words still split into known pieces), then the most frequent
    words (ties by spelling). The `tokenizers` WordPiece trainer was not used because its
    vocabulary varied between identical runs, which broke seed determinism.
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
    vocab = {token: index for index, token in enumerate(pieces + words[:max(0, vocab_size - len(pieces))])}

    tokenizer = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                   model_max_length=MAX_LENGTH)


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
                                                 lora_dropout=0.05, target_modules=lora.get("target_modules")))
    return model, tokenizer


@dataclass
class Encoded:
    input_ids: list[list[int]]
    labels: list[int]
    seconds: float = 0.0


def encode(tokenizer, examples: list[Example]) -> Encoded:
    started = time.perf_counter()
    batch = tokenizer([e.context for e in examples], [e.meal for e in examples], truncation="only_first",
                      max_length=MAX_LENGTH)
    return Encoded(batch["input_ids"], [e.label for e in examples], time.perf_counter() - started)


def batches(encoded: Encoded, batch_size: int, pad_id: int, shuffle_seed: int | None = None):
    """(input_ids, attention_mask, labels) tensors, padded to the longest in each batch."""
    import torch

    order = list(range(len(encoded.labels)))
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(order)
    for start in range(0, len(order), batch_size):
        index = order[start:start + batch_size]
        width = max(len(encoded.input_ids[i]) for i in index)
        ids = torch.full((len(index), width), pad_id, dtype=torch.long)
        for row, i in enumerate(index):
            ids[row, :len(encoded.input_ids[i])] = torch.tensor(encoded.input_ids[i])
        yield ids, (ids != pad_id).long(), torch.tensor([encoded.labels[i] for i in index])


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


def predict_proba(model, encoded: Encoded, batch_size: int, pad_id: int, device: str) -> list[float]:
    import torch

    model.eval()
    out: list[float] = []
    with torch.no_grad():
        for ids, mask, _ in batches(encoded, batch_size, pad_id):
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            out += torch.softmax(logits, dim=-1)[:, 1].cpu().tolist()
    return out


@dataclass
class History:
    epochs: list[dict] = field(default_factory=list)
    train_examples_per_s: float = 0.0


def fit(model, train: Encoded, val: Encoded, *, epochs: int, learning_rate: float, batch_size: int, seed: int,
        pad_id: int, device: str, on_epoch: Callable[[int, dict], None] | None = None) -> History:
    """AdamW with linear warm-up/decay; after each epoch, validation metrics go to `on_epoch`."""
    import torch

    model.to(device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=learning_rate,
                                  weight_decay=0.01)
    steps = epochs * math.ceil(len(train.labels) / batch_size)
    warmup = max(1, steps // 20)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / warmup, max(0.0, (steps - step) / max(1, steps - warmup))))
    history, seen, busy = History(), 0, 0.0
    for epoch in range(epochs):
        model.train()
        total, count, started = 0.0, 0, time.perf_counter()
        for ids, mask, labels in batches(train, batch_size, pad_id, shuffle_seed=seed * 1000 + epoch):
            loss = model(input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device)).loss
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(labels)
            count += len(labels)
        busy += time.perf_counter() - started
        seen += count
        val_metrics = classification_metrics(val.labels, predict_proba(model, val, batch_size * 4, pad_id, device))
        metrics = {"train_loss": total / count, "val_loss": val_metrics["loss"],
                   "val_accuracy": val_metrics["accuracy"], "val_auc": val_metrics["auc"]}
        history.epochs.append(metrics)
        if on_epoch:
            on_epoch(epoch, metrics)
    history.train_examples_per_s = seen / busy if busy else 0.0
    return history


def keep_rate_baseline(train: list[Example], val: list[Example]) -> dict:
    """The trivial floor: each recipe's keep rate in training (smoothed towards the mean)."""
    prior = sum(e.label for e in train) / len(train)
    kept: dict[str, list[int]] = {}
    for e in train:
        kept.setdefault(e.recipe_id, []).append(e.label)
    rate = {r: (sum(v) + 5 * prior) / (len(v) + 5) for r, v in kept.items()}
    metrics = classification_metrics([e.label for e in val], [rate.get(e.recipe_id, prior) for e in val])
    return {f"baseline_val_{k}": v for k, v in metrics.items()}
