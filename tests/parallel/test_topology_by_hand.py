"""shoal.topology against graphs and matrices written out by hand: Metropolis-Hastings weights
(Xiao & Boyd 2004), each builder's neighbours, the one-peer exponential graph's schedule
(``reference/``: peers ``i + 2^j`` for ``j = 0..floor(log2(n - 1))``), the spectral gap and
the validation of a mixing matrix."""

from __future__ import annotations

import math

import pytest
import torch

from shoal.topology import (
    TOPOLOGIES,
    Topology,
    complete,
    exponential,
    from_edges,
    from_matrix,
    one_peer_exponential,
    ring,
    star,
    torus,
)


def _t(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def _neighbours(topo: Topology) -> list[set[int]]:
    return [set(topo.in_neighbors(i)) for i in range(topo.num_nodes)]


def _metropolis(n: int, adjacency: list[set[int]]) -> torch.Tensor:
    """Xiao & Boyd's weights from an adjacency list: ``1 / (1 + max(d_i, d_j))`` on an edge,
    the rest of the row on the diagonal."""
    w = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        for j in adjacency[i]:
            w[i, j] = 1.0 / (1 + max(len(adjacency[i]), len(adjacency[j])))
        w[i, i] = 1.0 - float(w[i].sum())
    return w


def test_irregular_graph_gets_metropolis_hastings_weights_by_hand() -> None:
    """A hub with a tail (degrees 3, 1, 1, 2, 1): the weights differ per edge, so a rule that
    uses one endpoint's degree, or the smaller one, gives other numbers."""
    topo = from_edges(5, [(0, 1), (0, 2), (0, 3), (3, 4)])
    q, t = 1 / 4, 1 / 3
    expected = _t(
        [
            [1 / 4, q, q, q, 0],
            [q, 3 / 4, 0, 0, 0],
            [q, 0, 3 / 4, 0, 0],
            [q, 0, 0, 5 / 12, t],
            [0, 0, 0, t, 2 / 3],
        ]
    )
    torch.testing.assert_close(topo.mixing_WW, expected, rtol=0, atol=1e-15)
    # Symmetric and doubly stochastic, as D-PSGD needs.
    torch.testing.assert_close(topo.mixing_WW, topo.mixing_WW.T, rtol=0, atol=0)
    assert topo.doubly_stochastic


def test_self_loops_and_repeated_edges_do_not_count_in_the_degree() -> None:
    """An edge ``(i, i)`` is not a neighbour: two nodes joined once average half-half."""
    half = _t([[0.5, 0.5], [0.5, 0.5]])
    torch.testing.assert_close(from_edges(2, [(0, 0), (0, 1)]).mixing_WW, half, rtol=0, atol=0)
    torch.testing.assert_close(from_edges(2, [(0, 1), (1, 0)]).mixing_WW, half, rtol=0, atol=0)


def test_an_edge_outside_the_nodes_is_refused() -> None:
    with pytest.raises(ValueError, match="outside"):
        from_edges(3, [(0, 3)])
    with pytest.raises(ValueError, match="outside"):
        from_edges(3, [(-1, 0)])


@pytest.mark.parametrize("n", [3, 5, 8])
def test_ring_is_each_node_with_its_two_neighbours_at_one_third(n: int) -> None:
    expected = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        for j in (i - 1, i, i + 1):
            expected[i, j % n] = 1 / 3
    torch.testing.assert_close(ring(n).mixing_WW, expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize(("rows", "cols"), [(3, 4), (4, 3), (2, 3)])
def test_torus_links_grid_neighbours_with_wrap_around(rows: int, cols: int) -> None:
    """Node ``r * cols + c`` with ``(r +- 1, c)`` and ``(r, c +- 1)``, both modulo the grid."""
    adjacency = []
    for i in range(rows * cols):
        r, c = divmod(i, cols)
        near = {
            ((r + dr) % rows) * cols + (c + dc) % cols
            for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1))
        }
        adjacency.append(near - {i})
    topo = torus(rows, cols)
    assert _neighbours(topo) == adjacency
    torch.testing.assert_close(
        topo.mixing_WW, _metropolis(rows * cols, adjacency), rtol=0, atol=1e-15
    )


