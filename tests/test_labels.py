"""Label graph (ML-GCN Sec. 3.4) worked by hand, and word vectors on the real GloVe-50d."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from fashionlens.labels import (LabelGraph, WordVectors, build_adjacency, cooccurrence_counts, identity_adjacency,
                                label_embeddings, label_vectors, label_words, load_glove, normalize_adjacency,
                                onehot_embeddings, reweight_adjacency, sentence_embeddings)

# Worked example: 4 labels a, b, c, d. N = images with each label; M = images with both.
NAMES = ["a", "b", "c", "d"]
N_COUNTS = np.array([10, 5, 4, 2])
M_COUNTS = np.array([[10, 4, 1, 2],
                     [4, 5, 2, 0],
                     [1, 2, 4, 1],
                     [2, 0, 1, 2]])


def reference_adjacency(edges: np.ndarray) -> np.ndarray:
    """The ML-GCN reference's reweighting and gen_adj, written from its formulas (RESEARCH.md)."""
    A = edges.astype(np.float64)
    A = A * 0.25 / (A.sum(0) + 1e-6) + np.eye(len(A))
    D = np.diag(A.sum(1) ** -0.5)
    return (A @ D).T @ D


def test_cooccurrence_counts_skip_unknown_entries():
    labels = np.array([[1, 1, 0], [1, 0, 1], [1, 1, 1], [0, 1, 1], [1, 1, 0]])
    mask = np.array([[1, 1, 1], [1, 1, 1], [1, 0, 1], [1, 1, 1], [1, 1, 0]])
    M, N = cooccurrence_counts(labels, mask)
    # Known positives per image: ab, ac, ac (b unknown), bc, ab.
    np.testing.assert_array_equal(N, [4, 3, 3])
    np.testing.assert_array_equal(M, [[4, 2, 2], [2, 3, 1], [2, 1, 3]])
    M_all, N_all = cooccurrence_counts(labels)
    np.testing.assert_array_equal(N_all, [4, 4, 3])  # the unknown b of image 2 now counts
    assert M_all[0, 1] == 3


def test_worked_example_every_step():
    graph = build_adjacency(M_COUNTS, N_COUNTS, t=0.4, p=0.2, label_names=NAMES)
    # 1. P[i, j] = P(L_j | L_i) = M[i, j] / N[i], zero diagonal.
    np.testing.assert_allclose(graph.conditional, [[0, 0.4, 0.1, 0.2],
                                                   [0.8, 0, 0.4, 0],
                                                   [0.25, 0.5, 0, 0.25],
                                                   [1.0, 0, 0.5, 0]])
    # 2. binarise at t = 0.4 (>=): 0.4 counts.
    np.testing.assert_array_equal(graph.edges.astype(int), [[0, 1, 0, 0],
                                                            [1, 0, 1, 0],
                                                            [0, 1, 0, 0],
                                                            [1, 0, 1, 0]])
    assert graph.num_edges == 6
    # 3. reweight, receiving rows: a receives from b, d (E[b,a], E[d,a]); b from a, c; c from b, d;
    #    d from nobody, so d keeps 1.
    reweighted = reweight_adjacency(graph.edges, 0.2)
    np.testing.assert_allclose(reweighted, [[0.8, 0.1, 0, 0.1],
                                            [0.1, 0.8, 0.1, 0],
                                            [0, 0.1, 0.8, 0.1],
                                            [0, 0, 0, 1.0]])
    np.testing.assert_allclose(reweighted.sum(1), 1.0)
    # 4. normalise with the column sums c = (0.9, 1.0, 0.9, 1.2): A[i, j] = R[i, j] / sqrt(c_i c_j).
    expected = np.array([[0.8 / 0.9, 0.1 / np.sqrt(0.9), 0, 0.1 / np.sqrt(0.9 * 1.2)],
                         [0.1 / np.sqrt(0.9), 0.8, 0.1 / np.sqrt(0.9), 0],
                         [0, 0.1 / np.sqrt(0.9), 0.8 / 0.9, 0.1 / np.sqrt(0.9 * 1.2)],
                         [0, 0, 0, 1 / 1.2]])
    np.testing.assert_allclose(graph.adjacency, expected, rtol=1e-6)
    assert graph.adjacency[0, 1] == pytest.approx(0.1054093, abs=1e-7)
    assert graph.adjacency.dtype == np.float32
    assert graph.kept == [0, 1, 2, 3]


