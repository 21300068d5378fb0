"""How straight a sampler's path is: the mean distance of its states from the chord x_T → x_0.

A straight path is what lets an ODE solver take few steps (Liu et al. 2023, "Flow Straight and Fast",
§2: on a straight path one Euler step is exact). The number here is geometric, so it compares samplers
with different time variables (DDIM's timesteps, flow matching's t): it needs only the visited states.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def chord_deviation(states: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per sample, the mean distance of the intermediate states from the chord, over the chord's length.

    ``states``: x_0 = states[0] (the start, e.g. the noise x_T), ..., states[K] (the end, the sample),
    each (N, ...). With the chord c = states[K] − states[0] and d_k = states[k] − states[0], the
    distance of state k from the straight line through both ends is ‖d_k − (d_k·c/‖c‖²) c‖, and

        deviation = (1/(K − 1)) Σ_{k=1}^{K−1} ‖d_k − (d_k·c/‖c‖²) c‖ / ‖c‖,

    0 for a straight path whatever its speed along it; 1/2 for the path (0, 0) → (1, 1) → (2, 0), whose
    one intermediate state lies ‖c‖/2 from the chord. Computed in float64. Returns (N,).
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
    total = torch.zeros_like(length)
    for state in states[1:-1]:
        d = state.reshape(shape[0], -1).double() - start
        total += (d - (d * unit).sum(1, keepdim=True) * unit).norm(dim=1)
    return total / (len(states) - 2) / length
