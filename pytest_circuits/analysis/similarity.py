"""Component signatures and teacher-to-student similarity matrices (paper's and linear CKA)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..components import Component
from ..models import CircuitModel
from ..tasks import Task
from . import engine

SIMILARITIES = ("paper", "cka")
N_EIGENVECTORS = 3


@dataclass
class Signatures:
    """What similarity is computed from, for every head and MLP of one model on one task."""

    heads: list[Component]
    mlps: list[Component]
    patterns: np.ndarray  # [n_heads_total, query, key], averaged over prompts
    head_outputs: np.ndarray  # [n_heads_total, tokens, d_head] (z), for CKA
    mlp_outputs: np.ndarray  # [n_layers, tokens, d_model]
    mlp_eigenvectors: np.ndarray  # [n_layers, d_model, 3], top eigenvectors of X^T X / n


def signatures(model: CircuitModel, task: Task) -> Signatures:
    """Collect attention patterns, head outputs and MLP outputs from the clean run."""
    key = ("signatures", task.fingerprint())
    memo = engine.model_cache(model)
    if key in memo:
        return memo[key]
    names = [engine.pattern_hook(i) for i in range(model.n_layers)]
    names += [engine.z_hook(i) for i in range(model.n_layers)]
    names += [engine.mlp_out_hook(i) for i in range(model.n_layers)]
    run = engine.clean_run(model, task, cache_names=names)
    cache = run.capture.cache
    patterns, outputs, mlps, eig = [], [], [], []
    heads = [Component.head_at(layer, h) for layer in range(model.n_layers)
             for h in range(model.n_heads)]
    with torch.no_grad():
        for layer in range(model.n_layers):
            pattern = cache[engine.pattern_hook(layer)].float().mean(0)  # [head, q, k]
            patterns.append(pattern.cpu().numpy())
            z = cache[engine.z_hook(layer)].float()  # [n, seq, head, d_head]
            outputs.append(z.permute(2, 0, 1, 3).reshape(model.n_heads, -1, z.shape[-1]).cpu())
            out = cache[engine.mlp_out_hook(layer)].float().reshape(-1, model.d_model).cpu()
            mlps.append(out.numpy())
            eig.append(top_eigenvectors(out.double().numpy(), N_EIGENVECTORS))
    result = Signatures(
        heads=heads,
        mlps=[Component.mlp_at(i) for i in range(model.n_layers)],
        patterns=np.concatenate(patterns, axis=0).astype(np.float64),
        head_outputs=torch.cat(outputs, dim=0).numpy().astype(np.float64),
        mlp_outputs=np.stack(mlps).astype(np.float64),
        mlp_eigenvectors=np.stack(eig),
    )
    memo[key] = result
    return result


def top_eigenvectors(x: np.ndarray, k: int = N_EIGENVECTORS) -> np.ndarray:
    """Top-k eigenvectors (columns, largest eigenvalue first) of the second moment X^T X / n."""
    second_moment = x.T @ x / x.shape[0]
    values, vectors = np.linalg.eigh(second_moment)
    order = np.argsort(values)[::-1][:k]
    return vectors[:, order]


def pattern_similarity(teacher: np.ndarray, student: np.ndarray) -> np.ndarray:
    """[n_t, n_s] mean over query rows of the cosine between attention-pattern rows.

    ``teacher`` [n_t, q, k] and ``student`` [n_s, q, k] must share token positions.
    """
    if teacher.shape[1:] != student.shape[1:]:
        raise ValueError(
            f"attention patterns cover different positions ({teacher.shape[1:]} vs "
            f"{student.shape[1:]}): pattern similarity needs the same tokenizer and prompts; "
            "use matching='causal'"
        )
    t = teacher / np.maximum(np.linalg.norm(teacher, axis=-1, keepdims=True), 1e-12)
    s = student / np.maximum(np.linalg.norm(student, axis=-1, keepdims=True), 1e-12)
    return np.einsum("aqk,bqk->abq", t, s).mean(-1)


def eigenvector_similarity(teacher: np.ndarray, student: np.ndarray) -> np.ndarray:
    """[n_t, n_s] mean absolute cosine between index-matched top eigenvectors.

    ``teacher`` [n_t, d, k] and ``student`` [n_s, d, k] (unit columns). Eigenvectors have no sign,
    hence the absolute value; the i-th teacher direction is compared with the i-th student one,
    so identical MLPs score exactly 1.
    """
    if teacher.shape[1] != student.shape[1]:
        raise ValueError(
            f"MLP outputs have different widths ({teacher.shape[1]} vs {student.shape[1]}): "
            "eigenvector similarity needs one residual width; use similarity='cka'"
        )
    return np.abs(np.einsum("adk,bdk->abk", teacher, student)).mean(-1)


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA between activations x [N, d1] and y [N, d2] over the same N tokens."""
    x = x - x.mean(0, keepdims=True)
    y = y - y.mean(0, keepdims=True)
    cross = np.linalg.norm(y.T @ x) ** 2
    norm = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    return float(cross / norm) if norm > 0 else 0.0


def cka_matrix(teacher: np.ndarray, student: np.ndarray) -> np.ndarray:
    """[n_t, n_s] linear CKA between every pair of activation sets ([n, N, d] each)."""
    if teacher.shape[1] != student.shape[1]:
        raise ValueError(
            f"CKA needs the same tokens on both sides ({teacher.shape[1]} vs "
            f"{student.shape[1]}); use the same tokenizer and task"
        )
    return np.array([[linear_cka(a, b) for b in student] for a in teacher])


@dataclass
class SimilarityMatrices:
    """Teacher-by-student similarity, one matrix per component type."""

    heads: np.ndarray  # [teacher heads, student heads]
    mlps: np.ndarray  # [teacher MLPs, student MLPs]
    teacher_heads: list[Component]
    student_heads: list[Component]
    teacher_mlps: list[Component]
    student_mlps: list[Component]
    similarity: str  # "paper" or "cka"


def similarity_matrices(
    teacher: CircuitModel, student: CircuitModel, task: Task, similarity: str = "paper"
) -> SimilarityMatrices:
    """Similarity of every teacher component to every student component of the same type."""
    if similarity not in SIMILARITIES:
        raise ValueError(f"similarity={similarity!r} is not one of {', '.join(SIMILARITIES)}")
    t, s = signatures(teacher, task), signatures(student, task)
    if similarity == "paper":
        heads = pattern_similarity(t.patterns, s.patterns)
        mlps = eigenvector_similarity(t.mlp_eigenvectors, s.mlp_eigenvectors)
    else:
        heads = cka_matrix(t.head_outputs, s.head_outputs)
        mlps = cka_matrix(t.mlp_outputs, s.mlp_outputs)
    return SimilarityMatrices(
        heads=heads,
        mlps=mlps,
        teacher_heads=t.heads,
        student_heads=s.heads,
        teacher_mlps=t.mlps,
        student_mlps=s.mlps,
        similarity=similarity,
    )
