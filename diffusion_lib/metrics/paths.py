"""How straight a sampler's path is: the mean distance of its states from the chord x_T → x_0.

A straight path is what lets an ODE solver take few steps (Liu et al. 2023, "Flow Straight and Fast",
§2: on a straight path one Euler step is exact). The number here is geometric, so it compares samplers
with different time variables (DDIM's timesteps, flow matching's t): it needs only the visited states.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def chord_deviation(states: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per sample, the mean distance of a path from its chord, averaged along the path's length, over the
    chord's length.

    ``states``: the visited states from the start (e.g. the noise x_T) to the end (the sample), each
    (N, ...); the path is the polygon through them. With the chord c = states[K] − states[0] and
    d_k = states[k] − states[0], state k lies D_k = ‖d_k − (d_k·c/‖c‖²) c‖ from the straight line through
    both ends. Averaged over arc length (trapezoid rule on the segments of length ℓ_k):

        deviation = Σ_k ℓ_k (D_k + D_{k+1}) / 2  /  (Σ_k ℓ_k · ‖c‖).

    Weighting by length rather than by state makes it a property of the curve, not of where a sampler's
    time grid puts its states (DDIM's leading timesteps put many near the noise, where it hardly moves).
    0 for a straight path at any speed; 1/4 for the polygon (0, 0) → (1, 1) → (2, 0); (2/π)(1 − π/4) ≈ 0.137
    for a quarter circle. Computed in float64. Returns (N,).
    """
    if isinstance(states, torch.Tensor) or not isinstance(states, Sequence) or len(states) < 3:
        raise ValueError(f"states must be a list of at least 3 tensors (start, intermediate states, end), "
                         f"got {type(states).__name__}" + (f" of length {len(states)}" if isinstance(states, Sequence) else ""))
    shape = states[0].shape
    if not all(isinstance(s, torch.Tensor) and s.shape == shape for s in states) or len(shape) < 1:
        raise ValueError(f"states must all be tensors of one shape (N, ...), got shapes "
                         f"{[tuple(getattr(s, 'shape', ())) for s in states]}")
    start = states[0].reshape(shape[0], -1).double()
    chord = states[-1].reshape(shape[0], -1).double() - start
    length = chord.norm(dim=1)
    if bool((length == 0).any()):
        raise ValueError("states: a sample ends where it starts (a chord of length 0), so its deviation is undefined")
    unit = chord / length[:, None]
    area, arc = torch.zeros_like(length), torch.zeros_like(length)
    previous, previous_distance = start, torch.zeros_like(length)
    for state in states[1:]:
        x = state.reshape(shape[0], -1).double()
        d = x - start
        distance = (d - (d * unit).sum(1, keepdim=True) * unit).norm(dim=1)
        segment = (x - previous).norm(dim=1)
        area += segment * (distance + previous_distance) / 2
        arc += segment
        previous, previous_distance = x, distance
    return area / arc / length