def test_reference_relation_with_an_isolated_label():
    """ref = D_r S R D_r, S = diag(1.25 where a label receives, else 1), D_r from ref's own row sums."""
    graph = build_adjacency(M_COUNTS, N_COUNTS, t=0.4, p=0.2, label_names=NAMES)
    reweighted = reweight_adjacency(graph.edges, 0.2)
    reference = reference_adjacency(graph.edges)
    S = np.diag([1.25, 1.25, 1.25, 1.0])  # d receives from nobody
    SR = S @ reweighted
    D_r = np.diag(SR.sum(0) ** -0.5)
    np.testing.assert_allclose(reference, D_r @ SR @ D_r, rtol=1e-5)
    # Only entries that touch the isolated label d differ: ref has d's self weight 1 / 1.25 = 0.8.
    np.testing.assert_allclose(graph.adjacency[:3, :3], reference[:3, :3], rtol=1e-5)
    assert reference[3, 3] == pytest.approx(0.8, abs=1e-6)
    assert graph.adjacency[3, 3] == pytest.approx(1 / 1.2, abs=1e-6)


def test_equals_reference_when_every_label_receives():
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(50):
        edges = rng.random((6, 6)) < 0.35
        np.fill_diagonal(edges, False)
        if not (edges.sum(0) > 0).all():
            continue
        ours = normalize_adjacency(reweight_adjacency(edges, 0.2))
        np.testing.assert_allclose(ours, reference_adjacency(edges), rtol=1e-5, atol=1e-7)
        checked += 1
    assert checked >= 5


def test_empty_label_is_an_error_dropped_or_isolated():
    M = np.array([[3, 0, 2], [0, 0, 0], [2, 0, 2]])
    N = np.array([3, 0, 2])
    with pytest.raises(ValueError, match="'collar'"):
        build_adjacency(M, N, label_names=["solid", "collar", "floral"])
    with pytest.warns(UserWarning, match="collar"):
        graph = build_adjacency(M, N, label_names=["solid", "collar", "floral"], on_empty="drop")
    assert graph.kept == [0, 2]
    assert graph.label_names == ["solid", "floral"]
    # P(floral | solid) = 2/3, P(solid | floral) = 1: both edges; R = [[.8, .2], [.2, .8]], columns sum to 1.
    np.testing.assert_allclose(graph.adjacency, [[0.8, 0.2], [0.2, 0.8]], rtol=1e-6)
    # Isolated: collar keeps its node, sees only itself, and the others' block is unchanged.
    with pytest.warns(UserWarning, match="kept without edges.*collar"):
        graph = build_adjacency(M, N, label_names=["solid", "collar", "floral"], on_empty="isolate")
    assert graph.kept == [0, 1, 2] and not graph.edges[1].any() and not graph.edges[:, 1].any()
    np.testing.assert_allclose(graph.adjacency, [[0.8, 0, 0.2], [0, 1, 0], [0.2, 0, 0.8]], rtol=1e-6, atol=1e-7)


def test_graph_json_round_trip():
    graph = build_adjacency(M_COUNTS, N_COUNTS, t=0.4, p=0.2, label_names=NAMES)
    text = graph.to_json()
    data = json.loads(text)
    assert {"source": "d", "target": "a", "p_target_given_source": 1.0,
            "weight": pytest.approx(0.1 / np.sqrt(0.9 * 1.2), rel=1e-6)} in data["edges"]
    assert len(data["edges"]) == 6
    loaded = LabelGraph.from_json(text)
    np.testing.assert_allclose(loaded.adjacency, graph.adjacency, rtol=1e-6)
    np.testing.assert_array_equal(loaded.edges, graph.edges)
    assert loaded.edge_probabilities[(1, 0)] == pytest.approx(0.8)
    assert (loaded.t, loaded.p, loaded.label_names) == (0.4, 0.2, NAMES)
    identity = LabelGraph.from_json(identity_adjacency(3).to_json())
    np.testing.assert_array_equal(identity.adjacency, np.eye(3))


def test_ablations():
    np.testing.assert_array_equal(identity_adjacency(3).adjacency, np.eye(3))
    np.testing.assert_array_equal(onehot_embeddings(2), [[1, 0], [0, 1]])


