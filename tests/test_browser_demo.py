"""The browser demo page of `koe serve`, end to end in headless Chromium (Debian's chromium + chromium-driver,
driven by selenium): connect, send text, receive audio and subtitles, check the page state; talk through
the microphone (Chromium's fake capture device) to the server's VAD and speech recognition."""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
from pathlib import Path

import numpy as np
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


def chromium(tmp_path: Path, *extra_flags: str):
    """Headless Chromium with a fresh profile, driven by selenium through Debian's chromedriver."""
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'chromium'}",
        "--autoplay-policy=no-user-gesture-required",  # audio plays without a click
        *extra_flags,
    ):  # fmt: skip
        options.add_argument(flag)
    # Without a sound server Chromium renders audio on its own clock. A PulseAudio null sink (the test
    # machine's virtual speaker) clocks the page's audio graph unevenly, which garbles the fake microphone.
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_RUNTIME_DIR", "PULSE_SERVER")}
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER, env=env))
    driver.set_script_timeout(30)
    return driver


@pytest.fixture
def browser(tmp_path):
    driver = chromium(tmp_path)
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


def test_demo_page_talks_through_the_microphone(tmp_path):
    """The Talk button: getUserMedia (Chromium's fake device playing a WAV of espeak-ng speech), the audio
    worklet's 20 ms frames of 16 kHz PCM16, the server's VAD and tiny.en Whisper, then the reply."""
    from selenium.webdriver.common.by import By

    from asr_helpers import require_espeak, speak, write_wav
    from test_ws_server import speech_engines

    require_espeak()
    silence = np.zeros(16000, dtype=np.float32)
    wav = write_wav(
        tmp_path / "mic.wav", np.concatenate([silence, speak("Please open the window."), silence, silence])
    )
    with FakeLlmServer() as llm:
        with ServerThread(
            AvatarServer(ServerConfig(), speech_engines(llm), tmp_path / "history", port=0)
        ) as server:
            driver = chromium(
                tmp_path,
                "--use-fake-ui-for-media-stream",  # allow the microphone without asking
                "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={wav}%noloop",
            )
            try:
                driver.get(server.http_url)
                driver.find_element(By.ID, "connect").click()
                wait_for(driver, "window.koeDemo.session")
                driver.find_element(By.ID, "talk").click()
                heard = wait_for(
                    driver, "window.koeDemo.responses.length === 1 && window.koeDemo", timeout=40
                )
            finally:
                driver.quit()
    final = heard["transcripts"][-1]  # partial transcripts come first, every 1.5 s of speech
    assert {"open", "window"} <= set(final.lower().replace(".", "").split())
    assert llm.requests[0]["messages"][-1] == {"role": "user", "content": final}
    assert (
        heard["responses"][0]["heard"] == f"You said: {final}." and not heard["responses"][0]["interrupted"]
    )
    assert heard["framesReceived"] > 10 and heard["errors"] == [] and heard["state"] == "idle"
