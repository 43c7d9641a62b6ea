"""Component signatures and teacher-to-student similarity matrices (the paper's, subspace, CKA)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..components import Component
from ..errors import IncompatiblePairError
from ..models import CircuitModel
from ..tasks import Task
from . import engine

#: "paper": heads by attention-pattern rows, MLPs by index-matched top-3 eigenvectors;
#: "subspace": heads as the paper, MLPs by the principal angles between top-k subspaces;
#: "cka": linear CKA of head outputs and MLP outputs.
SIMILARITIES = ("paper", "subspace", "cka")
#: The paper's MLP signature: the top-3 eigenvectors of the output second moment.
N_EIGENVECTORS = 3
#: Dimension of the MLP output subspaces compared by ``similarity="subspace"``. Chosen by
#: measurement (docs/method.md): 8 directions separate different layers of SmolLM2-135M best
#: (off-diagonal <= 0.16) while a layer and its 4-bit copy keep 0.93 on average (min 0.87).
SUBSPACE_DIM = 8


@dataclass
class Signatures:
    """What similarity is computed from, for every head and MLP of one model on one task."""

    heads: list[Component]
    mlps: list[Component]
    patterns: np.ndarray  # [n_heads_total, query, key], averaged over prompts
    head_outputs: np.ndarray  # [n_heads_total, tokens, d_head] (z), for CKA
    mlp_outputs: np.ndarray  # [n_layers, tokens, d_model]
    mlp_eigenvectors: np.ndarray  # [n_layers, d_model, k], top eigenvectors of X^T X / n


#: Signatures of models with the same weights (two loads of one teacher) are shared in the
#: process, the newest few kept: they cost a forward pass with every head captured.
_SHARED: dict[tuple[str, ...], Signatures] = {}
_SHARED_MAX = 8


def signatures(model: CircuitModel, task: Task) -> Signatures:
    """Collect attention patterns, head outputs and MLP outputs from the clean run.

    Memoised per model object and, across objects, by weight fingerprint, dtype, device kind and
    task, so a teacher loaded once per pair is captured once.
    """
    key = ("signatures", task.fingerprint())
    memo = engine.model_cache(model)
    if key in memo:
        return memo[key]
    shared_key = (model.weights_fingerprint, model.dtype, model.device_kind, task.fingerprint())
    if shared_key in _SHARED:
        memo[key] = _SHARED[shared_key]
        return memo[key]
    names = [engine.pattern_hook(i) for i in range(model.n_layers)]
    names += [engine.z_hook(i) for i in range(model.n_layers)]
    names += [engine.mlp_out_hook(i) for i in range(model.n_layers)]
    heads = [Component.head_at(layer, h) for layer in range(model.n_layers)
             for h in range(model.n_heads)]
    n = engine.task_tensors(model, task).n_prompts
    chunks = engine.prompt_chunks(n)
    if len(chunks) == 1:
        result = _signatures_at_once(model, task, names, heads)
    else:
        result = _signatures_by_chunk(model, task, names, heads, chunks, n)
    memo[key] = result
    _SHARED[shared_key] = result
    while len(_SHARED) > _SHARED_MAX:
        _SHARED.pop(next(iter(_SHARED)))
    return result


def _signatures_at_once(
    model: CircuitModel, task: Task, names: list[str], heads: list[Component]
) -> Signatures:
    """Signatures from one clean run of the whole task (a task of one chunk)."""
    run = engine.clean_run(model, task, cache_names=names)
    cache = run.capture.cache
    patterns, outputs, mlps, eig = [], [], [], []
    with torch.no_grad():
        for layer in range(model.n_layers):
            pattern = cache[engine.pattern_hook(layer)].float().mean(0)  # [head, q, k]
            patterns.append(pattern.cpu().numpy())
            z = cache[engine.z_hook(layer)].float()  # [n, seq, head, d_head]
            outputs.append(z.permute(2, 0, 1, 3).reshape(model.n_heads, -1, z.shape[-1]).cpu())
            out = cache[engine.mlp_out_hook(layer)].float().reshape(-1, model.d_model).cpu()
            mlps.append(out.numpy())
            eig.append(top_eigenvectors(out.double().numpy(), max(N_EIGENVECTORS, SUBSPACE_DIM)))
    return Signatures(
        heads=heads,
        mlps=[Component.mlp_at(i) for i in range(model.n_layers)],
        patterns=np.concatenate(patterns, axis=0).astype(np.float64),
        head_outputs=torch.cat(outputs, dim=0).numpy().astype(np.float64),
        mlp_outputs=np.stack(mlps).astype(np.float64),
        mlp_eigenvectors=np.stack(eig),
    )


def _signatures_by_chunk(
    model: CircuitModel,
    task: Task,
    names: list[str],
    heads: list[Component],
    chunks: list[slice],
    n: int,
) -> Signatures:
    """Signatures of a task of several chunks: the attention patterns are summed and the MLP
    output second moments X^T X accumulated chunk by chunk (float64), one chunk's clean run at
    a time. Head and MLP outputs per token (CKA's inputs, and the exact-copy check) are kept
    as compact float32 rows and only widened at the end."""
    layers = range(model.n_layers)
    pattern_sums: list[np.ndarray | None] = [None for _ in layers]
    moments: list[np.ndarray | None] = [None for _ in layers]
    outputs: list[list[torch.Tensor]] = [[] for _ in layers]
    mlps: list[list[np.ndarray]] = [[] for _ in layers]
    tokens = 0
    with torch.no_grad():
        for prompts in chunks:
            cache = engine.clean_run(model, task, cache_names=names, prompts=prompts).capture.cache
            for layer in layers:
                pattern = cache[engine.pattern_hook(layer)].float().double().sum(0).cpu().numpy()
                total = pattern_sums[layer]
                pattern_sums[layer] = pattern if total is None else total + pattern
                z = cache[engine.z_hook(layer)].float()  # [chunk, seq, head, d_head]
                outputs[layer].append(
                    z.permute(2, 0, 1, 3).reshape(model.n_heads, -1, z.shape[-1]).cpu()
                )
                out = cache[engine.mlp_out_hook(layer)].float().reshape(-1, model.d_model).cpu()
                mlps[layer].append(out.numpy())
                x = out.double().numpy()
                moment = moments[layer]
                moments[layer] = x.T @ x if moment is None else moment + x.T @ x
                if layer == 0:
                    tokens += x.shape[0]
    k = max(N_EIGENVECTORS, SUBSPACE_DIM)
    eig = [_top_eigenvectors_of(m / tokens, k) for m in moments if m is not None]
    patterns = [p / n for p in pattern_sums if p is not None]
    return Signatures(
        heads=heads,
        mlps=[Component.mlp_at(i) for i in layers],
        patterns=np.concatenate(patterns, axis=0).astype(np.float64),
        head_outputs=torch.cat([torch.cat(parts, dim=1) for parts in outputs], dim=0)
        .numpy()
        .astype(np.float64),
        mlp_outputs=np.stack([np.concatenate(parts) for parts in mlps]).astype(np.float64),
        mlp_eigenvectors=np.stack(eig),
    )


def _top_eigenvectors_of(second_moment: np.ndarray, k: int) -> np.ndarray:
    """Top-k eigenvectors (columns, largest eigenvalue first) of a symmetric second moment."""
    values, vectors = np.linalg.eigh(second_moment)
    order = np.argsort(values)[::-1][:k]
    return vectors[:, order]


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


def _identical(teacher: np.ndarray, student: np.ndarray) -> np.ndarray:
    """[n_t, n_s] True where a teacher signature equals a student signature bit for bit.

    Cosines of identical vectors come out of floating point as 0.9999999999999998; a component
    compared with an exact copy of itself is set to exactly 1, so a model compared with itself
    scores exactly 1.0.
    """
    if teacher.shape[1:] != student.shape[1:]:
        return np.zeros((len(teacher), len(student)), dtype=bool)
    t = teacher.reshape(len(teacher), -1)
    s = student.reshape(len(student), -1)
    # hash rows first, so equal-looking rows are compared in full only when they may be equal
    t_keys = [row.tobytes() for row in t]
    s_index: dict[bytes, list[int]] = {}
    for j, row in enumerate(s):
        s_index.setdefault(row.tobytes(), []).append(j)
    same = np.zeros((len(teacher), len(student)), dtype=bool)
    for i, key in enumerate(t_keys):
        for j in s_index.get(key, ()):
            same[i, j] = True
    return same


def _exact_for_copies(
    values: np.ndarray, teacher_inputs: np.ndarray, student_inputs: np.ndarray
) -> np.ndarray:
    values = np.clip(values, -1.0, 1.0)
    values[_identical(teacher_inputs, student_inputs)] = 1.0
    return values


def eigenvector_similarity(teacher: np.ndarray, student: np.ndarray) -> np.ndarray:
    """[n_t, n_s] mean absolute cosine between index-matched top eigenvectors.

    ``teacher`` [n_t, d, k] and ``student`` [n_s, d, k] (unit columns; the first
    ``N_EIGENVECTORS`` are used). Eigenvectors have no sign, hence the absolute value; the i-th
    teacher direction is compared with the i-th student one, so identical MLPs score 1.
    """
    _same_width(teacher, student)
    k = N_EIGENVECTORS
    return np.abs(np.einsum("adk,bdk->abk", teacher[..., :k], student[..., :k])).mean(-1)


def subspace_similarity(
    teacher: np.ndarray, student: np.ndarray, k: int = SUBSPACE_DIM
) -> np.ndarray:
    """[n_t, n_s] mean squared cosine of the principal angles between top-k subspaces.

    ``teacher`` [n_t, d, >=k] and ``student`` [n_s, d, >=k] hold orthonormal eigenvectors,
    largest eigenvalue first; U, V are their first k columns and the similarity is
    ``||U^T V||_F^2 / k = (1/k) sum_i cos^2(theta_i)``, theta_i the principal angles. 1 when the
    subspaces coincide, whatever basis the eigensolver picked inside them, which is what the
    paper's index-matched eigenvectors lack: when eigenvalues are close a small perturbation
    rotates the eigenvectors within their span and the paper's score falls (to 0.09 for one
    layer of SmolLM2-135M against its 4-bit copy) although the MLP writes to the same subspace.
    Two random k-dimensional subspaces of R^d score k/d on average.
    """
    _same_width(teacher, student)
    k = min(k, teacher.shape[2], student.shape[2])
    u, v = teacher[..., :k], student[..., :k]
    overlap = np.einsum("adi,bdj->abij", u, v)
    return (overlap**2).sum(axis=(2, 3)) / k


def _same_width(teacher: np.ndarray, student: np.ndarray) -> None:
    if teacher.shape[1] != student.shape[1]:
        raise IncompatiblePairError(
            f"MLP outputs have different widths ({teacher.shape[1]} vs {student.shape[1]}): "
            "eigenvector and subspace similarity need one residual width; use "
            "similarity='cka', which compares tokens instead of directions"
        )


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


def check_similarity(similarity: str) -> str:
    """Return ``similarity`` when it is one of :data:`SIMILARITIES`, else raise naming them."""
    if similarity not in SIMILARITIES:
        raise IncompatiblePairError(
            f"similarity={similarity!r} is not a similarity; use 'paper' (attention patterns and "
            "top-3 eigenvectors, the paper's), 'subspace' (the paper's for heads, principal "
            "angles between top-8 MLP output subspaces, stable under small weight changes) or "
            "'cka' (linear CKA of head and MLP outputs)"
        )
    return similarity


@dataclass
class SimilarityMatrices:
    """Teacher-by-student similarity, one matrix per component type."""

    heads: np.ndarray  # [teacher heads, student heads]
    mlps: np.ndarray  # [teacher MLPs, student MLPs]
    teacher_heads: list[Component]
    student_heads: list[Component]
    teacher_mlps: list[Component]
    student_mlps: list[Component]
    similarity: str  # one of SIMILARITIES


def similarity_matrices(
    teacher: CircuitModel, student: CircuitModel, task: Task, similarity: str = "paper"
) -> SimilarityMatrices:
    """Similarity of every teacher component to every student component of the same type."""
    check_similarity(similarity)
    t, s = signatures(teacher, task), signatures(student, task)
    if similarity == "cka":
        heads = _exact_for_copies(
            cka_matrix(t.head_outputs, s.head_outputs), t.head_outputs, s.head_outputs
        )
        mlps = cka_matrix(t.mlp_outputs, s.mlp_outputs)
    else:
        heads = _exact_for_copies(
            pattern_similarity(t.patterns, s.patterns), t.patterns, s.patterns
        )
        if similarity == "paper":
            mlps = eigenvector_similarity(t.mlp_eigenvectors, s.mlp_eigenvectors)
        else:
            mlps = subspace_similarity(t.mlp_eigenvectors, s.mlp_eigenvectors)
    mlps = _exact_for_copies(mlps, t.mlp_outputs, s.mlp_outputs)
    return SimilarityMatrices(
        heads=heads,
        mlps=mlps,
        teacher_heads=t.heads,
        student_heads=s.heads,
        teacher_mlps=t.mlps,
        student_mlps=s.mlps,
        similarity=similarity,
    )
