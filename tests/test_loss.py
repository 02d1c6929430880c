"""The training loss: log-Q corrected sampled softmax, accidental hits, full softmax."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recspark.train.config import TrainConfig
from recspark.train.model import (
    ItemFeatures,
    ModelShape,
    TwoTower,
    batch_loss,
    expected_log_q,
    negatives_for,
    softmax_loss,
)

TEXT_DIM = 5
N_ITEMS = 6
HALF_LIFE = 2.0
TEMPERATURE = 0.5


def _model_and_feats() -> tuple[TwoTower, ItemFeatures]:
    torch.manual_seed(3)
    shape = ModelShape(
        TEXT_DIM,
        N_ITEMS,
        2,
        dim=4,
        item_id_dropout=0.3,
        recency_half_life=HALF_LIFE,
        temperature=TEMPERATURE,
    )
    model = TwoTower(shape).eval()  # eval: no id dropout, so the vectors are fixed
    g = torch.Generator().manual_seed(5)
    feats = ItemFeatures(
        torch.randn(N_ITEMS, TEXT_DIM, generator=g),
        torch.arange(1, N_ITEMS + 1),
        torch.tensor([1, 1, 1, 2, 2, 2]),
    )
    return model, feats


# A tiny batch with accidental hits: item 3 is row 0's target and in row 1's history; item 5 is
# row 1's target and in row 2's history; the sampled negative 0 is in row 1's history; item 3
# is both a target (twice) and a sampled negative (it is one candidate).
HISTORY = torch.tensor([[-1, 1, 2], [0, 3, 4], [-1, -1, 5]])
TARGET = torch.tensor([3, 5, 3])
WEIGHT = torch.tensor([1.0, 2.0, 0.5])
NEGATIVES = torch.tensor([0, 3, 0])
PROB = torch.tensor([0.1, 0.05, 0.05, 0.4, 0.1, 0.3])


def test_softmax_loss_matches_a_hand_computation() -> None:
    users = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    cands = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    label = torch.tensor([0, 2])
    hits = torch.tensor([[False, True, False], [True, False, True]])  # row 1's label: kept
    log_q = torch.tensor([0.0, math.log(2.0), math.log(4.0)])
    loss = softmax_loss(
        users, cands, label, torch.tensor([1.0, 3.0]), 0.5, hit_mask=hits, log_q=log_q
    )
    # Row 0: logits [2, -inf, 2 - log 4]; row 1: [-inf, 2 - log 2, 2 - log 4].
    r0 = -2.0 + math.log(math.exp(2.0) + math.exp(2.0 - math.log(4.0)))
    r1 = -(2.0 - math.log(4.0)) + math.log(
        math.exp(2.0 - math.log(2.0)) + math.exp(2.0 - math.log(4.0))
    )
    assert float(loss) == pytest.approx((1.0 * r0 + 3.0 * r1) / 4.0, rel=1e-6)


def test_corrected_sampled_loss_equals_a_numpy_reference_with_accidental_hits() -> None:
    model, feats = _model_and_feats()
    loss = batch_loss(model, feats, HISTORY, TARGET, WEIGHT, NEGATIVES, target_prob=PROB)
    with torch.no_grad():
        vecs = model.items(feats, torch.arange(N_ITEMS)).numpy().astype(np.float64)
    cands = [0, 3, 5]  # distinct targets and negatives
    expected_count = 3 * PROB.numpy().astype(np.float64) + 3 / N_ITEMS  # 3 rows, 3 negatives
    total = 0.0
    for hist, t, w in zip(HISTORY.tolist(), TARGET.tolist(), WEIGHT.tolist(), strict=True):
        valid = [(pos, i) for pos, i in enumerate(hist) if i >= 0]
        rw = np.array([0.5 ** ((len(hist) - 1 - pos) / HALF_LIFE) for pos, _ in valid])
        user = (rw[:, None] * vecs[[i for _, i in valid]]).sum(0) / rw.sum()
        logits = {}
        for c in cands:
            if c != t and c in hist:
                continue  # accidental hit: removed
            logits[c] = user @ vecs[c] / TEMPERATURE - math.log(expected_count[c])
        lse = math.log(sum(math.exp(v) for v in logits.values()))
        total += w * (lse - logits[t])
    assert float(loss) == pytest.approx(total / float(WEIGHT.sum()), rel=1e-5)
    # The correction and the removal both matter: the uncorrected loss differs.
    plain = batch_loss(model, feats, HISTORY, TARGET, WEIGHT, NEGATIVES)
    assert abs(float(plain) - float(loss)) > 1e-3


def test_full_softmax_equals_sampled_softmax_over_every_item() -> None:
    model, feats = _model_and_feats()
    every = torch.arange(N_ITEMS)
    full = batch_loss(model, feats, HISTORY, TARGET, WEIGHT, full_softmax=True)
    sampled = batch_loss(model, feats, HISTORY, TARGET, WEIGHT, every)
    assert float(full) == pytest.approx(float(sampled), rel=1e-6)
    # Uniform sampling probabilities shift every logit alike: the same loss again.
    uniform = torch.full((N_ITEMS,), 1.0 / N_ITEMS)
    corrected = batch_loss(model, feats, HISTORY, TARGET, WEIGHT, every, target_prob=uniform)
    assert float(corrected) == pytest.approx(float(full), rel=1e-6)
    # Items outside the candidate pool (no training interactions) are no negatives.
    known = torch.tensor([True, True, True, True, True, False])
    only_known = batch_loss(
        model, feats, HISTORY, TARGET, WEIGHT, full_softmax=True, candidates=known
    )
    assert float(only_known) < float(full)


def test_zero_weight_batch_gives_zero_loss_and_gradient_in_both_modes() -> None:
    model, feats = _model_and_feats()
    model.train()
    known = torch.tensor([False, True, True, True, True, True])  # the target 0 is unknown
    hist, target = torch.tensor([[-1, -1, 0]]), torch.tensor([0])
    for full in (True, False):
        model.zero_grad()
        loss = batch_loss(
            model,
            feats,
            hist,
            target,
            torch.zeros(1),
            None if full else torch.tensor([1, 2]),
            full_softmax=full,
            candidates=known,
            target_prob=PROB,
        )
        loss.backward()
        assert float(loss) == 0.0
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert all(bool(torch.isfinite(g).all()) and float(g.abs().sum()) == 0.0 for g in grads)


def test_expected_log_q_and_negative_count() -> None:
    lq = expected_log_q(torch.tensor([0.5, 0.5, 0.0]), 4, 2, 4)
    assert torch.allclose(lq, torch.log(torch.tensor([2.5, 2.5, 0.5])))
    assert negatives_for(1000, 0.1, 64, 2048) == 100
    assert negatives_for(100, 0.1, 64, 2048) == 64
    assert negatives_for(50, 0.1, 64, 2048) == 50  # never more than the catalog
    assert negatives_for(10**7, 0.1, 64, 2048) == 2048


def test_loss_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="negatives_min"):
        TrainConfig(negatives_min=100, negatives_max=10)
    with pytest.raises(ValueError, match="negatives_fraction"):
        TrainConfig(negatives_fraction=1.5)
    with pytest.raises(ValueError, match="temperature"):
        TrainConfig(temperature=0.0)
    with pytest.raises(ValueError, match="full_softmax_max_items"):
        TrainConfig(full_softmax_max_items=-1)


def _learn_half_life(target_follows: str) -> float:
    """Train only the half-life (fixed item vectors: two groups of 4 items) on histories of 6
    items, the newest two of one group and the older four of the other; the target is an item
    of the ``newest`` or of the ``older`` group. The learned half-life (started at 2)."""
    torch.manual_seed(0)
    shape = ModelShape(
        2,
        8,
        1,
        dim=2,
        item_id_dropout=0.0,
        recency_half_life=2.0,
        temperature=0.1,
        learn_recency=True,
    )
    model = TwoTower(shape)
    group = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    vecs = torch.nn.functional.one_hot(group, 2).to(torch.float32)
    rng = np.random.default_rng(1)
    rows, targets = [], []
    for _ in range(64):
        old, new = (0, 1) if rng.random() < 0.5 else (1, 0)
        pick = rng.permutation(4)
        hist = [4 * old + int(pick[i % 2]) for i in range(4)] + [4 * new + int(pick[0])] * 2
        rows.append(hist)
        follows = new if target_follows == "newest" else old
        targets.append(4 * follows + int(pick[3]))
    hist_t, target_t = torch.tensor(rows), torch.tensor(targets)
    opt = torch.optim.Adam([model.log_half_life], lr=0.05)
    for _ in range(60):
        opt.zero_grad()
        users = model.user_tower(vecs[hist_t], hist_t >= 0)
        loss = softmax_loss(users, vecs, target_t, torch.ones(64), shape.temperature)
        loss.backward()
        opt.step()
    return float(model.half_life())


def test_a_learned_half_life_shortens_when_the_newest_events_predict_and_grows_otherwise() -> None:
    assert _learn_half_life("newest") < 1.0
    assert _learn_half_life("older") > 4.0


def test_a_fixed_half_life_is_state_but_not_a_parameter_and_old_weights_still_load() -> None:
    fixed = TwoTower(ModelShape(TEXT_DIM, N_ITEMS, 2, dim=4, recency_half_life=3.0))
    names = {n for n, _ in fixed.named_parameters()}
    assert "log_half_life" not in names and "log_half_life" in fixed.state_dict()
    assert float(fixed.half_life()) == pytest.approx(3.0)
    learned = TwoTower(
        ModelShape(TEXT_DIM, N_ITEMS, 2, dim=4, recency_half_life=3.0, learn_recency=True)
    )
    assert "log_half_life" in {n for n, _ in learned.named_parameters()}
    # A model saved before the half-life was state: its shape's value is kept.
    old = {k: v for k, v in fixed.state_dict().items() if k != "log_half_life"}
    learned.load_weights(old)
    assert float(learned.half_life()) == pytest.approx(3.0)
