"""The page of `metatts serve` in a real headless Chromium (Debian's package, driven by Playwright; no browser
download): record a clip from the (fake, file-fed) microphone, upload five clips of an unseen voice with their
transcripts, adapt, synthesize with a blend, and check that the page's audio element holds a playable WAV of a
plausible length -- the very bytes the API gives for the same request -- and that the pack download is a valid voice
pack. The screenshot goes to $METATTS_SERVE_SCREENSHOT when set (docs/serve.png was made so)."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("starlette", reason="metatts serve needs the web extra (pip install metatts[web])")
pytest.importorskip("uvicorn", reason="metatts serve needs the web extra (pip install metatts[web])")
sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test drives Chromium with playwright "
                                                             "(pip install playwright; never `playwright install`)")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("the browser test needs Debian's chromium (apt-get install chromium)", allow_module_level=True)

from metatts.adapt.voicepack import load_voice_pack  # noqa: E402
from metatts.api import load  # noqa: E402
from metatts.serve import Limits, VoiceService  # noqa: E402
from metatts.serve.app import create_app  # noqa: E402
from serve_http import LiveServer, request  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]
TEXT = "Ships sail at dawn. The cat sat on the mat."


@pytest.fixture(scope="module")
def live(serve_runs, tmp_path_factory):
    tts = load(serve_runs["checkpoint"], device="cpu", vocoder="griffinlim")
    service = VoiceService(tts, tmp_path_factory.mktemp("voices"), Limits())
    server = LiveServer(create_app(service))
    yield service, server
    server.close()


@pytest.fixture(scope="module")
def page(live, new_voice_clips, tmp_path_factory):
    # The fake microphone plays a real clip; Chromium wants 16-bit PCM for it.
    mic = tmp_path_factory.mktemp("mic") / "mic.wav"
    wave, rate = sf.read(new_voice_clips[0][0], dtype="float32")
    sf.write(mic, np.tile(wave, 3), rate, subtype="PCM_16")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                  f"--use-file-for-fake-audio-capture={mic}", "--autoplay-policy=no-user-gesture-required"])
        context = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 900})
        tab = context.new_page()
        errors: list[str] = []
        tab.on("pageerror", lambda error: errors.append(str(error)))
        tab.goto(live[1].url + "/")
        tab.wait_for_function("document.getElementById('prompt').textContent.length > 0")
        yield tab
        assert not errors, errors  # no script error on the page during any test
        browser.close()


def test_recording_from_the_microphone_becomes_a_wav_clip_with_the_prompt(page):
    prompt = page.text_content("#prompt")
    page.click("#record")
    page.wait_for_function("document.getElementById('record').textContent.includes('Stop')")
    page.wait_for_timeout(1500)
    page.click("#record")
    page.wait_for_selector(".clip .transcript", timeout=30_000)
    assert page.input_value(".clip .transcript") == prompt  # prefilled with the sentence to read
    assert page.text_content("#prompt") != prompt  # and the next sentence is up
    clip = page.evaluate("""async () => {
        const clip = state.clips[0];
        const bytes = new Uint8Array(await clip.blob.arrayBuffer());
        return {name: clip.name, type: clip.blob.type, bytes: Array.from(bytes)};
    }""")
    assert clip["name"] == "recording-1.wav" and clip["type"] == "audio/wav"
    wave, rate = sf.read(io.BytesIO(bytes(clip["bytes"])), dtype="float32")
    assert 0.8 < len(wave) / rate < 5.0 and np.abs(wave).max() > 0.01  # about the 1.5 s recorded, not silence
    page.click(".clip .remove")
    assert page.locator(".clip").count() == 0


def test_upload_adapt_synthesize_and_download_in_the_browser(page, live, new_voice_clips, tmp_path):
    service, server = live
    wavs, texts = new_voice_clips
    assert page.is_disabled("#adapt")
    page.set_input_files("#clip-files", [str(w) for w in wavs])
    assert page.locator(".clip").count() == 5
    for i, text in enumerate(texts):
        page.locator(".clip .transcript").nth(i).fill(text)
    page.fill("#steps", "4")
    page.fill("#voice-name", "browser voice")
    page.click("#adapt")
    page.wait_for_selector("#adapt-result:not([hidden])", timeout=180_000)
    assert page.text_content("#adapt-error") == ""
    losses = page.text_content("#losses")
    assert losses.startswith("support loss per step:") and losses.count(":") == 1 + 5
    assert page.locator("#loss-chart circle").count() == 5
    assert page.locator(".clip.used").count() == 5
    voice = page.input_value("#voice")
    assert voice.startswith("browser-voice-")
    assert "browser voice" in page.text_content("#voices")

    page.fill("#text", TEXT)
    page.fill("#alpha", "0.8")
    assert page.text_content("#alpha-value") == "0.80"
    page.click("#synthesize")
    page.wait_for_function("() => { const a = document.getElementById('speech');"
                           " return a.src.startsWith('blob:') && a.readyState >= 1 && a.duration > 0; }",
                           timeout=120_000)
    audio = page.evaluate("""async () => {
        const a = document.getElementById('speech');
        const bytes = new Uint8Array(await (await fetch(a.src)).arrayBuffer());
        return {duration: a.duration, bytes: Array.from(bytes), error: a.error && a.error.code};
    }""")
    assert audio["error"] is None
    data = bytes(audio["bytes"])
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    wave, rate = sf.read(io.BytesIO(data), dtype="float32")
    seconds = len(wave) / rate
    assert rate == service.tts.sample_rate and 0.5 < seconds < 20  # two short sentences
    assert audio["duration"] == pytest.approx(seconds, abs=0.05)  # the browser decoded it as this long
    api = request(f"{server.url}/api/synthesize", "POST", json_body={"text": TEXT, "voice": voice, "alpha": 0.8})
    assert api.body == data  # what the page plays is the API's answer to the same request
    assert page.is_visible("#download-wav") and page.get_attribute("#download-wav", "download") == "speech.wav"

    with page.expect_download() as download:
        page.click("#download-pack")
    pack_path = tmp_path / download.value.suggested_filename
    download.value.save_as(pack_path)
    assert pack_path.name == f"{voice}.safetensors"
    pack = load_voice_pack(pack_path, service.tts.checkpoint, service.tts.model)
    assert len(pack.info["support_loss"]) == 5 and pack.info["name"] == "browser voice"
    assert pack_path.read_bytes() == (service.voices / pack_path.name).read_bytes()

    shot = Path(os.environ.get("METATTS_SERVE_SCREENSHOT") or tmp_path / "page.png")
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000


def test_errors_show_on_the_page(page):
    page.fill("#text", "   ")
    page.click("#synthesize")
    page.wait_for_function("document.getElementById('synth-error').textContent.length > 0")
    assert "text is empty" in page.text_content("#synth-error")
    page.set_input_files("#pack-file", files=[{"name": "junk.safetensors", "mimeType": "application/octet-stream",
                                               "buffer": b"not a pack"}])
    page.click("#upload-pack")
    page.wait_for_function("document.getElementById('pack-error').textContent.length > 0")
    assert "not a voice pack" in page.text_content("#pack-error")