@pytest.mark.parametrize(("rows", "cols"), [(-2, -3), (-1, -1), (0, 4), (3, 0)])
def test_a_torus_side_below_one_is_refused(rows: int, cols: int) -> None:
    # A positive product of two negative sides built isolated nodes, silently.
    with pytest.raises(ValueError, match=r"torus: (rows|cols) must be an integer >= 1"):
        torus(rows, cols)


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: ring(2.5), "ring: n must be an integer >= 1, got 2.5"),
        (lambda: ring(True), "ring: n must be an integer >= 1, got True"),  # was one node
        (lambda: ring("4"), "ring: n must be an integer >= 1, got '4'"),
        (lambda: complete(2.0), "complete: n must be an integer >= 1, got 2.0"),
        (lambda: star(0), "star: n must be an integer >= 1, got 0"),
        (lambda: exponential(3.0), "exponential: n must be an integer >= 1"),
        (lambda: one_peer_exponential(None), "one_peer_exponential: n must be an integer"),
        (lambda: from_edges(1.5, []), "graph: n must be an integer >= 1, got 1.5"),
        (lambda: torus(2.5, 2), "torus: rows must be an integer >= 1, got 2.5"),
        (lambda: torus(2, "3"), "torus: cols must be an integer >= 1, got '3'"),
    ],
)
def test_builders_refuse_a_node_count_that_is_not_an_integer(build, match: str) -> None:
    # Raw errors from range() and torch before, or a graph of True = 1 node.
    with pytest.raises(ValueError, match=match) as err:
        build()
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("n", [7, 8, 11])
def test_exponential_links_i_to_i_plus_and_minus_powers_of_two_below_n(n: int) -> None:
    """Hops ``2^k`` for ``k < ceil(log2 n)``: at 7 nodes ``+-4`` is ``-+3``, so every node is
    linked to every other; at 8 nodes 5 neighbours (the docstring's count)."""
    hops = [2**k for k in range(math.ceil(math.log2(n)))]
    adjacency = [{(i + s * h) % n for h in hops for s in (1, -1)} - {i} for i in range(n)]
    topo = exponential(n)
    assert _neighbours(topo) == adjacency
    torch.testing.assert_close(topo.mixing_WW, _metropolis(n, adjacency), rtol=0, atol=1e-15)
    if n == 7:
        torch.testing.assert_close(topo.mixing_WW, complete(7).mixing_WW, rtol=0, atol=1e-15)
    if n == 8:
        assert all(len(a) == 5 for a in adjacency)


@pytest.mark.parametrize("n", [5, 6, 8])
def test_one_peer_exponential_pushes_to_i_plus_2_to_the_t(n: int) -> None:
    """``reference/``: peers ``i + 2^j``, ``j = 0..floor(log2(n - 1))``, one per step; node
    ``i`` keeps half and sends half to that peer (a push: column ``i`` of ``M_t``)."""
    periods = int(math.floor(math.log2(n - 1))) + 1
    topo = one_peer_exponential(n)
    assert len(topo.cycle) == periods
    for t in range(2 * periods + 1):
        hop = 2 ** (t % periods)
        expected = 0.5 * torch.eye(n, dtype=torch.float64)
        for i in range(n):
            expected[(i + hop) % n, i] += 0.5
        g = topo.at(t)
        torch.testing.assert_close(g.mixing_WW, expected, rtol=0, atol=0, msg=f"step {t}")
        assert [g.out_neighbors(i) for i in range(n)] == [[(i + hop) % n] for i in range(n)]
        assert [g.in_neighbors(i) for i in range(n)] == [[(i - hop) % n] for i in range(n)]


@pytest.mark.parametrize("n", [4, 8, 16])
def test_one_peer_exponential_cycle_multiplies_to_the_exact_average(n: int) -> None:
    """``reference/``: with weights 1/2 and ``n`` a power of two, ``log2 n`` steps average
    exactly: the product of one cycle's matrices is ``J / n``."""
    topo = one_peer_exponential(n)
    product = torch.eye(n, dtype=torch.float64)
    for t in range(int(math.log2(n))):
        product = topo.at(t).mixing_WW @ product
    torch.testing.assert_close(product, torch.full((n, n), 1 / n, dtype=torch.float64))


def test_one_node_graphs_are_the_identity() -> None:
    one = _t([[1.0]])
    for topo in (complete(1), ring(1), exponential(1), one_peer_exponential(1), star(1)):
        torch.testing.assert_close(topo.mixing_WW, one, rtol=0, atol=0, msg=topo.name)
        assert topo.spectral_gap() == 1.0


