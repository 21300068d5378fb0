# Set-up, the same in every chapter. On Colab: install the course library and what Colab lacks,
# pinning Colab's own torch and torchvision so that pip can never replace them. Elsewhere: nothing.
import sys

if "google.colab" in sys.modules:
    import importlib
    import subprocess
    from importlib.metadata import version

    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q",
         f"torch=={version('torch')}", f"torchvision=={version('torchvision')}",
         "torchmetrics", "torch-fidelity",
         "diffusion_lib @ git+https://github.com/diffusion-course/diffusion-course@main"],
        check=True,
    )
    importlib.invalidate_caches()
