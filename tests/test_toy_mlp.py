"""ToyMLP: the small denoiser for 2-D toy data."""

import pytest
import torch

from diffusion_lib import NoiseSchedule
from diffusion_lib.data import toy_2d
from diffusion_lib.models.layers import timestep_embedding
from diffusion_lib.models.toy import ToyMLP
from diffusion_lib.objective import diffusion_loss


def test_shapes_time_and_labels():
    torch.manual_seed(0)
    model = ToyMLP(dim=2, hidden=32, depth=2, num_classes=3)
    x = torch.randn(5, 2)
    t = torch.tensor([0, 1, 10, 500, 999])
    out = model(x, t, torch.tensor([0, 1, 2, 3, 0]))
    assert out.shape == (5, 2) and out.dtype == torch.float32
    assert model.null_label == 3
    torch.testing.assert_close(model(x, t), model(x, t, torch.full((5,), 3)))  # y=None is the null label
    assert not torch.allclose(model(x, t, 0), model(x, t, 1))  # the label matters
    assert not torch.allclose(model(x, torch.full((5,), 3)), model(x, torch.full((5,), 700)))  # so does t
    assert ToyMLP(dim=3, num_classes=None)(torch.randn(4, 3), 7).shape == (4, 3)  # scalar t


def test_uses_the_unets_time_embedding():
    import diffusion_lib.models.toy as toy

    assert toy.timestep_embedding is timestep_embedding  # shared, not a copy


def test_float64_and_determinism():
    torch.manual_seed(1)
    a = ToyMLP(hidden=16).double()
    torch.manual_seed(1)
    b = ToyMLP(hidden=16).double()
    x = torch.randn(3, 2, dtype=torch.float64)
    assert a(x, torch.tensor([1, 2, 3])).dtype == torch.float64
    torch.testing.assert_close(a(x, torch.tensor([1, 2, 3])), b(x, torch.tensor([1, 2, 3])))


@pytest.fixture
def one_thread():
    """Tiny ops gain nothing from threads, and one thread avoids waiting for busy cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_a_few_hundred_steps_learn_something(one_thread):
    torch.manual_seed(0)
    schedule = NoiseSchedule.linear(1000)
    model = ToyMLP(hidden=64, depth=2)
    data = toy_2d("gaussian_mixture", 4096, 0)
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)

    def eval_loss():
        with torch.no_grad():
            return diffusion_loss(model, schedule, data[:2048], generator=torch.Generator().manual_seed(1)).item()

    before = eval_loss()
    for _ in range(300):
        loss = diffusion_loss(model, schedule, data[torch.randint(0, 4096, (256,), generator=g)], generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert eval_loss() < 0.6 * before


def test_bad_inputs():
    model = ToyMLP(num_classes=2)
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        model(torch.randn(3, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="t must have shape"):
        model(torch.randn(3, 2), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="null label"):
        model(torch.randn(3, 2), torch.zeros(3, dtype=torch.long), torch.tensor([0, 1, 3]))
    with pytest.raises(ValueError, match="unconditional"):
        ToyMLP()(torch.randn(3, 2), torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="hidden"):
        ToyMLP(hidden=0)