def test_in_and_out_neighbours_of_a_directed_cycle() -> None:
    """``M[i, j]``: what ``i`` takes from ``j``; on the cycle 0 -> 1 -> 2 -> 0 node 0 takes
    from 2 and sends to 1 (itself excluded from both lists)."""
    topo = from_matrix(_t([[0.5, 0.0, 0.5], [0.5, 0.5, 0.0], [0.0, 0.5, 0.5]]))
    assert [topo.in_neighbors(i) for i in range(3)] == [[2], [0], [1]]
    assert [topo.out_neighbors(i) for i in range(3)] == [[1], [2], [0]]
    assert topo.doubly_stochastic  # a cycle with equal weights is
    skew = from_matrix(_t([[0.5, 0.0, 1.0], [0.5, 0.5, 0.0], [0.0, 0.5, 0.0]]))
    assert not skew.doubly_stochastic  # row sums 1.5, 1, 0.5


@pytest.mark.parametrize("n", [5, 8, 12])
def test_ring_spectral_gap_is_the_circulant_formula(n: int) -> None:
    """Eigenvalues of the 1/3 ring: ``1/3 + 2/3 cos(2 pi k / n)``; the gap is 1 minus the
    largest modulus after the 1."""
    moduli = sorted(abs(1 / 3 + 2 / 3 * math.cos(2 * math.pi * k / n)) for k in range(1, n))
    assert ring(n).spectral_gap() == pytest.approx(1 - moduli[-1], abs=1e-12)


def test_spectral_gap_counts_negative_eigenvalues_by_modulus() -> None:
    """``[[0.1, 0.9], [0.9, 0.1]]`` has eigenvalues 1 and -0.8: it oscillates, gap 0.2."""
    assert from_matrix(_t([[0.1, 0.9], [0.9, 0.1]])).spectral_gap() == pytest.approx(0.2)
    assert complete(6).spectral_gap() == pytest.approx(1.0)


@pytest.mark.parametrize("n", [4, 8, 16])
def test_spectral_gap_of_a_time_varying_graph_is_that_of_its_cycle(n: int) -> None:
    """The one-peer exponential cycle multiplies to ``J / n`` at a power of two (above): the
    gap over one period is 1. Step 0's graph alone (a directed ring, half-half) has gap
    ``1 - |1/2 + 1/2 e^(2 pi i / n)| = 1 - cos(pi / n)``, which is what was reported."""
    topo = one_peer_exponential(n)
    assert topo.spectral_gap() == pytest.approx(1.0, abs=1e-12)
    assert topo.at(0).spectral_gap() == pytest.approx(1 - math.cos(math.pi / n), abs=1e-12)


def test_spectral_gap_of_a_disconnected_graph_is_zero_not_negative() -> None:
    """Step 1 of the one-peer graph on 8 nodes pushes ``i -> i + 2``: evens and odds never
    meet, ``lambda_2 = 1`` exactly, which rounding made ``1 + 2e-16`` (gap -0.0000)."""
    assert one_peer_exponential(8).at(1).spectral_gap() == 0.0
    assert one_peer_exponential(8).at(2).spectral_gap() == 0.0  # i -> i + 4: four pairs
    assert from_edges(4, [(0, 1), (2, 3)]).spectral_gap() == 0.0


def test_components_are_the_groups_that_reach_one_another() -> None:
    assert from_edges(4, [(0, 1), (2, 3)]).components() == [[0, 1], [2, 3]]
    assert from_edges(5, [(3, 1)]).components() == [[0], [1, 3], [2], [4]]
    assert ring(5).components() == [[0, 1, 2, 3, 4]]
    assert ring(1).components() == [[0]]  # a single node is connected
    # Time-varying: every step of the one-peer graph on 8 nodes but the first is disconnected
    # (hops 2 and 4); the union over the cycle is not.
    topo = one_peer_exponential(8)
    assert topo.at(1).components() == [[0, 2, 4, 6], [1, 3, 5, 7]]
    assert topo.at(2).components() == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert topo.components() == [list(range(8))]
    steps_1_and_2 = Topology("hops 2, 4", topo.at(1).mixing_WW, cycle=(topo.at(1), topo.at(2)))
    assert steps_1_and_2.components() == [[0, 2, 4, 6], [1, 3, 5, 7]]
    # Directed: 2 -> 1 -> 0 (M[i, j] > 0: i takes from j) links all three, one way only; mass
    # never flows back, so each node is its own strongly connected group. The cycle is one.
    chain = from_matrix(_t([[1.0, 0.5, 0.0], [0.0, 0.5, 0.5], [0.0, 0.0, 0.5]]))
    assert chain.components() == [[0], [1], [2]]
    cycle = from_matrix(_t([[0.5, 0.0, 0.5], [0.5, 0.5, 0.0], [0.0, 0.5, 0.5]]))
    assert cycle.components() == [[0, 1, 2]]