def test_glove50_real_vectors():
    start = time.perf_counter()
    vectors = load_glove("glove50")
    assert load_glove("glove50") is vectors  # cached
    assert time.perf_counter() - start < 10
    assert vectors.dim == 50 and len(vectors) == 400000
    for word in ("floral", "stripe", "dress", "sweater", "t-shirt"):
        assert word in vectors

    def cosine(a: str, b: str) -> float:
        u, v = vectors.vector(a), vectors.vector(b)
        return float(u @ v / np.linalg.norm(u) / np.linalg.norm(v))

    assert cosine("shirt", "sweater") > cosine("shirt", "purple")
    assert cosine("shirt", "sweater") > 0.6


def test_label_embeddings_split_and_average():
    vectors = load_glove("glove50")
    assert label_words("Tank_Top", vectors) == [["tank"], ["top"]]
    assert label_words("T-Shirt", vectors) == [["t-shirt"]]  # whole hyphenated token exists in GloVe
    assert "floral-stripe" not in vectors
    assert label_words("floral-stripe/dress", vectors) == [["floral", "stripe"], ["dress"]]
    out = label_embeddings(["tank top", "t-shirt", "pattern_floral"], vectors)
    assert out.shape == (3, 50) and out.dtype == np.float32
    np.testing.assert_allclose(out[0], (vectors.vector("tank") + vectors.vector("top")) / 2, rtol=1e-6)
    np.testing.assert_allclose(out[1], vectors.vector("t-shirt"))
    with pytest.raises(ValueError, match=r"label 'zqxv dress': word 'zqxv'"):
        label_embeddings(["zqxv dress"], vectors)


def test_label_embedding_fallbacks(tmp_path):
    path = tmp_path / "glove.tiny.3d.txt"
    path.write_text("red 1 2 3\ndress 3 0 -1\nlong sleeve 0.5 0.5 0.5\n")
    vectors = load_glove(path)
    assert vectors.dim == 3 and "long sleeve" in vectors and "red" in vectors
    assert isinstance(vectors, WordVectors)
    np.testing.assert_allclose(label_embeddings(["red dress"], vectors), [[2, 1, 1]])
    np.testing.assert_allclose(label_embeddings(["red zork"], vectors, fallback="zero"), [[0.5, 1, 1.5]])
    np.testing.assert_allclose(label_embeddings(["red zork"], vectors, fallback="skip-word"), [[1, 2, 3]])
    first = label_embeddings(["zork"], vectors, fallback="random")
    np.testing.assert_array_equal(first, label_embeddings(["zork"], vectors, fallback="random"))
    assert np.abs(first).sum() > 0
    with pytest.raises(ValueError, match="none of its words"):
        label_embeddings(["zork"], vectors, fallback="skip-word")
    # Without a fallback the error names the command-line flag (issue 13: it only named the Python argument).
    with pytest.raises(ValueError, match="--embedding-fallback zero[|]random on the command line"):
        label_embeddings(["zork"], vectors)
    with pytest.raises(FileNotFoundError):
        load_glove(tmp_path / "missing.txt")


def test_min_lift_drops_edges_that_only_point_at_a_frequent_label():
    # 10 images: solid in 8, collar in 4, floral in 2; both floral images also have solid and collar.
    M = np.array([[8, 3, 2], [3, 4, 2], [2, 2, 2]])
    N = np.array([8, 4, 2])
    rates = N / 10.0
    names = ["solid", "collar", "floral"]
    plain = build_adjacency(M, N, t=0.4, label_names=names)
    # P(solid|collar) = 0.75, P(solid|floral) = 1, P(collar|floral) = 1, P(floral|collar) = 0.5; the rest < 0.4.
    assert {(i, j) for i, j in zip(*np.nonzero(plain.edges))} == {(1, 0), (2, 0), (2, 1), (1, 2)}
    lifted = build_adjacency(M, N, t=0.4, label_names=names, min_lift=1.2, base_rates=rates)
    # collar -> solid goes: 0.75 is below solid's base rate 0.8 (collar makes solid LESS likely).
    # floral -> solid stays: 1.0 >= 1.2 * 0.8.
    assert {(i, j) for i, j in zip(*np.nonzero(lifted.edges))} == {(2, 0), (2, 1), (1, 2)}
    with pytest.raises(ValueError, match="base_rates"):
        build_adjacency(M, N, min_lift=1.2)


# --------------------------------------------------------------------------------------------
# label_vectors: the one choice string for the GCN's node features
# --------------------------------------------------------------------------------------------

GARMENTS = ["skirt", "dress", "sunglasses"]


