"""The search page in real headless Chromium (Debian ``chromium``, driven by Playwright).

Type a query, see the expected hit (the one the API ranks first), click it, and check that the
``<video>`` element plays from the moment's start and stops at its end; then "more like this" and
a shared URL. Screenshots go to the test's ``tmp_path`` and to ``out/screenshots/`` (gitignored)
for a person to look at.

Needs ``/usr/bin/chromium`` (Debian package ``chromium``) and the ``playwright`` Python package;
Playwright's own browser download is never used. Skips with the reason when either is missing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("VIDSEARCH_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "out" / "screenshots"

_spec = importlib.util.spec_from_file_location("_serve_harness", Path(__file__).with_name("harness.py"))
harness = sys.modules.get(_spec.name) or importlib.util.module_from_spec(_spec)
if _spec.name not in sys.modules:
    sys.modules[_spec.name] = harness  # dataclasses look their module up there
    _spec.loader.exec_module(harness)

pytest.importorskip("fastapi", reason="vidsearch serve needs fastapi + uvicorn (the serve extra)")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (apt-get install -y chromium) "
                    "to run the browser test")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs `pip install playwright`")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def server(browser: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    lib = harness.make_library(tmp_path_factory.mktemp("serve_browser"))
    with harness.serving(lib.root, "--no-history") as s:
        yield s


def shot(page: Any, tmp_path: Path, name: str) -> Path:
    """Screenshot into tmp_path and a stable copy under out/screenshots/."""
    p = tmp_path / name
    page.screenshot(path=str(p), full_page=True)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(p, SCREENSHOTS / name)
    return p


def api_search(server: Any, **params: str) -> dict:
    return json.loads(harness.get(f"{server.url}/api/search?{urllib.parse.urlencode(params)}").body)


def test_type_query_click_hit_plays_the_moment(browser: Any, server: Any, tmp_path: Path) -> None:
    # "from 4 s" keeps the moment away from 0, so "currentTime is at the moment" means a real seek.
    want = api_search(server, q="a dog on the grass", **{"from": "4"}, k="24")["hits"][0]
    assert want["start_s"] >= 2.0
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server.url + "/")
    page.get_by_label("Search", exact=True).fill("a dog on the grass")
    page.locator("summary", has_text="Filters").click()
    page.get_by_label("Within the video, after").fill("4")
    page.get_by_label("Search", exact=True).press("Enter")

    first = page.locator("#grid li.hit").first
    first.wait_for(timeout=30_000)
    assert first.get_attribute("data-clip-id") == want["clip_id"]
    card_text = first.inner_text()
    assert want["name"] in card_text
    assert card_text.count(f"{want['start']}–{want['end']}") == 1  # the time range once, not twice
    # Names and folders wrap at separators (<wbr> after each "/"), inside a word only if a piece
    # cannot fit: no more "/me|dia" breaks.
    folder = first.locator(".folder")
    assert folder.evaluate("e => getComputedStyle(e).overflowWrap") == "break-word"
    assert folder.evaluate("e => e.querySelectorAll('wbr').length") == want["folder"].count("/")
    assert folder.inner_text() == want["folder"]
    assert first.locator(".range").evaluate("e => getComputedStyle(e).whiteSpace") == "nowrap"
    # The URL holds the search, so it can be shared.
    qs = urllib.parse.parse_qs(urllib.parse.urlparse(page.url).query)
    assert qs["q"] == ["a dog on the grass"] and qs["from"] == ["4"]
    assert not page.locator("#like-banner").is_visible()
    assert not page.locator("#player").is_visible()
    # Every thumbnail loaded (a real JPEG from the API) and has alt text.
    page.wait_for_function("() => [...document.querySelectorAll('#grid img')]"
                           ".every(i => i.complete && i.naturalWidth > 0)", timeout=30_000)
    assert all(page.locator("#grid img").evaluate_all("imgs => imgs.map(i => i.alt.length > 0)"))

    first.locator("button.thumb").click()
    video = page.locator("#video")
    page.wait_for_function("() => { const v = document.getElementById('video');"
                           " return v.readyState >= 2 && !v.seeking && v.currentTime > 0; }", timeout=30_000)
    t = video.evaluate("v => v.currentTime")
    assert want["start_s"] - 0.05 <= t <= want["end_s"], (t, want["start_s"], want["end_s"])
    assert video.evaluate("v => v.src").endswith(want["video_url"])
    shot(page, tmp_path, "search_playing.png")

    # Stops at the end of the moment (played fast to keep the test short).
    video.evaluate("v => { v.playbackRate = 4; }")
    page.wait_for_function("() => document.getElementById('video').paused", timeout=30_000)
    end_t = video.evaluate("v => v.currentTime")
    # The page lands on the moment's end exactly, whatever the playback rate (app.js watchMoment).
    assert want["end_s"] - 0.1 <= end_t <= want["end_s"] + 0.05, (end_t, want["end_s"])
    assert not errors, errors
    page.close()


def test_placeholder_is_an_example_from_the_library(browser: Any, server: Any) -> None:
    """Not a fixed "dog playing in snow": a recent search of this library (or, in a demo
    library, one of its captions: tests/integration/test_serve_api.py)."""
    page = browser.new_page()
    page.goto(server.url + "/")
    page.wait_for_function("() => document.getElementById('library-status').textContent.length > 0")
    before = page.get_by_label("Search", exact=True).get_attribute("placeholder")
    assert "dog playing in snow" not in before
    assert api_search(server, q="a test card with colour bars", k="3")["hits"]
    page.reload()
    page.wait_for_function("() => document.getElementById('q').placeholder === 'e.g. a test card with colour bars'",
                           timeout=30_000)
    page.close()


def test_more_like_this_and_shared_url(browser: Any, server: Any, tmp_path: Path) -> None:
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    page.goto(server.url + "/?q=bars&per_video=1")
    first = page.locator("#grid li.hit").first
    first.wait_for(timeout=30_000)
    assert page.get_by_label("Search", exact=True).input_value() == "bars"
    assert page.locator("#grid li.hit").count() == 3  # one per video, from the shared URL
    clip = first.get_attribute("data-clip-id")
    example = api_search(server, q="bars", per_video="1", k="24")["hits"][0]
    want = api_search(server, like=clip, per_video="1", k="24")["hits"]
    first.get_by_role("button", name="More like this").click()
    page.wait_for_function(f"() => location.search.includes('like={clip}')")
    page.wait_for_function(f"() => document.querySelector('#grid li.hit') && "
                           f"document.querySelector('#grid li.hit').dataset.clipId === '{want[0]['clip_id']}'",
                           timeout=30_000)
    assert page.locator("#like-banner").is_visible()
    # The example clip is named by its file and time, not by its 19-digit id.
    label = f"{example['name']} at {example['start']}–{example['end']}"
    assert page.locator("#like-text").inner_text() == f"Moments like {label}"
    message = page.locator("#message").inner_text()
    assert f"like {label}" in message and clip not in message
    assert [h.get_attribute("data-clip-id") for h in page.locator("#grid li.hit").all()] == \
        [h["clip_id"] for h in want]
    shot(page, tmp_path, "more_like_this.png")
    page.go_back()
    page.wait_for_function("() => !location.search.includes('like=')")
    page.wait_for_function("() => document.getElementById('like-banner').hidden")
    # A bad filter shows the API's message, not a blank page.
    page.goto(server.url + "/?q=bars&min_duration=soon")
    page.locator("#message.error").wait_for(timeout=30_000)
    assert "min_duration" in page.locator("#message").inner_text()
    page.close()


def test_a_subtitle_hit_shows_its_marked_words_and_plays_from_them(browser: Any, server: Any, tmp_path: Path) -> None:
    """What is said (issue 14): modality badges, the snippet with <mark> (built as DOM nodes: the
    subtitle's "<b>" is text), playback from the first matched word, and the "Search in" choice."""
    want = api_search(server, q="lighthouse keeper", k="24")["hits"][0]
    assert want["name"] == "sky.mp4" and want["play_s"] == 1.0 and "speech" in want["modalities"]
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server.url + "/?q=lighthouse+keeper")
    first = page.locator("#grid li.hit").first
    first.wait_for(timeout=30_000)
    assert first.get_attribute("data-clip-id") == want["clip_id"]
    assert sorted(first.locator(".badge").all_inner_texts()) == ["Picture", "Subtitles"]
    snippet = first.locator(".snippet")
    assert snippet.inner_text() == harness.SUBTITLE_TEXT
    assert snippet.locator("mark").all_inner_texts() == ["lighthouse", "keeper"]
    assert snippet.evaluate("e => [...e.querySelectorAll('*')].every(n => n.tagName === 'MARK')")
    assert page.locator("#grid li.hit").nth(1).locator(".snippet").count() == 0  # a picture-only hit
    # The library has no screen text: the page does not offer it.
    page.locator("summary", has_text="Filters").click()
    assert page.get_by_label("Speech and subtitles").is_visible()
    assert not page.get_by_label("Text on screen").is_visible()

    first.locator("button.thumb").click()
    page.wait_for_function("() => { const v = document.getElementById('video');"
                           " return v.readyState >= 2 && !v.seeking && v.currentTime > 0; }", timeout=30_000)
    t = page.locator("#video").evaluate("v => v.currentTime")
    assert 1.0 - 0.05 <= t <= want["end_s"], (t, want)  # from the subtitle's start, not the moment's
    shot(page, tmp_path, "search_speech_hit.png")

    # Words only: untick the pictures; the URL keeps the choice.
    page.get_by_label("Pictures").uncheck()
    page.get_by_label("Search", exact=True).press("Enter")
    page.wait_for_function("() => location.search.includes('in=speech')")
    page.wait_for_function("() => document.querySelectorAll('#grid li.hit').length === 1", timeout=30_000)
    only = page.locator("#grid li.hit").first
    assert only.locator(".badge").all_inner_texts() == ["Subtitles"]
    assert only.get_attribute("data-modalities") == "speech"
    assert not errors, errors
    page.close()
