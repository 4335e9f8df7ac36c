"""Order parameters of two-layer networks: against hand computation and float64 loops,
invariance to relabelling the student's units, and the aligned order."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import basinscope.analyses as A
from basinscope.analyses.order_parameters import OrderParameters, align_units, order_parameters
from basinscope.errors import BasinscopeError
from basinscope.models import soft_committee, two_layer_relu
from basinscope.result import Result


def test_overlaps_by_hand():
    w = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    v = torch.tensor([[0.0, 1.0]])
    op = order_parameters(w, v)
    np.testing.assert_allclose(op.R, [[0.0], [1.0]])  # (w . v) / d with d = 2
    np.testing.assert_allclose(op.Q, [[0.5, 0.0], [0.0, 2.0]])
    np.testing.assert_allclose(op.T, [[0.5]])
    assert op.permutation == (1, 0) and op.matched == (0, -1)
    raw = order_parameters(w, v, normalize="none")
    np.testing.assert_allclose(raw.R, [[0.0], [2.0]])


def test_overlaps_match_float64_loops_on_models():
    torch.manual_seed(0)
    student, teacher = two_layer_relu(5, 4), soft_committee(torch.randn(3, 5))
    op = order_parameters(student, teacher)
    w = student.fc1.weight.detach().double().numpy()
    v = teacher.fc1.weight.detach().double().numpy()
    for k in range(4):
        for m in range(3):
            assert op.R[k, m] == pytest.approx(sum(w[k, i] * v[m, i] for i in range(5)) / 5)
        for j in range(4):
            assert op.Q[k, j] == pytest.approx(sum(w[k, i] * w[j, i] for i in range(5)) / 5)
    a = student.fc2.weight.detach().double().numpy()[0]
    np.testing.assert_allclose(op.student_out, a[list(op.permutation)])
    np.testing.assert_allclose(op.teacher_out, [1.0, 1.0, 1.0])
    np.testing.assert_allclose(op.aligned_R, op.R[list(op.permutation)])


def test_the_aligned_summary_does_not_depend_on_the_units_order():
    rng = np.random.default_rng(1)
    v = rng.standard_normal((3, 6))
    w = rng.standard_normal((5, 6))
    base = order_parameters(w, v)
    for _ in range(5):
        p = rng.permutation(5)
        other = order_parameters(w[p], v)
        np.testing.assert_allclose(other.vector(), base.vector())
    assert isinstance(base, Result) and base.kind == "order_parameters"
    again = OrderParameters.from_dict(base.to_dict())
    np.testing.assert_allclose(again.vector(), base.vector())
    assert A.order_parameters is order_parameters  # the function, not the module


def test_alignment_matches_the_largest_total_overlap_then_sorts_the_rest():
    # unit 2 overlaps teacher 0 most, unit 0 teacher 1; unit 1 is a smaller copy of teacher 0
    R = np.array([[0.1, 0.9], [0.4, 0.0], [0.8, 0.2]])
    order, matched = align_units(R)
    assert order == [2, 0, 1] and matched == [0, 1, -1]


def test_mismatched_inputs_are_refused():
    with pytest.raises(BasinscopeError, match="input dimensions"):
        order_parameters(torch.ones(2, 3), torch.ones(2, 4))
    with pytest.raises(BasinscopeError, match="no Linear layer named"):
        order_parameters(two_layer_relu(3, 2), two_layer_relu(3, 2), layer="nope")
