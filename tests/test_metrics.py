import numpy as np
import pytest
from sklearn.metrics import (accuracy_score, average_precision_score, confusion_matrix as sk_confusion, f1_score,
                             label_ranking_average_precision_score, precision_recall_curve, top_k_accuracy_score)

from ray_sticker.train.metrics import (RECALL_LEVELS, classification_metrics, confusion_matrix, pr_curve,
                                       ranking_metrics, retrieval_query_stats, summarize_retrieval)


@pytest.mark.parametrize("seed", range(8))
def test_classification_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    n_classes = int(rng.integers(2, 6))
    y_true = rng.integers(0, n_classes, size=int(rng.integers(5, 200)))
    y_pred = np.where(rng.random(y_true.size) < 0.6, y_true, rng.integers(0, n_classes, size=y_true.size))
    m = classification_metrics(y_true, y_pred, n_classes)
    assert m["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert m["weighted_f1"] == pytest.approx(f1_score(y_true, y_pred, average="weighted", zero_division=0))
    assert m["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro", zero_division=0))
    np.testing.assert_array_equal(confusion_matrix(y_true, y_pred, n_classes),
                                  sk_confusion(y_true, y_pred, labels=list(range(n_classes))))


def test_hand_computed_values():
    # class 0: tp=1 fp=1 fn=1 -> F1 0.5; class 1: tp=2 fp=1 fn=1 -> F1 2/3; class 2 absent.
    y_true = np.array([0, 0, 1, 1, 1])
    y_pred = np.array([0, 1, 1, 1, 0])
    m = classification_metrics(y_true, y_pred, 3)
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["macro_f1"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert m["weighted_f1"] == pytest.approx((2 * 0.5 + 3 * 2 / 3) / 5)


def test_empty_is_an_error():
    with pytest.raises(ValueError, match="no examples"):
        classification_metrics(np.array([]), np.array([]), 3)


# ------------------------------------------------------------------ ranking among candidates


def test_ranking_hand_computed():
    # Query 0: the positive (0.5) is beaten by 0.9 -> rank 2. Query 1: a three-way tie -> rank 3.
    scores = np.array([[0.1, 0.9, 0.5], [0.3, 0.3, 0.3]])
    m = ranking_metrics(scores, np.array([2, 0]), ks=(1, 2))
    assert m == pytest.approx({"map": (1 / 2 + 1 / 3) / 2, "r3@1": 0.0, "r3@2": 0.5})


def test_ranking_constant_scorer_is_the_worst_case():
    m = ranking_metrics(np.zeros((6, 10)), np.arange(6))
    assert m == pytest.approx({"map": 0.1, "r10@1": 0.0, "r10@2": 0.0, "r10@5": 0.0})


@pytest.mark.parametrize("seed", range(5))
def test_ranking_matches_direct_computation_and_sklearn(seed):
    rng = np.random.default_rng(seed)
    q, k = 40, 10
    target = rng.integers(0, k, size=q)
    tied = rng.integers(0, 4, size=(q, k)).astype(np.float64)  # many ties
    distinct = rng.normal(size=(q, k))
    onehot = np.eye(k, dtype=bool)[target]
    for scores in (tied, distinct):
        m = ranking_metrics(scores, target)
        ranks = [sum(s >= row[t] for s in row) for row, t in zip(scores, target)]
        assert m["map"] == pytest.approx(np.mean([1 / r for r in ranks]), abs=1e-12)
        # With one relevant label, LRAP is 1/rank with ties counted against it.
        assert m["map"] == pytest.approx(label_ranking_average_precision_score(onehot, scores), abs=1e-12)
        for kk in (1, 2, 5):
            assert m[f"r10@{kk}"] == pytest.approx(np.mean([r <= kk for r in ranks]), abs=1e-12)
    for kk in (1, 2, 5):  # sklearn breaks ties its own way: compare without ties
        assert ranking_metrics(distinct, target)[f"r10@{kk}"] == pytest.approx(
            top_k_accuracy_score(target, distinct, k=kk, labels=np.arange(k)), abs=1e-12)


def test_ranking_rejects_bad_shapes_and_no_examples():
    with pytest.raises(ValueError, match="scores must be"):
        ranking_metrics(np.zeros((3, 4)), np.zeros(2, dtype=int))
    with pytest.raises(ValueError, match="no examples"):
        ranking_metrics(np.zeros((0, 4)), np.zeros(0, dtype=int))


# ------------------------------------------------------------------ retrieval from the whole pool


def test_retrieval_hand_computed():
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5]])
    relevant = np.array([[True, False, False, True, False]])
    st = retrieval_query_stats(scores, relevant, ns=(1, 3, 5))
    np.testing.assert_allclose([st["hit@1"][0], st["hit@3"][0], st["hit@5"][0]], [1, 1, 1])
    np.testing.assert_allclose([st["precision@1"][0], st["precision@3"][0], st["precision@5"][0]],
                               [1, 1 / 3, 2 / 5])
    assert st["ap"][0] == pytest.approx((1 / 1 + 2 / 4) / 2)
    # PR points (recall, precision): (.5, 1), (.5, .5), (.5, 1/3), (1, .5), (1, .4).
    np.testing.assert_allclose(st["interp_precision"][0], [1.0] * 6 + [0.5] * 5)


