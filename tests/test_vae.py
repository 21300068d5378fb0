import io
import math

import numpy as np
import pytest
import torch

from diffusion_lib.data import make_shapes
from diffusion_lib.models import VAE, VAE_PRESETS, DiagonalGaussian, VAEConfig, measure_latent_scale, vae_loss


def tiny_config(**overrides):
    kw = dict(in_channels=3, image_size=16, base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
              latent_channels=2, num_groups=4)
    kw.update(overrides)
    return VAEConfig(**kw)


def test_presets_shapes_and_sizes():
    fashion = VAEConfig.preset("fashion_f4")
    assert fashion.downsampling_factor == 4 and fashion.latent_shape == (4, 8, 8)
    report = VAEConfig.preset("report_imagenet100")
    assert report.downsampling_factor == 4 and report.latent_shape == (3, 32, 32)
    with torch.device("meta"):
        assert sum(p.numel() for p in VAE(report).parameters()) == 55_312_009
    assert sum(p.numel() for p in VAE(fashion).parameters()) == 953_321
    for name in VAE_PRESETS:
        assert VAEConfig.from_dict(VAEConfig.preset(name).to_dict()) == VAEConfig.preset(name)


def test_fashion_f4_maps_32_to_8():
    torch.manual_seed(0)
    vae = VAE(VAEConfig.preset("fashion_f4"))
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    out = vae(x)
    assert out.posterior.mean.shape == (2, 4, 8, 8) and out.posterior.logvar.shape == (2, 4, 8, 8)
    assert out.reconstruction.shape == x.shape
    assert vae.decode(torch.randn(3, 4, 8, 8)).shape == (3, 1, 32, 32)


def test_kl_matches_closed_form_and_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    logvar = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    kl = DiagonalGaussian(mean, logvar).kl()
    # closed form, written independently: sum over dims of log(1/sigma) + (sigma^2 + mu^2 - 1) / 2
    m, s2 = mean.numpy(), np.exp(logvar.numpy())
    expected = (-0.5 * np.log(s2) + 0.5 * (s2 + m ** 2 - 1)).reshape(3, -1).sum(1)
    np.testing.assert_allclose(kl.numpy(), expected, rtol=1e-12)
    q = torch.distributions.Normal(mean, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    torch.testing.assert_close(kl, torch.distributions.kl_divergence(q, p).flatten(1).sum(1))
    zero = DiagonalGaussian(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 2)).kl()
    assert zero.item() == 0.0


def test_posterior_sampling_is_reparameterised_and_seeded():
    mean = torch.full((1, 1, 100, 100), 2.0)
    posterior = DiagonalGaussian(mean, torch.full_like(mean, math.log(0.25)))  # std 0.5
    z = posterior.sample(torch.Generator().manual_seed(1))
    assert abs(z.mean().item() - 2.0) < 0.02 and abs(z.std().item() - 0.5) < 0.02
    assert torch.equal(z, posterior.sample(torch.Generator().manual_seed(1)))
    assert torch.equal(posterior.mode(), mean)


def test_vae_loss_parts():
    torch.manual_seed(0)
    vae = VAE(tiny_config())
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    out = vae(x, torch.Generator().manual_seed(0))
    parts = vae_loss(x, out, beta=0.5)
    rec = ((out.reconstruction - x) ** 2).sum(dim=(1, 2, 3)).mean()
    torch.testing.assert_close(parts["reconstruction"], rec)
    torch.testing.assert_close(parts["kl"], out.posterior.kl().mean())
    torch.testing.assert_close(parts["loss"], rec + 0.5 * parts["kl"])
    with pytest.raises(ValueError, match="beta"):
        vae_loss(x, out, beta=-1)


def test_training_steps_lower_the_loss():
    torch.manual_seed(0)
    vae = VAE(tiny_config())
    x = make_shapes(8, 16)[0].float() / 127.5 - 1
    opt = torch.optim.Adam(vae.parameters(), lr=2e-3)
    losses = []
    for step in range(30):
        loss = vae_loss(x, vae(x, torch.Generator().manual_seed(step)), beta=1e-2)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]


def test_latent_scale_unset_is_an_error():
    vae = VAE(tiny_config())
    assert not vae.has_latent_scale and math.isnan(vae.latent_scale.item())
    with pytest.raises(RuntimeError, match="measure_latent_scale"):
        vae.encode_scaled(torch.zeros(1, 3, 16, 16))
    with pytest.raises(RuntimeError, match="never measured"):
        vae.decode_scaled(torch.zeros(1, 2, 8, 8))
    with pytest.raises(ValueError, match="positive"):
        vae.set_latent_scale(0.0)


def test_measured_scale_gives_unit_variance_and_round_trips():
    torch.manual_seed(0)
    vae = VAE(tiny_config()).eval()
    images = torch.rand(12, 3, 16, 16) * 2 - 1
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, torch.zeros(12)), batch_size=5)
    scale = measure_latent_scale(vae, loader, sample=False)  # (x, y) batches
    assert vae.has_latent_scale and vae.latent_scale.item() == pytest.approx(scale)
    with torch.no_grad():
        z = vae.encode_scaled(images, sample=False)
        torch.testing.assert_close(z.std(), torch.tensor(1.0), atol=1e-5, rtol=0)
        torch.testing.assert_close(z, vae.encode(images).mean * scale)
        torch.testing.assert_close(vae.decode_scaled(z), vae.decode(vae.encode(images).mean), atol=1e-5, rtol=1e-5)
        sampled = vae.encode_scaled(images, torch.Generator().manual_seed(0))
        assert torch.equal(sampled, vae.encode_scaled(images, torch.Generator().manual_seed(0)))
    assert vae.training is False


def test_scale_is_stored_in_the_state_dict():
    vae = VAE(tiny_config())
    vae.set_latent_scale(0.18215)
    buffer = io.BytesIO()
    torch.save(vae.state_dict(), buffer)
    buffer.seek(0)
    restored = VAE(tiny_config())
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert restored.latent_scale.item() == pytest.approx(0.18215)


def test_measure_needs_data():
    with pytest.raises(ValueError, match="at least one batch"):
        measure_latent_scale(VAE(tiny_config()), [])


@pytest.mark.parametrize("shape, match", [
    ((1, 1, 16, 16), "in_channels=3"),
    ((1, 3, 17, 17), "multiples of 2"),
    ((3, 16, 16), "4-D"),
])
def test_bad_images(shape, match):
    with pytest.raises(ValueError, match=match):
        VAE(tiny_config()).encode(torch.zeros(shape))


def test_bad_latents_and_configs():
    with pytest.raises(ValueError, match="latent_channels=2"):
        VAE(tiny_config()).decode(torch.zeros(1, 4, 8, 8))
    with pytest.raises(ValueError, match="downsampling factor"):
        tiny_config(image_size=17)
    with pytest.raises(ValueError, match="valid keys"):
        VAEConfig.from_dict({"z_channels": 3})
    with pytest.raises(ValueError, match="available"):
        VAEConfig.preset("sd")
