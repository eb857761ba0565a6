"""Cayley Graph Propagation (CGP; Wilson, Bechler-Speicher and Velickovic,
arXiv 2410.03424), as DEAR uses it: the Cayley graphs of SL(2, Z_p).

SL(2, Z_p), the 2x2 matrices over the integers mod p with determinant 1, has
p(p^2 - 1) elements: 6, 24, 120, 336, 1320, ... for p = 2, 3, 5, 7, 11, ...
Its Cayley graph for the generators [[1,1],[0,1]], [[1,-1],[0,1]],
[[1,0],[1,1]], [[1,0],[-1,1]] joins each matrix x to x g for every generator
g. The set is closed under inverses, so the graph is undirected, and it is
4-regular, a family of expanders: a few rounds of message passing connect
every pair of nodes without bottlenecks. For p = 2 the generators coincide in
pairs (-1 = 1 mod 2): as a simple graph the 6-node one is a 2-regular cycle.

A graph of n nodes is paired with the smallest Cayley graph of >= n nodes:
its nodes are the first n Cayley nodes, the rest are virtual nodes. Nodes are
numbered in the order a depth-first (stack) walk from the identity discovers
them, so the first n form a connected piece. DEAR's release lists only
p <= 5 (at most 120 nodes); here any n is served (n=128 uses p=7, 336 nodes).

Built in numpy, once per size, independent of any model.
"""

from __future__ import annotations

import functools

import numpy as np


def group_size(p: int) -> int:
  """|SL(2, Z_p)| for a prime p."""
  return p * (p * p - 1)


def _is_prime(p: int) -> bool:
  return p >= 2 and all(p % d for d in range(2, int(p**0.5) + 1))


def prime_for(n: int) -> int:
  """The smallest prime p with |SL(2, Z_p)| >= n."""
  p = 2
  while group_size(p) < n:
    p += 1
    while not _is_prime(p):
      p += 1
  return p


def generators(p: int) -> np.ndarray:
  """[4, 2, 2]: the two unipotent generators and their inverses, mod p."""
  return np.array([[[1, 1], [0, 1]], [[1, p - 1], [0, 1]],
                   [[1, 0], [1, 1]], [[1, 0], [p - 1, 1]]], np.int64)


@functools.cache
def cayley_graph(p: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(elements [M, 2, 2], senders, receivers): the edges x -> x g (mod p)
  for each node x and generator g, 4 M directed edges; node i is
  elements[i], numbered in the order a stack walk from I discovers them."""
  gens = generators(p)
  index = {(1, 0, 0, 1): 0}
  elements = [np.eye(2, dtype=np.int64)]
  stack = [elements[0]]
  senders, receivers = [], []
  while stack:
    x = stack.pop()
    i = index[tuple(x.ravel())]
    for g in gens:
      y = (x @ g) % p
      key = tuple(y.ravel())
      if key not in index:
        index[key] = len(index)
        elements.append(y)
        stack.append(y)
      senders.append(i)
      receivers.append(index[key])
  return np.stack(elements), np.array(senders), np.array(receivers)


@functools.cache
def cayley_adjacency(n: int) -> np.ndarray:
  """[M, M] float32 0/1 adjacency (adj[i, j]: edge i -> j) of the smallest
  SL(2, Z_p) Cayley graph with M >= n nodes; nodes n.. are virtual."""
  p = prime_for(n)
  m = group_size(p)
  adj = np.zeros((m, m), np.float32)
  _, s, r = cayley_graph(p)
  adj[s, r] = 1.0
  adj.setflags(write=False)
  return adj


@functools.cache
def cayley_neighbours(n: int) -> np.ndarray:
  """[M, 5] int32: row j lists j itself, then the senders of its 4 edges in
  the Cayley graph of `cayley_adjacency(n)` (for p = 2 a sender repeats:
  its two generators coincide). The sparse form of that adjacency plus
  self-loops, for `GatedMaxMPNN(neighbours=...)`."""
  p = prime_for(n)
  m = group_size(p)
  _, s, r = cayley_graph(p)
  order = np.argsort(r, kind='stable')
  senders = s[order].reshape(m, 4)  # every node receives exactly 4 edges
  out = np.concatenate([np.arange(m)[:, None], senders], axis=1)
  out = out.astype(np.int32)
  out.setflags(write=False)
  return out