def test_retrieval_ties_count_against_relevant_items():
    scores = np.zeros((1, 5))
    relevant = np.array([[False, True, False, False, False]])
    st = retrieval_query_stats(scores, relevant, ns=(1, 4, 5))
    assert (st["hit@1"][0], st["hit@4"][0], st["hit@5"][0]) == (0.0, 0.0, 1.0)
    assert st["precision@5"][0] == pytest.approx(0.2)
    assert st["ap"][0] == pytest.approx(0.2)  # one threshold: all five retrieved at once
    np.testing.assert_allclose(st["interp_precision"][0], np.full(11, 0.2))


def _interpolated_precision(rel: np.ndarray, score: np.ndarray) -> np.ndarray:
    precision, recall, _ = precision_recall_curve(rel, score)
    precision, recall = precision[:-1], recall[:-1]  # drop sklearn's appended (recall 0, precision 1)
    return np.array([precision[recall >= level - 1e-12].max() for level in RECALL_LEVELS])


@pytest.mark.parametrize("seed", range(5))
def test_retrieval_matches_direct_computation_and_sklearn(seed):
    rng = np.random.default_rng(seed)
    q, n = 30, 40
    scores = rng.integers(0, 6, size=(q, n)).astype(np.float64) if seed % 2 else rng.normal(size=(q, n))
    relevant = rng.random((q, n)) < 0.15
    relevant[0] = False  # one query with nothing relevant
    relevant[1, 0] = True
    st = retrieval_query_stats(scores, relevant, ns=(1, 3, 5, 10))
    for i in range(q):
        # Ties broken against relevant items: sort by (-score, relevant).
        order = sorted(range(n), key=lambda j: (-scores[i, j], relevant[i, j]))
        ranked = relevant[i, order]
        for k in (1, 3, 5, 10):
            assert st[f"hit@{k}"][i] == float(ranked[:k].any())
            assert st[f"precision@{k}"][i] == pytest.approx(ranked[:k].sum() / k, abs=1e-12)
        if relevant[i].any():
            assert st["ap"][i] == pytest.approx(average_precision_score(relevant[i], scores[i]), abs=1e-12)
            np.testing.assert_allclose(st["interp_precision"][i], _interpolated_precision(relevant[i], scores[i]),
                                       atol=1e-12)
        else:
            assert np.isnan(st["ap"][i]) and np.isnan(st["interp_precision"][i]).all()


