"""Starting SafetyHeadB where a linear probe would end: the pretrained base already separates the decisions.

A linear probe (logistic regression) on the base's pooled states is the classic strong baseline for a
frozen pretrained model, and it is convex: fitting it takes seconds where gradient steps on a CPU take
minutes. ``warm_start_head`` fits it on the training rows' decision states (the standardiser's statistics
from the same states) and copies it into the linear head, so the joint training of LoRA, gates and head
starts from the probe instead of from noise. Off by default; the pretrained recipe turns it on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..core.batching import batches_by_length
from ..core.config import ConfigError
from ..core.schema import LABELS
from ..model.heads import STANDARDIZER_EPS
from ..model.so8t import SO8TModel
from .collate import SafetyCollator


@torch.no_grad()
def decision_states(model: SO8TModel, rows: list[dict], collate: SafetyCollator, batch_size: int = 32,
                    frozen=None, split=None, progress: bool = True) -> np.ndarray:
    """The pooled decision state (N, hidden) of every row, through the cached lower layers when given."""
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    # similar token lengths share a batch (characters are no guide: a Japanese character is about a token, an English
    # one a quarter of one)
    lengths = [frozen.lengths[row["id"]] for row in rows] if frozen is not None else \
        [len(collate.encode(row)[0]) for row in rows]
    chunks, done = [], []
    try:
        batches = tqdm(batches_by_length(lengths, batch_size), desc="probe states for SafetyHeadB's warm start",
                       unit="batch", disable=not progress)
        for indices in batches:
            done += indices
            part = [rows[i] for i in indices]
            batch = collate(part)
            # the pooled state reads the prompt only, and attention is causal: the targets after it change nothing
            width = int(batch["decision_positions"].max()) + 1
            batch["input_ids"], batch["attention_mask"] = batch["input_ids"][:, :width], batch["attention_mask"][:, :width]
            states = None if frozen is None else frozen.batch(part, batch["input_ids"].shape[1]).to(device)
            out = model(batch["input_ids"].to(device), batch["attention_mask"].to(device),
                        decision_positions=batch["decision_positions"].to(device), return_lm_logits=False,
                        states=states, split=split)
            chunks.append(out.pooled.double().cpu().numpy())
    finally:
        model.train(was_training)
    states = np.empty((len(rows), chunks[0].shape[1]))
    states[done] = np.concatenate(chunks)
    return states


@dataclass
class LinearProbe:
    """A multinomial logistic regression on standardised states, in the form SafetyHeadB holds it: the
    standardiser's mean and mean square, then one linear layer (rows in LABELS order)."""

    mean: np.ndarray
    sq_mean: np.ndarray
    coef: np.ndarray
    bias: np.ndarray

    @property
    def scale(self) -> np.ndarray:
        return 1 / np.sqrt(np.clip(self.sq_mean - self.mean**2, 0, None) + STANDARDIZER_EPS)

    def logits(self, states: np.ndarray) -> np.ndarray:
        return ((states - self.mean) * self.scale) @ self.coef.T + self.bias

    def predict(self, states: np.ndarray) -> np.ndarray:
        """Label indices (LABELS order)."""
        return self.logits(states).argmax(-1)


def fit_probe(states: np.ndarray, labels: np.ndarray, class_weights: list[float], regularization: float,
              max_iter: int = 3000) -> LinearProbe:
    """Fit the probe on ``states`` (N, hidden) and label indices, each row weighted by its class's weight;
    ``regularization`` is scikit-learn's C (smaller: stronger). Shared by the warm start and the benchmarks."""
    from sklearn.linear_model import LogisticRegression

    states = np.asarray(states, dtype=np.float64)
    mean, sq_mean = states.mean(0), np.square(states).mean(0)
    probe = LinearProbe(mean, sq_mean, np.zeros((len(LABELS), states.shape[1])), np.zeros(len(LABELS)))
    fitted = LogisticRegression(C=regularization, max_iter=max_iter).fit(
        (states - mean) * probe.scale, labels, sample_weight=np.asarray(class_weights)[labels])
    if len(fitted.classes_) == 2:  # scikit-learn keeps one row for two classes: logit(b) - logit(a)
        probe.coef[fitted.classes_[1]], probe.bias[fitted.classes_[1]] = fitted.coef_[0], fitted.intercept_[0]
    else:
        probe.coef[fitted.classes_], probe.bias[fitted.classes_] = fitted.coef_, fitted.intercept_
    return probe


