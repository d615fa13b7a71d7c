"""Browser tests: Playwright for Python driving the system's Chromium against live_server.

Skipped, with the reason, when Playwright or /usr/bin/chromium is missing. Playwright's
own browser download (``playwright install``) is not used: it needs network access.
"""

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = ROOT / "artifacts" / "screenshots"

try:
    from playwright.sync_api import Browser, Page, sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None

_missing = (
    "playwright is not installed (pip install -e '.[dev]')"
    if sync_playwright is None
    else f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM))
    else None
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if _missing:
        here = Path(__file__).parent
        for item in items:
            if here in Path(str(item.fspath)).parents:
                item.add_marker(pytest.mark.skip(reason=f"browser tests skipped: {_missing}"))


@pytest.fixture(scope="session")
def browser() -> Iterator["Browser"]:
    # Playwright's sync API runs an event loop in this thread; the ORM calls the tests
    # make around it are still plain synchronous code.
    os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser: "Browser") -> Iterator["Page"]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    context.close()


def screenshot(page: "Page", name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.evaluate("window.scrollTo(0, 0)")  # the admin's sidebar is sticky
    page.screenshot(path=str(path), full_page=True)
    return path