def test_label_vectors_onehot_and_glove(tmp_path):
    names, words = ["pattern_floral", "tank_top", "t-shirt"], ["floral pattern", "tank top", "t-shirt"]
    np.testing.assert_array_equal(label_vectors("onehot", names, words), np.eye(3, dtype=np.float32))
    np.testing.assert_array_equal(label_vectors("onehot+onehot", names, words), np.eye(3, dtype=np.float32))
    glove = label_vectors("glove50", names, words)
    np.testing.assert_array_equal(glove, label_embeddings(words, load_glove("glove50")))
    plus = label_vectors("glove50+onehot", names, words)
    assert plus.shape == (3, 53) and plus.dtype == np.float32
    np.testing.assert_array_equal(plus[:, :50], glove)
    np.testing.assert_array_equal(plus[:, 50:], np.eye(3))
    path = tmp_path / "glove.tiny.3d.txt"
    path.write_text("red 1 2 3\ndress 3 0 -1\n")
    np.testing.assert_allclose(label_vectors(str(path), ["a", "b"], ["red dress", "red zork"], fallback="zero"),
                               [[2, 1, 1], [0.5, 1, 1.5]])
    assert label_vectors(f"{path}+onehot", ["a"], ["red"]).shape == (1, 4)
    with pytest.raises(ValueError, match="word 'zork' is not in the vocabulary"):
        label_vectors(str(path), ["a"], ["zork"])


def test_label_vectors_unknown_choice_names_the_valid_ones(tmp_path):
    for choice in ("glove300", str(tmp_path / "missing.txt"), "minilm+onehot+onehot", ""):
        with pytest.raises(ValueError, match=r"unknown label embeddings .*: expected one of onehot, glove50, minilm, "
                                             r"minilm-desc or the path of an existing GloVe \.txt file"):
            label_vectors(choice, GARMENTS, GARMENTS)
    with pytest.raises(ValueError, match="'glove300'"):
        label_vectors("glove300", GARMENTS, GARMENTS)
    with pytest.raises(ValueError, match="2 label words for 3 labels"):
        label_vectors("onehot", GARMENTS, GARMENTS[:2])
    with pytest.raises(ValueError, match="unknown sentence model 'bert'"):
        sentence_embeddings(["skirt"], model="bert")


def test_labels_module_imports_without_sentence_transformers():
    code = "import sys, fashionlens.labels; print('sentence_transformers' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


@pytest.mark.slow
def test_minilm_sentence_vectors():
    vectors = sentence_embeddings(GARMENTS + ["male", "female"])
    assert vectors.shape == (5, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    cosine = vectors @ vectors.T
    # Measured: skirt/dress 0.622, skirt/sunglasses 0.349 (GloVe-50d: 0.806, 0.619).
    assert cosine[0, 1] > cosine[0, 2] + 0.15
    assert 0.55 < cosine[0, 1] < 0.7 and 0.28 < cosine[0, 2] < 0.42
    start = time.perf_counter()
    again = sentence_embeddings(["dress"])  # cached: no model call
    assert time.perf_counter() - start < 0.05
    np.testing.assert_array_equal(again[0], vectors[1])
    labels = label_vectors("minilm", ["pattern_floral", "skirt"], ["floral_pattern", "skirt"])
    np.testing.assert_allclose(labels, sentence_embeddings(["floral pattern", "skirt"]), atol=1e-6)
    plus = label_vectors("minilm+onehot", GARMENTS, GARMENTS)
    assert plus.shape == (3, 387)
    np.testing.assert_array_equal(plus[:, 384:], np.eye(3))
    np.testing.assert_allclose(plus[:, :384], vectors[:3], atol=1e-6)
    described = label_vectors("minilm-desc", GARMENTS, GARMENTS)
    np.testing.assert_allclose(described, sentence_embeddings([f"a photo of a person wearing {g}" for g in GARMENTS]))
    assert described[0] @ described[1] > described[0] @ described[2]


@pytest.mark.slow
def test_minilm_loads_offline_without_the_callers_environment(tmp_path):
    # No HF_HUB_OFFLINE from the caller, an empty Hugging Face cache and a proxy that refuses every
    # connection: the packaged model must still load, from its own folder.
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_HOME=str(tmp_path / "hf"), HTTPS_PROXY="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9")
    code = ("import huggingface_hub, fashionlens.labels as L; v = L.sentence_embeddings(['skirt', 'dress']); "
            "print(v.shape[1], round(float(v[0] @ v[1]), 2))")
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["384", "0.62"]
