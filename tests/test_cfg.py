"""Classifier-free guidance end to end: label dropout in the trainer, guided sampling against an exact
float64 propagation, the direction guidance moves samples, the guidance sweep, and bad input."""

import math

import pytest
import torch
from analytic_gaussian import assert_moments, eps_affine, one_thread  # noqa: F401 (fixture)

from diffusion_lib import (
    NoiseSchedule,
    classifier_free_guidance,
    ddim_sample,
    ddpm_sample,
    make_timesteps,
)
from diffusion_lib.models.analytic import GaussianDenoiser, MixtureDenoiser
from diffusion_lib.training.config import load_config
from diffusion_lib.training.randomness import StepRandom
from diffusion_lib.pipelines.guidance_sweep import (
    GuidanceSweepResult,
    guidance_sweep,
    plot_guidance_sweep,
    sample_classes,
    sweep_table,
    table_html,
)
from diffusion_lib.models import UNet, UNetConfig
from diffusion_lib.training.tasks.diffusion import diffusion_loss_fn

pytestmark = pytest.mark.usefixtures("one_thread")

# x0 | y = 0 ~ N(0.8, 0.3²); the "unconditional" model: N(0.1, 0.7²) (both per coordinate).
COND, UNCOND = (0.8, 0.3), (0.1, 0.7)
NULL = 1


class GaussianPair:
    """A class-conditional model made of two optimal Gaussian denoisers: y = 0 → N(COND), null → N(UNCOND).

    Both predictions are affine in x_t, so the guided ε̃ = ε_u + w(ε_c − ε_u) is affine too."""

    null_label = NULL

    def __init__(self, schedule):
        self.cond = GaussianDenoiser(schedule, *COND)
        self.uncond = GaussianDenoiser(schedule, *UNCOND)

    def __call__(self, x, t, y):
        null = (y == NULL).reshape(-1, *([1] * (x.ndim - 1)))
        return torch.where(null, self.uncond(x, t), self.cond(x, t))


def guided_eps(ab: float, w: float) -> tuple[float, float]:
    """(e0, e1) with ε̃ = e0 + e1·x_t for the guided pair."""
    (c0, c1), (u0, u1) = eps_affine(ab, *COND), eps_affine(ab, *UNCOND)
    return u0 + w * (c0 - u0), u1 + w * (c1 - u1)


def guided_ddim_moments(schedule, timesteps, w, eta):
    """Exact (mean, var) of DDIM (Song et al. 2021, eqs. 12 and 16) driven by the guided ε̃, from
    x_T ~ N(0, 1), in float64: x̂0 = (x − √(1−ᾱ_t) ε̃)/√ᾱ_t, x_prev = √ᾱ_prev x̂0 + √(1 − ᾱ_prev − σ²) ε̃ + σ z."""
    ab = schedule.alpha_bar.tolist()
    ts = timesteps.tolist()
    m, v = 0.0, 1.0
    for i, t in enumerate(ts):
        ab_t, ab_prev = ab[t], (ab[ts[i + 1]] if i + 1 < len(ts) else 1.0)
        sigma = eta * math.sqrt((1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev))
        e0, e1 = guided_eps(ab_t, w)
        a, b = math.sqrt(ab_t), math.sqrt(1 - ab_t)
        c0, c1 = -b * e0 / a, (1 - b * e1) / a  # x̂0 = c0 + c1·x
        k = math.sqrt(max(1 - ab_prev - sigma**2, 0.0))
        p, q = math.sqrt(ab_prev) * c1 + k * e1, math.sqrt(ab_prev) * c0 + k * e0
        m, v = p * m + q, p * p * v + sigma**2
    return m, v


def guided_ddpm_moments(schedule, w):
    """Exact (mean, var) of ancestral sampling (Ho et al. 2020, Algorithm 2, σ_t² = β̃_t) with ε̃."""
    ab, betas = schedule.alpha_bar.tolist(), schedule.betas.tolist()
    m, v = 0.0, 1.0
    for t in range(schedule.num_timesteps - 1, -1, -1):
        e0, e1 = guided_eps(ab[t], w)
        k = betas[t] / math.sqrt(1 - ab[t])
        p, q = (1 - k * e1) / math.sqrt(1 - betas[t]), -k * e0 / math.sqrt(1 - betas[t])
        s2 = 0.0 if t == 0 else betas[t] * (1 - ab[t - 1]) / (1 - ab[t])
        m, v = p * m + q, p * p * v + s2
    return m, v


