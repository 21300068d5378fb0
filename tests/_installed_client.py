"""Run by tests/test_colab_install.py with a regular install of the package on PYTHONPATH, from a
folder outside the checkout: one scenario of a chapter asking for a shipped model, as on Colab.
Prints one JSON line with what happened.

    python _installed_client.py shipped|corrupt|silent [TIMEOUT_S]
"""

import json
import sys
import time

import diffusion_lib
from _train_utils import tiny_config
from diffusion_lib import download
from diffusion_lib.course import pretrained

NAME = "fashion_ddpm_linear"


def main(scenario: str, timeout_s: float | None = None) -> dict:
    if timeout_s is not None:
        download.TIMEOUT_S = timeout_s
    result = {"package": diffusion_lib.__file__, "cache": str(pretrained.cache_dir()),
              "default_timeout_s": download.TIMEOUT_S}
    config = tiny_config("unused", max_steps=2)
    if scenario == "shipped":
        for call in ("first", "second"):
            _, _, info = pretrained.load_or_train(NAME, config, profile="cpu", progress=False)
            result[call] = {"source": info["source"], "path": info["path"],
                            "sha256": download.sha256_of(info["path"]), "steps": info["card"]["steps"]}
        result["manifest_sha256"] = pretrained.manifest()[NAME]["sha256"]
    elif scenario == "corrupt":
        try:
            pretrained.load_pretrained(NAME, progress=False)
        except download.ChecksumError as e:
            result["error"] = str(e)
    elif scenario == "silent":
        start = time.perf_counter()
        _, _, info = pretrained.load_or_train(NAME, config, profile="cpu", progress=False)
        result.update(source=info["source"], seconds=time.perf_counter() - start, steps=info["step"])
    else:
        raise ValueError(f"scenario must be shipped, corrupt or silent; got {scenario!r}")
    return result


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], *map(float, sys.argv[2:]))))
