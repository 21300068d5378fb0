"""Where the course lives: the one repository URL of the package, the book and the notebooks.

The notebooks' set-up cell (``notebooks/_first_cell.py``) installs ``git+<URL>@<BRANCH>``, the book's
``_config.yml`` names the same repository, and the shipped models are fetched from its raw files
(:func:`raw_url`); ``tests/test_download.py`` checks that they all agree with the constants here.
This file imports nothing, so scripts can read it without installing the package.
"""

URL = "https://github.com/diffusion-course/diffusion-course"
BRANCH = "main"


def raw_url(path: str) -> str:
    """The URL at which GitHub serves the bytes of ``path`` (relative to the repository's root) on
    :data:`BRANCH`: ``https://raw.githubusercontent.com/<owner>/<repo>/<branch>/<path>``.

    This serves files stored in git itself; a file stored with Git LFS would come back as its
    pointer (LFS files are served from media.githubusercontent.com instead).
    """
    owner_repo = URL.removeprefix("https://github.com/")
    return f"https://raw.githubusercontent.com/{owner_repo}/{BRANCH}/{path.lstrip('/')}"
