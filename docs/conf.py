"""Sphinx configuration for the django_jobs documentation (MyST Markdown, Furo theme).

Build: python -m sphinx -W --keep-going -b html docs docs/_build/html
"""

import re
from pathlib import Path

# The version is read from the package's source text. Importing django_jobs (or Django)
# here would tie the docs build to a configured project.
_INIT = Path(__file__).resolve().parent.parent / "django_jobs" / "__init__.py"
_VERSION = re.search(
    r"""^__version__\s*=\s*["']([^"']+)["']""", _INIT.read_text(encoding="utf-8"), re.MULTILINE
)
if _VERSION is None:
    raise RuntimeError(f"no __version__ = '...' line in {_INIT}")

project = "django_jobs"
release = _VERSION.group(1)
version = release

extensions = ["myst_parser"]
source_suffix = {".md": "markdown"}
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

exclude_patterns = ["_build"]

html_theme = "furo"
html_title = f"django_jobs {release}"
