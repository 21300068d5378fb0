import pytest
import torch

from diffusion_lib.models import Classifier, ClassifierConfig


def test_shapes_and_features():
    torch.manual_seed(0)
    model = Classifier().eval()
    x = torch.rand(5, 1, 32, 32) * 2 - 1
    assert model(x).shape == (5, 10)
    features = model.features(x)
    assert features.shape == (5, model.config.feature_dim) == (5, 128)
    torch.testing.assert_close(model.head(features), model(x))  # logits = head(features) in eval mode
    assert 100_000 < sum(p.numel() for p in model.parameters()) < 1_000_000


def test_a_few_steps_fit_a_small_batch():
    torch.manual_seed(0)
    model = Classifier(ClassifierConfig(channels=(8, 16), dropout=0.0))
    x = torch.rand(16, 1, 32, 32) * 2 - 1
    y = torch.arange(16) % 10
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(40):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert (model(x).argmax(1) == y).float().mean() > 0.9  # batch statistics (train mode)


def test_bad_input_and_config():
    with pytest.raises(ValueError, match=r"\(N, 1, 32, 32\)"):
        Classifier()(torch.zeros(2, 3, 32, 32))
    with pytest.raises(ValueError, match="multiple"):
        ClassifierConfig(image_size=28, channels=(8, 16, 32))
    assert ClassifierConfig.from_dict(ClassifierConfig().to_dict()) == ClassifierConfig()
    with pytest.raises(ValueError, match="valid keys"):
        ClassifierConfig.from_dict({"width": 3})