# ----------------------------------------------------------------------------------- label dropout
@pytest.mark.parametrize("p_uncond", [0.1, 0.3])
def test_trainer_drops_labels_at_rate_p_uncond(p_uncond, tmp_path):
    config = load_config(None, [f"p_uncond={p_uncond}", "class_conditional=true", f"output_dir={tmp_path}"])
    seen = []

    def model(x_t, t, y):
        seen.append(y.clone())
        return torch.zeros_like(x_t)

    loss_fn = diffusion_loss_fn(NoiseSchedule.linear(100), config, null_label=10)
    batch = 2000
    for step in range(10):
        loss_fn(model, torch.zeros(batch, 1, 2, 2), torch.arange(batch) % 10, StepRandom(0, step, batch))
    y = torch.cat(seen)
    dropped = (y == 10).double().mean().item()
    n = len(y)
    assert abs(dropped - p_uncond) < 4 * math.sqrt(p_uncond * (1 - p_uncond) / n)
    kept = y != 10
    assert torch.equal(y[kept], (torch.arange(batch) % 10).repeat(10)[kept])  # the others are untouched


# ------------------------------------------------------------------------- exact guided sampling
@pytest.mark.parametrize("w", [0.0, 1.0, 3.0])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_guided_ddim_matches_exact_propagation(w, eta):
    schedule = NoiseSchedule.linear(1000)
    guided = classifier_free_guidance(GaussianPair(schedule), w, NULL)
    n = 10_000
    x = ddim_sample(guided, schedule, shape=(n, 2), y=torch.zeros(n, dtype=torch.long), num_steps=100, eta=eta,
                    generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    mean, var = guided_ddim_moments(schedule, make_timesteps(1000, 100, "leading"), w, eta)
    assert_moments(x, mean, var)
    if w == 1.0:  # plain conditional sampling: near the class's own N(0.8, 0.3²), up to the discretisation error
        assert abs(mean - COND[0]) < 0.01 and abs(math.sqrt(var) - COND[1]) < 0.03


def test_guided_ddpm_matches_exact_propagation():
    schedule = NoiseSchedule.linear(200, beta_start=1e-3, beta_end=0.05)
    guided = classifier_free_guidance(GaussianPair(schedule), 2.0, NULL)
    n = 10_000
    x = ddpm_sample(guided, schedule, shape=(n, 2), y=torch.zeros(n, dtype=torch.long),
                    generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert_moments(x, *guided_ddpm_moments(schedule, 2.0))


def test_guidance_moves_the_mean_toward_the_class_and_narrows():
    # Exact: the guided mean runs from the unconditional mean (w = 0) to the class mean (w = 1) and on,
    # away from the unconditional one, up to w ≈ 3 (1.05 there, then back toward 1.0 as the samples
    # collapse: 0.995 at w = 7.5); the spread shrinks at every step of w.
    schedule = NoiseSchedule.linear(1000)
    timesteps = make_timesteps(1000, 250, "leading")
    scales = (0, 0.5, 1, 2, 3, 5, 7.5)
    moments = [guided_ddim_moments(schedule, timesteps, w, 0.0) for w in scales]
    means, stds = [m for m, _ in moments], [math.sqrt(v) for _, v in moments]
    assert abs(means[0] - UNCOND[0]) < 0.01 and abs(means[2] - COND[0]) < 0.01
    assert all(a < b for a, b in zip(means[:5], means[1:5]))
    assert all(a > b for a, b in zip(stds, stds[1:])) and stds[-1] < 0.01


def test_mixture_guidance_moves_samples_toward_their_class():
    # Three classes in 2-D; the null label is the whole mixture. Class 0's guided samples leave the
    # other classes behind: their mean approaches class 0's mean from w = 0 to 1, then moves on away
    # from the others, and fewer samples land nearer another class's mean.
    schedule = NoiseSchedule.linear(1000)
    means = torch.tensor([[2.0, 0.0], [-1.0, 1.5], [-1.0, -1.5]])
    model = MixtureDenoiser(schedule, [1, 1, 1], means, 0.8)
    n = 4000
    stats = []
    for w in (0.0, 0.5, 1.0, 3.0):
        x = ddim_sample(classifier_free_guidance(model, w, model.null_label), schedule, shape=(n, 2),
                        y=torch.zeros(n, dtype=torch.long), num_steps=50, generator=torch.Generator().manual_seed(0),
                        dtype=torch.float64)
        nearest = torch.cdist(x, means.double()).argmin(1)
        stats.append((float((x.mean(0) - means[0]).norm()), float(x.mean(0)[0]), float((nearest == 0).double().mean())))
    distance, along, own = zip(*stats)
    assert distance[0] > distance[1] > distance[2] < 0.1  # toward the class mean until w = 1
    assert along[0] < along[1] < along[2] < along[3]  # then on, away from the other classes
    assert own[0] < own[1] < own[2] < own[3]


# -------------------------------------------------------------------------------- every sampler
def tiny_conditional_unet(in_channels=2, size=4, classes=3):
    torch.manual_seed(0)
    return UNet(UNetConfig(in_channels=in_channels, image_size=size, base_channels=8, channel_mult=(1,),
                           num_res_blocks=1, attention_levels=(), num_groups=4, dropout=0.0,
                           num_classes=classes)).eval()


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm_solver"])
def test_guided_sampling_with_every_sampler_in_latent_space(sampler):
    model = tiny_conditional_unet()
    schedule = NoiseSchedule.linear(20)
    decode = torch.nn.Upsample(scale_factor=2)  # a stand-in decoder: 2x4x4 latents -> 2x8x8 "images"
    kw = {} if sampler == "ddpm" else {"num_steps": 5}
    labels = torch.tensor([0, 1, 2, 2])
    a = sample_classes(model, schedule, labels, guidance_scale=3.0, null_label=model.null_label, shape=(2, 4, 4),
                       sampler=sampler, decode=decode, batch_size=3, **kw)
    b = sample_classes(model, schedule, labels, guidance_scale=3.0, null_label=model.null_label, shape=(2, 4, 4),
                       sampler=sampler, decode=decode, batch_size=3, **kw)
    assert a.shape == (4, 2, 8, 8) and torch.equal(a, b) and a.abs().max() <= 1


# --------------------------------------------------------------------------------- the sweep
class NearestMean(torch.nn.Module):
    """A stand-in classifier: logits = −squared distance to each class mean; features = the input."""

    def __init__(self, means):
        super().__init__()
        self.register_buffer("means", means.flatten(1))

    def features(self, x):
        return x.flatten(1)

    def forward(self, x):
        return -torch.cdist(x.flatten(1), self.means) ** 2


def test_sweep_accuracy_rises_and_diversity_falls():
    schedule = NoiseSchedule.linear(1000)
    means = torch.tensor([0.6, -0.2, -0.6]).reshape(3, 1, 1, 1).expand(3, 1, 2, 2).clone()
    model = MixtureDenoiser(schedule, [1, 1, 1], means, 0.5)  # three overlapping classes of 1x2x2 "images"
    result = guidance_sweep(model, schedule, NearestMean(means), scales=(0, 1, 3), samples_per_class=200,
                            image_shape=(1, 2, 2), num_steps=20, grid_per_class=2, batch_size=300,
                            decode=lambda z: z.clamp(-1, 1))
    accuracy, diversity = result.column("class_accuracy"), result.column("diversity")
    assert accuracy[0] < accuracy[1] < accuracy[2] and diversity[0] > diversity[1] > diversity[2]
    assert 0.25 < accuracy[0] < 0.45  # unconditional samples: about a third land in each class
    assert result.scales == [0.0, 1.0, 3.0] and result.grids[3.0].shape == (6, 1, 2, 2)
    assert result.settings["num_classes"] == 3 and result.rows[2]["ho_salimans_weight"] == 2.0
    assert "| 3 | 2 |" in result.table() and set(result.to_dict()) == {"settings", "rows"}
    assert result.table_html().count("<tr>") == 4 and "FID" not in result.table()
    plot_guidance_sweep(result)
    again = guidance_sweep(model, schedule, NearestMean(means), scales=(3,), samples_per_class=200,
                           image_shape=(1, 2, 2), num_steps=20, batch_size=300, decode=lambda z: z.clamp(-1, 1))
    assert again.rows[0]["class_accuracy"] == accuracy[2]  # the same noise at every scale and every run


@pytest.mark.filterwarnings("ignore::diffusion_lib.metrics.SmallSampleWarning")
def test_sweep_fid_at_chosen_scales():
    from diffusion_lib.metrics import RandomProjection

    schedule = NoiseSchedule.linear(100)
    means = torch.tensor([0.5, -0.5]).reshape(2, 1, 1, 1).expand(2, 3, 8, 8).clone()
    model = MixtureDenoiser(schedule, [1, 1], means, 0.3)
    reference = torch.cat([means + 0.3 * torch.randn(50, 3, 8, 8, generator=torch.Generator().manual_seed(0))
                           for means in means]).clamp(-1, 1)
    result = guidance_sweep(model, schedule, NearestMean(means), scales=(0, 1), samples_per_class=20,
                            image_shape=(3, 8, 8), num_steps=5, fid_scales=(1,), fid_reference=reference,
                            fid_extractor=RandomProjection(16, size=8))
    assert result.rows[0]["fid"] is None and result.rows[1]["fid"] > 0
    assert result.rows[1]["fid_extractor"] == "random-projection-16" and result.rows[1]["fid_n"] == 40
    assert "| FID (40 samples) |" in result.table()


def test_fid_labels_name_the_fid_sample_size_not_the_sweep_size():
    """The benchmark computes FID from a larger run (fid_n = 2,000) than the sweep's rows (n = 1,000):
    the figure's axis and the table must name the FID's own size."""
    import matplotlib.pyplot as plt

    rows = [{"scale": w, "ho_salimans_weight": w - 1, "class_accuracy": 0.5, "diversity": 3.0, "n": 1000,
             "fid": 40.0 if w != 2 else None, "fid_n": 2000 if w != 2 else None} for w in (0.0, 1.0, 2.0)]
    fig = plot_guidance_sweep({"rows": rows})
    assert fig.axes[1].get_ylabel() == "FID (2,000 samples)" and fig.axes[0].get_xlabel() == "guidance scale w"
    plt.close(fig)
    head, body = sweep_table({"rows": rows})
    assert head[-1] == "FID (2,000 samples)" and body[2][-1] == "" and body[0][:2] == ["0", "-1"]
    html_table = table_html(head, body)
    assert html_table.count("<tr>") == 4 and "<th" in html_table and "|" not in html_table
    rows[0]["fid_n"] = 500
    with pytest.raises(ValueError, match="fid_n"):
        sweep_table({"rows": rows})


# ---------------------------------------------------------------------------------- bad input
def test_label_outside_the_classes_is_refused():
    model = tiny_conditional_unet(classes=3)
    x, t = torch.zeros(2, 2, 4, 4), torch.zeros(2, dtype=torch.long)
    for bad in (-1, 4):
        with pytest.raises(ValueError, match="out of range"):
            classifier_free_guidance(model, 2.0, model.null_label)(x, t, torch.tensor([0, bad]))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\]"):
        sample_classes(model, NoiseSchedule.linear(10), torch.tensor([0, 3]), guidance_scale=2.0,
                       null_label=model.null_label, shape=(2, 4, 4), num_steps=2)


def test_guidance_needs_a_null_class():
    torch.manual_seed(0)
    unconditional = UNet(UNetConfig(in_channels=1, image_size=4, base_channels=8, channel_mult=(1,),
                                    num_res_blocks=1, attention_levels=(), num_groups=4))
    assert unconditional.null_label is None
    with pytest.raises(ValueError, match="null class"):
        guidance_sweep(unconditional, NoiseSchedule.linear(10), NearestMean(torch.zeros(2, 1, 4, 4)),
                       samples_per_class=2, num_classes=2)
    with pytest.raises(ValueError, match="null_label"):
        classifier_free_guidance(unconditional, 3.0, unconditional.null_label)
    with pytest.raises(ValueError, match="scales"):
        guidance_sweep(tiny_conditional_unet(), NoiseSchedule.linear(10), NearestMean(torch.zeros(3, 2, 4, 4)),
                       scales=(-1,))
    assert isinstance(GuidanceSweepResult([], {}, {}).table(), str)