@torch.no_grad()
def prompt_token_states(model: SO8TModel, rows: list[dict], collate: SafetyCollator, batch_size: int = 32,
                        frozen=None, split=None, progress: bool = True) -> list[torch.Tensor]:
    """Each row's unpooled prompt states at the head's read layers, (prompt tokens, width) float32."""
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    lengths = [frozen.lengths[row["id"]] for row in rows] if frozen is not None else \
        [len(collate.encode(row)[0]) for row in rows]
    out: list[torch.Tensor] = [torch.empty(0)] * len(rows)
    try:
        for indices in tqdm(batches_by_length(lengths, batch_size), desc="token states for SafetyHeadB's warm start",
                            unit="batch", disable=not progress):
            part = [rows[i] for i in indices]
            batch = collate(part)
            width = int(batch["decision_positions"].max()) + 1
            ids, mask = batch["input_ids"][:, :width], batch["attention_mask"][:, :width]
            states = None if frozen is None else frozen.batch(part, width).to(device)
            tokens, keep = model.prompt_tokens(ids.to(device), mask.to(device), batch["decision_positions"].to(device),
                                               states=states, split=split)
            for j, i in enumerate(indices):
                out[i] = tokens[j][keep[j]].float().cpu()
    finally:
        model.train(was_training)
    return out


def cached_prompt_tokens(model: SO8TModel, rows: list[dict], collate: SafetyCollator,
                         frozen) -> tuple[list[torch.Tensor], np.ndarray, torch.Tensor]:
    """The prompt token states a head reading the cached layer sees, straight from the cache and without the
    shared prefix: each row's own prompt tokens, whether the prefix comes before them, and the prefix's states
    (cast to the model's dtype and back, as the layers above would read them)."""
    dtype = model.causal_lm.dtype
    tokens, prefixed = [], []
    for row in rows:
        prompt_length = collate.encode(row)[2] + 1
        own = frozen.row_states(row["id"], prompt_length, with_prefix=False)
        shared = len(own) < prompt_length
        if not len(own):  # a prompt no longer than the prefix: keep it whole
            own, shared = frozen.row_states(row["id"], prompt_length), False
        tokens.append(own.to(dtype).float())
        prefixed.append(shared)
    return tokens, np.array(prefixed), frozen.prefix.to(dtype).float()


