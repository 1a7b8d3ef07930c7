"""Test support: a dense float64 NumPy reference and seeded problems.

Nothing here imports rifscale's engine modules: the reference is an independent
implementation of docs/design.md §1–2 that the distributed results are compared against.
"""

from .problems import Problem, make_problem, make_softmax_problem
from .reference import Reference
from .softmax_reference import SoftmaxReference
from .stores import spoil_chunks

__all__ = ["Problem", "Reference", "SoftmaxReference", "make_problem", "make_softmax_problem", "spoil_chunks"]
