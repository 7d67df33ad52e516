"""FID: Frechet distance vs pytorch-fid, weights resolution, random-weight Inception, stats cache."""

from __future__ import annotations

import hashlib
import os
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from pytorch_fid.fid_score import calculate_frechet_distance

from collabprune.config import FidConfig
from collabprune.errors import FidWeightsError
from benchmarks.random_inception import make_random_inception_weights
from collabprune.metrics import inception as fidmod
from collabprune.metrics.fid import FidScorer, real_stats
from collabprune.metrics.frechet import feature_stats, frechet_distance
from collabprune.metrics.inception import (
    FID_WEIGHTS_ENV,
    FID_WEIGHTS_FILENAME,
    hub_cache_weights_path,
    inception_features,
    load_inception,
    resolve_inception_weights,
)


@pytest.fixture(autouse=True)
def _isolated_torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never touch the home dir's hub cache, never see a user's weights variable."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv(FID_WEIGHTS_ENV, raising=False)


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight FID Inception file with recalibrated BatchNorm statistics (built once)."""
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    return make_random_inception_weights(tmp_path_factory.mktemp("inception") / "random_inception.pth", seed=0)


def _random_stats(rng: np.random.Generator, n: int, d: int, scale: float, shift: float) -> tuple[np.ndarray, np.ndarray]:
    mixing = rng.standard_normal((d, d)) * scale / np.sqrt(d)
    feats = np.abs(rng.standard_normal((n, d)) @ mixing + shift)  # ReLU-like, correlated, like pool3
    return feature_stats(feats)


# ------------------------------------------------------------------------------------------------
# Frechet distance
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("d,n", [(2, 50), (8, 200), (64, 500), (64, 40), (256, 800)])
def test_fd_matches_pytorch_fid_small(d: int, n: int) -> None:
    rng = np.random.default_rng(d + n)
    mu1, s1 = _random_stats(rng, n, d, 1.0, 0.0)
    mu2, s2 = _random_stats(rng, n, d, 1.5, 0.3)
    ours = frechet_distance(mu1, s1, mu2, s2)
    ref = float(calculate_frechet_distance(mu1, s1, mu2, s2))
    assert abs(ours - ref) <= 1e-4 * abs(ref)


def test_fd_one_dimensional_closed_form() -> None:
    # pytorch-fid's own function fails for d=1 with recent scipy (sqrtm of a 1x1 matrix)
    assert frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([3.0]), np.array([[9.0]])) == pytest.approx(
        (1.0 - 3.0) ** 2 + (2.0 - 3.0) ** 2
    )


def test_fd_2048_exact_for_commuting_covariances() -> None:
    """2048 dims, dense (rotated) covariances with pool3-like spectra sharing eigenvectors, where
    tr((S1 S2)^(1/2)) = sum sqrt(l1 * l2) exactly; also exercises the singular (rank < d) branch."""
    rng = np.random.default_rng(7)
    d = 2048
    q = np.eye(d)
    for _ in range(3):  # a dense orthogonal matrix from Householder reflections (cheaper than QR)
        v = rng.standard_normal(d)
        v /= np.linalg.norm(v)
        q -= 2.0 * np.outer(q @ v, v)
    l1 = 1.0 / (1.0 + np.arange(d)) ** 1.1
    l2 = l1 * rng.uniform(0.5, 2.0, d)
    s1, s2 = (q * l1) @ q.T, (q * l2) @ q.T
    mu1, mu2 = rng.standard_normal(d) * 0.1, rng.standard_normal(d) * 0.1
    exact = float(((mu1 - mu2) ** 2).sum() + l1.sum() + l2.sum() - 2 * np.sqrt(l1 * l2).sum())
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(exact, rel=1e-6)
    l1[1500:] = 0.0  # rank-deficient, as from fewer images than dims
    l2[1000:] = 0.0
    s1, s2 = (q * l1) @ q.T, (q * l2) @ q.T
    exact = float(((mu1 - mu2) ** 2).sum() + l1.sum() + l2.sum() - 2 * np.sqrt(l1 * l2).sum())
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(exact, rel=1e-4)


@pytest.mark.skipif(
    os.environ.get("COLLABPRUNE_SLOW_TESTS") != "1",
    reason="pytorch-fid's scipy sqrtm takes 30-110 s at 2048 dims on 2 cores; set COLLABPRUNE_SLOW_TESTS=1",
)
def test_fd_matches_pytorch_fid_2048() -> None:
    rng = np.random.default_rng(2048)
    d, n = 2048, 3000
    mu1, s1 = _random_stats(rng, n, d, 1.0, 0.2)
    mu2, s2 = _random_stats(rng, n, d, 1.2, 0.1)
    ours = frechet_distance(mu1, s1, mu2, s2)
    ref = float(calculate_frechet_distance(mu1, s1, mu2, s2))
    assert np.isfinite(ours)
    assert abs(ours - ref) <= 1e-4 * abs(ref)


def test_fd_identical_is_zero_and_symmetric() -> None:
    rng = np.random.default_rng(0)
    mu1, s1 = _random_stats(rng, 100, 16, 1.0, 0.0)
    mu2, s2 = _random_stats(rng, 100, 16, 2.0, 1.0)
    assert abs(frechet_distance(mu1, s1, mu1, s1)) < 1e-9 * np.trace(s1)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-9)


def test_fd_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="shape"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="non-finite"):
        frechet_distance(np.array([np.nan, 0]), np.eye(2), np.zeros(2), np.eye(2))


def test_feature_stats_matches_numpy() -> None:
    feats = np.random.default_rng(0).standard_normal((30, 5))
    mu, sigma = feature_stats(feats)
    np.testing.assert_allclose(mu, feats.mean(0))
    np.testing.assert_allclose(sigma, np.cov(feats, rowvar=False))
    with pytest.raises(ValueError):
        feature_stats(feats[:1])


# ------------------------------------------------------------------------------------------------
# Weights resolution
# ------------------------------------------------------------------------------------------------


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"w")
    return path


def test_hub_cache_path_follows_torch_home(tmp_path: Path) -> None:
    assert hub_cache_weights_path() == tmp_path / "torch_home" / "hub" / "checkpoints" / FID_WEIGHTS_FILENAME


def test_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_download(url: str, dest: Path, timeout_s: float) -> None:
        raise AssertionError("must not download when a local file exists")

    monkeypatch.setattr(fidmod, "_download", no_download)
    explicit = _touch(tmp_path / "explicit.pth")
    env = _touch(tmp_path / "env.pth")
    hub = _touch(hub_cache_weights_path())
    monkeypatch.setenv(FID_WEIGHTS_ENV, str(env))
    assert resolve_inception_weights(explicit, 1.0) == explicit
    assert resolve_inception_weights(None, 1.0) == env
    monkeypatch.delenv(FID_WEIGHTS_ENV)
    assert resolve_inception_weights(None, 1.0) == hub


def test_set_but_missing_paths_are_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _touch(hub_cache_weights_path())  # present, but an explicit wrong path must not fall through
    with pytest.raises(FidWeightsError, match="reward.fid.weights"):
        resolve_inception_weights(tmp_path / "nope.pth", 1.0)
    monkeypatch.setenv(FID_WEIGHTS_ENV, str(tmp_path / "nope_env.pth"))
    with pytest.raises(FidWeightsError, match=FID_WEIGHTS_ENV):
        resolve_inception_weights(None, 1.0)


@pytest.mark.parametrize("exc", [urllib.error.URLError("[Errno -3] Temporary failure\nin name resolution"), TimeoutError("timed out")])
def test_offline_error_is_one_line(monkeypatch: pytest.MonkeyPatch, exc: Exception) -> None:
    seen: dict[str, object] = {}

    def offline(url: str, dest: Path, timeout_s: float) -> None:
        seen.update(url=url, dest=dest, timeout=timeout_s)
        raise exc

    monkeypatch.setattr(fidmod, "_download", offline)
    with pytest.raises(FidWeightsError) as info:
        resolve_inception_weights(None, 3.5)
    text = str(info.value)
    assert "\n" not in text
    assert str(hub_cache_weights_path()) in text and FID_WEIGHTS_ENV in text
    assert "fd_teacher_d" in text  # the hint names the fallback
    assert seen["dest"] == hub_cache_weights_path() and seen["timeout"] == 3.5
    assert not hub_cache_weights_path().exists()
    with pytest.raises(FidWeightsError):  # FidScorer fails early, at construction
        FidScorer(FidConfig(), cache_dir=Path("unused"))


def test_download_goes_to_hub_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_download(url: str, dest: Path, timeout_s: float) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(b"weights")

    monkeypatch.setattr(fidmod, "_download", fake_download)
    assert resolve_inception_weights(None, 1.0) == hub_cache_weights_path()


def test_download_function_checks_hash_and_is_atomic(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(b"some weights")
    prefix = hashlib.sha256(b"some weights").hexdigest()[:8]
    good = tmp_path / "cache" / f"w-{prefix}.pth"
    fidmod._download(src.as_uri(), good, timeout_s=5.0)  # file:// needs no network
    assert good.read_bytes() == b"some weights"
    bad = tmp_path / "cache" / "w-deadbeef.pth"
    with pytest.raises(ValueError, match="sha256"):
        fidmod._download(src.as_uri(), bad, timeout_s=5.0)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [good.name]  # no partial file


# ------------------------------------------------------------------------------------------------
# Inception with random weights
# ------------------------------------------------------------------------------------------------


def test_random_inception_gives_nondegenerate_pool3(random_weights: Path) -> None:
    model = load_inception(random_weights, dims=2048)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    g = torch.Generator().manual_seed(1)
    images = torch.rand(4, 3, 64, 64, generator=g) * 2 - 1
    feats = inception_features(model, images, batch_size=4)
    assert feats.shape == (4, 2048) and np.isfinite(feats).all()
    var = feats.var(axis=0)
    assert (var > 0).mean() > 0.5  # most dims vary across images
    assert np.abs(feats).mean() > 1e-3


def test_inception_input_range_is_converted(random_weights: Path) -> None:
    """Our [-1, 1] input reaches pytorch-fid's InceptionV3 as [0, 1] (it rescales to [-1, 1])."""
    model = load_inception(random_weights, dims=64)
    x = torch.rand(2, 3, 40, 40) * 2 - 1
    with torch.no_grad():
        ours = model(x)
        direct = model.net((x + 1) / 2)[0].mean(dim=(2, 3))
    torch.testing.assert_close(ours, direct)