def token_moments(tokens: list[torch.Tensor], chunk_rows: int = 256, prefix: torch.Tensor | None = None,
                  prefix_rows: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean and mean square over every token of every row, summed in float64 a chunk of rows at a time: the
    whole training split's token states in float64 at once would need several times their own memory. ``prefix``
    (P, width) counts ``prefix_rows`` times: the shared prefix of rows whose lists leave it out."""
    total = torch.zeros(tokens[0].shape[-1], dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    count = 0
    for start in range(0, len(tokens), chunk_rows):
        chunk = torch.cat(tokens[start:start + chunk_rows]).double()
        total += chunk.sum(0)
        total_sq += chunk.square().sum(0)
        count += chunk.shape[0]
    if prefix is not None and prefix_rows:
        total += prefix.double().sum(0) * prefix_rows
        total_sq += prefix.double().square().sum(0) * prefix_rows
        count += prefix.shape[0] * prefix_rows
    return total / count, total_sq / count


def fit_token_head(head, tokens: list[torch.Tensor], labels: np.ndarray, class_weights: list[float], epochs: int,
                   lr: float = 1e-3, weight_decay: float = 1e-2, batch_size: int = 32, seed: int = 0,
                   progress: bool = True, prefix: torch.Tensor | None = None,
                   prefixed: np.ndarray | None = None) -> float:
    """Train a max-pooling SafetyHeadB on fixed token states (AdamW, batches of similar length, the class weights),
    its standardiser set from all the tokens first; returns the accuracy on those rows.

    ``prefix`` (P, width): the states of a prefix that the rows marked in ``prefixed`` share and leave out of their
    lists. The maximum over a row's tokens is the larger of the prefix's maximum and its own, so the prefix runs
    through the head once per batch instead of once per row (in training, its dropout is then shared by the batch)."""
    from tqdm.auto import tqdm

    generator = np.random.default_rng(seed)
    torch.manual_seed(seed)
    prefixed_rows = torch.zeros(len(tokens), dtype=torch.bool) if prefix is None else \
        torch.as_tensor(np.asarray(prefixed, dtype=bool))
    if head.standardizer is not None:
        mean, sq_mean = token_moments(tokens, prefix=prefix, prefix_rows=int(prefixed_rows.sum()))
        with torch.no_grad():
            head.standardizer.mean.copy_(mean)
            head.standardizer.sq_mean.copy_(sq_mean)
            head.standardizer.count.fill_(len(tokens))
    was_training = head.training
    optimizer = torch.optim.AdamW([p for p in head.parameters() if p.requires_grad], lr, weight_decay=weight_decay)
    weight = torch.tensor(class_weights, dtype=torch.float32)
    target = torch.from_numpy(np.asarray(labels))
    lengths = [len(t) for t in tokens]

    def features(indices):
        x = torch.nn.utils.rnn.pad_sequence([tokens[i] for i in indices], batch_first=True)
        size = torch.tensor([lengths[i] for i in indices])
        pooled = head.token_features(x, torch.arange(x.shape[1])[None, :] < size[:, None])
        if prefix is None:
            return pooled
        shared = head.token_features(prefix[None], torch.ones(1, len(prefix), dtype=torch.bool))
        return torch.where(prefixed_rows[indices][:, None], torch.maximum(pooled, shared), pooled)

    try:
        for _ in tqdm(range(epochs), desc="SafetyHeadB warm start", unit="epoch", disable=not progress):
            head.train()
            if head.standardizer is not None:
                head.standardizer.eval()  # its statistics are the whole sample's, not a running estimate
            # similar lengths share a batch (little padding), shuffled within a few tokens and in batch order
            batches = batches_by_length([n + generator.uniform(0, 8) for n in lengths], batch_size)
            for b in generator.permutation(len(batches)):
                loss = torch.nn.functional.cross_entropy(head(features(batches[b])), target[batches[b]],
                                                         weight=weight)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        head.eval()
        correct = 0
        with torch.no_grad():
            for indices in batches_by_length(lengths, 64):
                correct += int((head(features(indices)).argmax(-1) == target[indices]).sum())
    finally:
        head.train(was_training)
    return correct / len(tokens)


def warm_start_head(model: SO8TModel, rows: list[dict], collate: SafetyCollator, class_weights: list[float],
                    regularization: float = 0.3, batch_size: int = 32, frozen=None, split=None,
                    epochs: int = 10, seed: int = 0) -> float:
    """Fit ``fit_probe`` on the decision states of ``rows`` and load it into SafetyHeadB (linear heads), or, for a
    max-pooling head, ``fit_token_head`` for ``epochs`` on the rows' token states, its batch order drawn from ``seed``
    (the run's ``training.seed``, so runs of different seeds differ here too); returns the accuracy on those rows."""
    head = model.safety_head
    if head.pools_tokens:
        labels = np.array([LABELS.index(r["label"]) for r in rows])
        if frozen is not None and frozen.prefix_length and model.read_layers == [frozen.k]:
            tokens, prefixed, prefix = cached_prompt_tokens(model, rows, collate, frozen)
            return fit_token_head(head, tokens, labels, class_weights, epochs, seed=seed, prefix=prefix,
                                  prefixed=prefixed)
        tokens = prompt_token_states(model, rows, collate, batch_size, frozen, split)
        return fit_token_head(head, tokens, labels, class_weights, epochs, seed=seed)
    linears = [m for m in head.net if isinstance(m, torch.nn.Linear)]
    if len(linears) != 1:
        raise ConfigError("training.head_warm_start needs a linear SafetyHeadB (model.head.hidden_units: 0) or a "
                          "max-pooling one (model.head.pooling: max); or set training.head_warm_start: false")
    states = decision_states(model, rows, collate, batch_size, frozen, split)
    labels = np.array([LABELS.index(r["label"]) for r in rows])
    probe = fit_probe(states, labels, class_weights, regularization, max_iter=2000)
    coef, bias = probe.coef, probe.bias
    with torch.no_grad():
        if head.standardizer is not None:
            head.standardizer.mean.copy_(torch.from_numpy(probe.mean))
            head.standardizer.sq_mean.copy_(torch.from_numpy(probe.sq_mean))
            head.standardizer.count.fill_(len(rows))
        else:  # no standardiser: fold the scaling into the weights
            bias = bias - coef @ (probe.mean * probe.scale)
            coef = coef * probe.scale
        linears[0].weight.copy_(torch.from_numpy(coef).to(linears[0].weight.dtype))
        linears[0].bias.copy_(torch.from_numpy(bias).to(linears[0].bias.dtype))
    return float((probe.predict(states) == labels).mean())