def test_queries_without_relevant_items():
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.4]])
    relevant = np.array([[True, False, False], [False, False, False]])
    st = retrieval_query_stats(scores, relevant, ns=(1, 3))
    summary = summarize_retrieval(st)
    # Counted as misses in the hit rate and precision, left out of mAP and the PR curve.
    assert summary == pytest.approx({"p@1": 0.5, "precision@1": 0.5, "p@3": 0.5, "precision@3": 1 / 6,
                                     "map": 1.0, "queries": 2.0, "queries_without_relevant": 1.0})
    recall, precision = pr_curve(st)
    np.testing.assert_allclose(recall, np.linspace(0, 1, 11))
    np.testing.assert_allclose(precision, np.ones(11))
    none = retrieval_query_stats(scores, np.zeros_like(relevant))
    assert np.isnan(summarize_retrieval(none)["map"])
    with pytest.raises(ValueError, match="no query has a relevant item"):
        pr_curve(none)


def test_retrieval_stats_combine_across_ranks():
    """Per-query arrays computed on shards and concatenated give the metrics of the whole set."""
    rng = np.random.default_rng(7)
    scores, relevant = rng.normal(size=(20, 25)), rng.random((20, 25)) < 0.2
    whole = retrieval_query_stats(scores, relevant)
    shards = [retrieval_query_stats(scores[i::3], relevant[i::3]) for i in range(3)]
    shards.append(retrieval_query_stats(scores[:0], relevant[:0]))  # a rank with no queries
    gathered = {k: np.concatenate([s[k] for s in shards]) for k in whole}
    assert summarize_retrieval(gathered) == pytest.approx(summarize_retrieval(whole), nan_ok=True)
    np.testing.assert_allclose(pr_curve(gathered)[1], pr_curve(whole)[1])


def test_summarize_reports_int_ra_keys():
    st = retrieval_query_stats(np.eye(4), np.eye(4, dtype=bool))
    summary = summarize_retrieval(st)
    assert summary == pytest.approx({"p@1": 1.0, "precision@1": 1.0, "p@3": 1.0, "precision@3": 1 / 3,
                                     "p@5": 1.0, "precision@5": 1 / 5, "map": 1.0, "queries": 4.0,
                                     "queries_without_relevant": 0.0})
    with pytest.raises(ValueError, match="both be"):
        retrieval_query_stats(np.zeros((2, 3)), np.zeros((2, 4), dtype=bool))


def test_joint_heads_get_a_mean_over_heads():
    from ray_sticker.train.evaluation import compute_metrics

    full = {
        "rows": np.array([4]), "loss_sum": np.array([2.0]),
        "label_sentiment": np.array([0, 1, 2, 0]), "pred_sentiment": np.array([0, 1, 2, 1]),  # 3/4
        "label_intent": np.array([0, 1, 0, 1]), "pred_intent": np.array([0, 0, 0, 0]),  # 2/4
    }
    metrics, _ = compute_metrics(full, {"sentiment": 3, "intent": 2})
    assert metrics["accuracy"] == metrics["sentiment_accuracy"] == 0.75
    assert metrics["mean_accuracy"] == pytest.approx((0.75 + 0.5) / 2)
    expected_f1 = (f1_score(full["label_sentiment"], full["pred_sentiment"], average="weighted")
                   + f1_score(full["label_intent"], full["pred_intent"], average="weighted", zero_division=0)) / 2
    assert metrics["mean_weighted_f1"] == pytest.approx(expected_f1)
    single, _ = compute_metrics({k: v for k, v in full.items() if "intent" not in k}, {"sentiment": 3})
    assert "mean_accuracy" not in single


