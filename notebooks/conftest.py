"""Notebook tests: `pytest --nbval notebooks/` runs every chapter in the smoke profile.

nbval starts each kernel with this process's environment, so what is set here reaches the notebooks.
scripts/execute_notebooks.py gives its kernels the same environment (in the cpu profile), so the
committed outputs and the test run differ only in the profile.
"""

import os

from diffusion_lib.course.notebook_rules import kernel_environment


for _key, _value in kernel_environment(os.environ.get("DIFFUSION_PROFILE") or "smoke").items():
    os.environ[_key] = _value
