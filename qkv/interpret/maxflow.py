"""Maximum flow on a small directed graph (Edmonds and Karp 1972): the primitive of attention flow.

A graph is a dense (N, N) matrix of capacities, ``capacity[u, v]`` from node u to node v (0: no edge). Attention
graphs are small (layers x tokens nodes), so a breadth-first search for each augmenting path over a numpy matrix is
fast enough and needs no graph library.
"""
from __future__ import annotations

from collections import deque

import numpy as np

# Residual capacity at or below this is treated as saturated: float sums of softmax weights leave crumbs of 1e-17
# that would otherwise be "augmented" forever.
EPS = 1e-12


def _augmenting_path(residual: np.ndarray, source: int, sink: int) -> list[int] | None:
    """The shortest path source -> sink with positive residual capacity on every edge (node list), or None."""
    parent = np.full(residual.shape[0], -1)
    parent[source] = source
    queue = deque([source])
    while queue:
        u = queue.popleft()
        for v in np.flatnonzero(residual[u] > EPS):
            if parent[v] < 0:
                parent[v] = u
                if v == sink:
                    path = [sink]
                    while path[-1] != source:
                        path.append(int(parent[path[-1]]))
                    return path[::-1]
                queue.append(v)
    return None


def max_flow(capacity, source: int, sink: int) -> float:
    """The value of a maximum flow from ``source`` to ``sink``.

    capacity: (N, N) array-like of non-negative capacities; capacity[u, v] is the edge u -> v. Computed in float64
    by Edmonds-Karp (shortest augmenting paths), which ends on real-valued capacities. Returns a float (0 when the
    sink cannot be reached; ``inf`` is refused).

    Example:

        >>> from qkv.interpret import max_flow
        >>> cap = [[0, 3, 2, 0],                                # 0 -> 1 (3), 0 -> 2 (2), 1 -> 3 (1), 2 -> 3 (4)
        ...        [0, 0, 0, 1],
        ...        [0, 0, 0, 4],
        ...        [0, 0, 0, 0]]
        >>> max_flow(cap, 0, 3), max_flow(cap, 3, 0)            # 1 + 2; nothing flows back
        (3.0, 0.0)
    """
    cap = np.array(capacity, dtype=np.float64)
    if cap.ndim != 2 or cap.shape[0] != cap.shape[1]:
        raise ValueError(f"capacity has shape {cap.shape}: expected a square (N, N) matrix")
    if not np.isfinite(cap).all() or (cap < 0).any():
        raise ValueError("capacity: expected finite, non-negative capacities")
    N = cap.shape[0]
    for name, node in (("source", source), ("sink", sink)):
        if not isinstance(node, (int, np.integer)) or not 0 <= node < N:
            raise ValueError(f"{name}={node!r}: expected a node index in 0..{N - 1}")
    if source == sink:
        raise ValueError(f"source and sink are both {source}: expected two different nodes")
    residual, total = cap, 0.0  # residual[u, v]: what more may go u -> v (back edges grow as flow is pushed)
    while (path := _augmenting_path(residual, source, sink)) is not None:
        edges = list(zip(path[:-1], path[1:]))
        push = min(residual[u, v] for u, v in edges)
        for u, v in edges:
            residual[u, v] -= push
            residual[v, u] += push
        total += push
    return float(total)