def test_load_inception_rejects_bad_files(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(FidWeightsError, match="cannot read"):
        load_inception(junk)
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv.weight": torch.zeros(1)}, wrong)
    with pytest.raises(FidWeightsError, match="do not match"):
        load_inception(wrong)


# ------------------------------------------------------------------------------------------------
# Real-statistics cache and scorer
# ------------------------------------------------------------------------------------------------


def test_real_stats_cache_hit_and_content_key(tmp_path: Path) -> None:
    calls: list[int] = []

    def features(x: torch.Tensor) -> np.ndarray:
        calls.append(x.shape[0])
        return x.flatten(1)[:, :6].double().numpy()

    real = torch.rand(5, 3, 8, 8) * 2 - 1
    key = {"metric": "fid", "dims": 6, "weights_sha256": "abc"}
    mu1, s1, hit1 = real_stats(real, tmp_path, key, features)
    mu2, s2, hit2 = real_stats(real.clone(), tmp_path, key, features)
    assert (hit1, hit2) == (False, True) and len(calls) == 1
    np.testing.assert_array_equal(mu1, mu2)
    np.testing.assert_array_equal(s1, s2)
    # batches of the same content -> the same entry
    assert real_stats([real[:2], real[2:]], tmp_path, key, features)[2] is True
    other = real.clone()
    other[0, 0, 0, 0] += 0.01
    assert real_stats(other, tmp_path, key, features)[2] is False
    assert real_stats(real, tmp_path, {**key, "weights_sha256": "xyz"}, features)[2] is False
    files = sorted(tmp_path.iterdir())
    assert len(files) == 3 and all(f.suffix == ".npz" and not f.name.startswith(".") for f in files)


def test_fid_scorer_uses_cache(random_weights: Path, tmp_path: Path) -> None:
    cfg = FidConfig(weights=random_weights, dims=64, batch_size=4, max_images=6)
    scorer = FidScorer(cfg, cache_dir=tmp_path / "stats")
    assert scorer.metric_name == "fid"
    g = torch.Generator().manual_seed(0)
    real = torch.rand(8, 3, 32, 32, generator=g) * 2 - 1
    fake = (real + 0.3 * torch.randn(8, 3, 32, 32, generator=g)).clamp(-1, 1)
    s1 = scorer.score(fake, real, "heldout")
    s2 = scorer.score(fake, real, "heldout")
    assert (scorer.cache_misses, scorer.cache_hits) == (1, 1)
    assert np.isfinite(s1) and s1 > 0 and s1 == pytest.approx(s2, rel=1e-9)
    assert scorer.score(real, real, "heldout") == pytest.approx(0.0, abs=1e-6 * s1)


def test_fd_teacher_d_scorer(tmp_path: Path) -> None:
    torch.manual_seed(0)
    d_net = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(8, 16, 3, 2, 1))

    def features(images: torch.Tensor) -> torch.Tensor:
        return d_net(images).mean(dim=(2, 3))

    cfg = FidConfig(mode="fd_teacher_d", weights=Path("/nonexistent/never/read.pth"))
    scorer = FidScorer(cfg, cache_dir=tmp_path, teacher_features=features, teacher_key="teacher:abc")
    assert scorer.metric_name == "fd_teacher_d"
    real = torch.rand(10, 3, 16, 16) * 2 - 1
    assert scorer.score(real, real, "heldout") == pytest.approx(0.0, abs=1e-8)
    assert scorer.score(torch.zeros_like(real) + 0.5 * torch.rand_like(real), real, "heldout") > 0
    assert (scorer.cache_misses, scorer.cache_hits) == (1, 1)
    assert all(f.name.startswith("fd_teacher_d_") for f in tmp_path.iterdir())
    with pytest.raises(ValueError, match="teacher_features"):
        FidScorer(cfg, cache_dir=tmp_path)
