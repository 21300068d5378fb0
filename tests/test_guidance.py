"""Classifier-free guidance: ε̃ = ε_u + w(ε_c − ε_u), one batched forward, w = 0 / 1 / linear in w."""

import pytest
import torch

from diffusion_lib import NoiseSchedule, classifier_free_guidance, ddim_sample

NULL = 10


class LabelModel(torch.nn.Module):
    """A toy conditional model whose output depends on x, t and the label; records its batch sizes."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(NULL + 1, 3)
        self.batches = []

    def forward(self, x, t, y=None):
        self.batches.append(x.shape[0])
        return torch.tanh(x * (1 + t[:, None] / 1000) + self.emb(y))


@pytest.fixture
def setup():
    torch.manual_seed(0)
    model = LabelModel()
    x = torch.randn(5, 3)
    t = torch.randint(0, 1000, (5,))
    y = torch.tensor([0, 3, 3, 9, 1])
    with torch.no_grad():
        cond = model(x, t, y)
        uncond = model(x, t, torch.full_like(y, NULL))
    model.batches.clear()
    return model, x, t, y, cond, uncond


def test_scale_zero_is_unconditional_and_one_is_conditional(setup):
    model, x, t, y, cond, uncond = setup
    with torch.no_grad():
        assert torch.allclose(classifier_free_guidance(model, 0.0, NULL)(x, t, y), uncond, atol=1e-6)
        assert torch.allclose(classifier_free_guidance(model, 1.0, NULL)(x, t, y), cond, atol=1e-6)


def test_linear_in_the_scale_and_ho_salimans_weight(setup):
    model, x, t, y, cond, uncond = setup
    with torch.no_grad():
        for w in (0.5, 3.0, 7.5):  # the course's guidance scale w (Saharia et al. 2022, diffusers)
            guided = classifier_free_guidance(model, w, NULL)(x, t, y)
            assert torch.allclose(guided, uncond + w * (cond - uncond), atol=1e-5)
            weight = w - 1  # Ho & Salimans 2022, eq. 6: (1 + weight) ε_c − weight ε_u
            assert torch.allclose(guided, (1 + weight) * cond - weight * uncond, atol=1e-5)


def test_one_batched_forward(setup):
    model, x, t, y, _, _ = setup
    with torch.no_grad():
        classifier_free_guidance(model, 4.0, NULL)(x, t, y)
    assert model.batches == [10]


def test_guided_model_in_a_sampler():
    model = LabelModel()
    guided = classifier_free_guidance(model, 3.0, NULL)
    schedule = NoiseSchedule.linear(100)
    y = torch.tensor([1, 2, 3])
    a = ddim_sample(guided, schedule, shape=(3, 3), y=y, num_steps=5, generator=torch.Generator().manual_seed(0))
    b = ddim_sample(guided, schedule, shape=(3, 3), y=y, num_steps=5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and model.batches == [6] * 10 and torch.isfinite(a).all()


def test_bad_guidance_arguments(setup):
    model, x, t, y, _, _ = setup
    for bad in (-1.0, float("nan"), "2"):
        with pytest.raises(ValueError, match="guidance_scale"):
            classifier_free_guidance(model, bad, NULL)
    for bad in (-1, 1.5, None):
        with pytest.raises(ValueError, match="null_label"):
            classifier_free_guidance(model, 2.0, bad)
    with pytest.raises(TypeError, match="model"):
        classifier_free_guidance("not a model", 2.0, NULL)
    guided = classifier_free_guidance(model, 2.0, NULL)
    with pytest.raises(ValueError, match="labels y"):
        guided(x, t)
    with pytest.raises(ValueError, match="y must have shape"):
        guided(x, t, y[:2])
