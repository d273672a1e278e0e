"""The browser demo page of `koe serve`, end to end in headless Chromium (Debian's chromium + chromium-driver,
driven by selenium): connect, send text, receive audio and subtitles, check the page state."""

from __future__ import annotations

import asyncio
import shutil
import threading
from pathlib import Path

import pytest

from agent.character import find_character
from agent.config import LlmConfig, ServerConfig
from agent.llm import LlmClient
from agent.server import TONE_RATE, AvatarServer, Engines, tone_voice
from fake_llm_server import MODEL, FakeLlmServer, Reply

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Debian's chromium and chromium-driver (apt install chromium chromium-driver)",
)


class ServerThread:
    """An AvatarServer on its own event loop thread, so the synchronous webdriver can talk to it."""

    def __init__(self, server: AvatarServer) -> None:
        self.server = server
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> AvatarServer:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        return self.server

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def browser(tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'chromium'}",
        "--autoplay-policy=no-user-gesture-required",  # audio plays without a click
    ):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_script_timeout(30)
    yield driver
    driver.quit()


def wait_for(driver, script: str, timeout: float = 20.0):
    """Poll a JavaScript expression until it is truthy; return its value."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(
        lambda d: d.execute_script(f"return {script}")
    )


def test_demo_page_connects_speaks_and_moves_the_mouth(tmp_path, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    with FakeLlmServer() as llm:
        llm.script(Reply("[happy] Hello from the browser. Nice to see you."))
        engines = Engines(
            stream_reply=LlmClient(LlmConfig(base_url=llm.url, model=MODEL)).stream,
            synthesize=tone_voice,
            sample_rate=TONE_RATE,
            load_character=lambda name: find_character(ROOT / "characters", name),
        )
        with ServerThread(AvatarServer(ServerConfig(), engines, tmp_path / "history", port=0)) as server:
            browser.get(server.http_url)
            assert browser.title == "koe avatar demo"
            browser.find_element(By.ID, "connect").click()
            session = wait_for(browser, "window.koeDemo.session")
            assert "connected to Koe" in browser.find_element(By.ID, "status").text
            box = browser.find_element(By.ID, "text")
            box.send_keys("Hello page", Keys.ENTER)
            # The page shows the first subtitle while its audio plays...
            wait_for(browser, "window.koeDemo.subtitle === 'Hello from the browser.'")
            assert browser.find_element(By.ID, "subtitle").text == "Hello from the browser."
            assert browser.find_element(By.ID, "expression").text == "smile"
            # ...and the reply ends only once the page reported both segments played (playback_finished).
            wait_for(browser, "window.koeDemo.responses.length === 1")
            demo = browser.execute_script("return window.koeDemo")
            server_session = server.sessions[session]

    assert demo["responses"][0]["heard"] == "Hello from the browser. Nice to see you."
    assert demo["responses"][0]["interrupted"] is False
    assert demo["framesReceived"] > 10
    # The tone voice speaks 60 ms per character; the page asked for its AudioContext's rate.
    expected = sum(
        round(0.06 * len(text) * demo["rate"]) for text in ("Hello from the browser.", "Nice to see you.")
    )
    assert abs(demo["samplesScheduled"] - expected) <= 10
    assert demo["maxMouth"] > 0.5  # the lip-sync data drove the mouth
    assert demo["errors"] == [] and demo["state"] == "idle"
    assert [m.text for m in server_session.history] == [
        "Hello page",
        "Hello from the browser. Nice to see you.",
    ]
    assert llm.requests[0]["messages"][-1] == {"role": "user", "content": "Hello page"}