def test_pool_relevance_follows_the_intention_annotated_for_the_pair():
    """Int-RA: the query's intention is its (conversation, sticker) pair's annotation, which
    may differ from the gold sticker's majority intention; the gold sticker is relevant."""
    import torch

    from ray_sticker.train.evaluation import Evaluation

    acc = Evaluation({}, select=True, pool_relevance=np.array([0, 0, 1, 1, 2]))
    batch = {"target": torch.tensor([0]), "candidate_idx": torch.tensor([[3, 0]]), "label_intent": torch.tensor([0])}
    acc.add_pool(batch, torch.tensor([[0.9, 0.1, 0.8, 0.2, 0.0]]))  # ranks: 0, 2, 3, 1, 4
    stats = acc.query_stats[0]
    assert stats["hit@1"][0] == 1  # sticker 0 has the annotated intention 0
    assert stats["ap"][0] == pytest.approx((1 / 1 + 2 / 3 + 3 / 4) / 3)  # relevant: 0, 1 and the gold 3
    without = {k: v for k, v in batch.items() if k != "label_intent"}  # no annotation: the gold sticker's
    acc.add_pool(without, torch.tensor([[0.9, 0.1, 0.8, 0.2, 0.0]]))
    assert acc.query_stats[1]["hit@1"][0] == 0 and acc.query_stats[1]["ap"][0] == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_metrics_per_group_match_sklearn_on_each_group():
    """data.eval_by (M2SA: per language): accuracy / weighted-F1 / macro-F1 of each group's rows,
    as the official code computes macro-F1 on each language's test set."""
    import torch

    from ray_sticker.data.pipeline import GROUP_BYTES, encode_texts
    from ray_sticker.train.evaluation import Evaluation, compute_metrics
    from ray_sticker.train.metrics import gather_arrays

    rng = np.random.default_rng(0)
    groups = np.array(rng.choice(["de", "es", "pt-BR", ""], size=120), dtype=object)
    labels = rng.integers(0, 3, size=120)
    labels[:5] = -1  # no label for this head: left out, per group too
    preds = np.where(rng.random(120) < 0.6, labels, rng.integers(0, 3, size=120))

    class Out:  # what a model returns
        def __init__(self, logits):
            self.logits, self.predictions, self.unparsed, self.scores = {"sentiment": logits}, {}, None, None
            self.loss = torch.tensor(0.0)

    acc = Evaluation({"sentiment": 3}, select=False, grouped=True)
    for i in range(0, 120, 32):  # batches as the loop sees them
        sl = slice(i, i + 32)
        batch = {"label_sentiment": torch.tensor(labels[sl]),
                 "group_bytes": torch.tensor(encode_texts(list(groups[sl]), GROUP_BYTES))}
        acc.add(batch, Out(torch.nn.functional.one_hot(torch.tensor(preds[sl]).clamp(min=0), 3).float()))
    metrics, _ = compute_metrics(gather_arrays(acc.local_arrays()), {"sentiment": 3})
    keep = labels >= 0
    for value, name in (("de", "de"), ("es", "es"), ("pt-BR", "pt-BR"), ("", "missing")):
        rows = keep & (groups == value)
        y, p = labels[rows], preds[rows]
        assert metrics[f"sentiment_examples_{name}"] == metrics[f"examples_{name}"] == rows.sum()
        assert metrics[f"macro_f1_{name}"] == pytest.approx(f1_score(y, p, average="macro", zero_division=0))
        assert metrics[f"sentiment_weighted_f1_{name}"] == pytest.approx(
            f1_score(y, p, average="weighted", zero_division=0))
        assert metrics[f"accuracy_{name}"] == pytest.approx(accuracy_score(y, p))
    assert metrics["macro_f1"] == pytest.approx(f1_score(labels[keep], preds[keep], average="macro"))
    # A rank that saw no rows still sends (empty) group arrays, so the gather lines up.
    assert Evaluation({"sentiment": 3}, select=False, grouped=True).local_arrays()["group_sentiment"].size == 0


def test_groups_that_name_the_same_metric_are_an_error():
    from ray_sticker.data.pipeline import DataQualityError
    from ray_sticker.train.evaluation import compute_metrics

    full = {"rows": np.array([2]), "loss_sum": np.array([0.0]), "label_sentiment": np.array([0, 1]),
            "pred_sentiment": np.array([0, 1]), "group_sentiment": np.array(["pt BR", "pt/BR"], dtype=object)}
    with pytest.raises(DataQualityError, match="'pt BR' and 'pt/BR' both name metrics '_pt_BR'"):
        compute_metrics(full, {"sentiment": 3})