def test_spectral_gap_orders_ring_torus_exponential_complete() -> None:
    """``reference/``'s table: ring Theta(1/n^2) < torus Theta(1/n) < exponential < complete."""
    gaps = [t.spectral_gap() for t in (ring(16), torus(4, 4), exponential(16), complete(16))]
    assert gaps == sorted(gaps) and len(set(gaps)) == 4


def test_mixing_matrices_are_validated() -> None:
    with pytest.raises(ValueError, match="square"):
        Topology("wide", torch.full((2, 3), 0.5, dtype=torch.float64))
    with pytest.raises(ValueError, match="non-negative"):
        from_matrix(_t([[1.5, 0.5], [-0.5, 0.5]]))  # columns sum to 1
    with pytest.raises(ValueError, match="columns must sum to 1"):
        from_matrix(_t([[0.5, 0.5], [0.2, 0.2]]))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_mixing_weights_must_be_finite(bad: float) -> None:
    # NaN was blamed on the column sums ("columns must sum to 1"); -inf on the sign.
    with pytest.raises(ValueError, match=f"mixing weights must be finite, got {bad}"):
        from_matrix(_t([[bad, 0.5], [0.5, 0.5]]))


def test_sums_to_one_have_no_relative_tolerance() -> None:
    """``torch.allclose``'s default ``rtol=1e-5`` decided: rows summing to ``1 +- 4e-6`` passed
    as doubly stochastic, and columns off by as much as a mixing matrix."""
    off = 4e-6
    rows_off = from_matrix(_t([[0.5, 0.5 + off], [0.5, 0.5 - off]]))  # columns sum to 1
    assert not rows_off.doubly_stochastic
    with pytest.raises(ValueError, match="columns must sum to 1"):
        from_matrix(_t([[0.5, 0.5], [0.5 + off, 0.5]]))
    # Weights rounded to float32 (thirds: each column sums to 1 + 3e-8) are still accepted.
    third = torch.tensor(1 / 3, dtype=torch.float32)
    thirds = from_matrix(torch.full((3, 3), float(third), dtype=torch.float32))
    assert thirds.doubly_stochastic


def test_from_matrix_copies_the_callers_tensor() -> None:
    m = torch.eye(3, dtype=torch.float64)
    topo = from_matrix(m)
    m[0, 0] = 0.0
    assert float(topo.mixing_WW[0, 0]) == 1.0


@pytest.mark.parametrize(("n", "degree"), [(7, 6), (8, 5), (11, 8), (13, 8), (16, 7)])
def test_exponential_degree_is_2_ceil_log2_n_minus_one_at_powers_of_two(
    n: int, degree: int
) -> None:
    """The docstring's bound: ``2 ceil(log2 n)`` neighbours, one fewer when ``n`` is a power of
    two (``+n/2`` and ``-n/2`` are one node); counted by hand for each ``n``."""
    assert max(len(exponential(n).in_neighbors(i)) for i in range(n)) == degree


def test_star_keeps_its_hub_and_averages_like_complete() -> None:
    topo = star(5, hub=3)
    assert topo.hub == 3 and star(5).hub == 0 and complete(5).hub is None
    torch.testing.assert_close(topo.mixing_WW, torch.full((5, 5), 0.2, dtype=torch.float64))
    for hub in (-1, 5):
        with pytest.raises(ValueError, match="hub must be a node in 0..4"):
            star(5, hub=hub)


def test_topologies_by_name_build_the_named_graph() -> None:
    for name, make in TOPOLOGIES.items():
        assert make(8).name == name


def test_graphs_compare_by_their_weights_and_name_them_in_full() -> None:
    """== raised ("Boolean value of Tensor ... is ambiguous"), and the repr a resume checks
    abbreviated matrices over 1,000 entries: two custom 40-node graphs looked the same."""
    assert ring(4) == ring(4) and ring(4) != ring(5) and ring(5) != exponential(5)
    assert len({ring(4), ring(4), complete(4)}) == 2
    a = from_matrix(ring(40).mixing_WW, "custom")
    b = from_matrix(exponential(40).mixing_WW, "custom")
    assert a != b and repr(a) != repr(b) and "40 nodes" in repr(a)
    # A time-varying graph is named by every step of its cycle, not its first only.
    c = Topology("cycle", ring(4).mixing_WW, cycle=(ring(4), complete(4)))
    d = Topology("cycle", ring(4).mixing_WW, cycle=(ring(4), ring(4)))
    assert repr(c) != repr(d)
