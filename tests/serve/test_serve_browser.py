"""A real browser against a real server: `ecgqa serve` in a subprocess, headless Chromium via Playwright.

Picks an ECG, asks a question, reads the answer off the page and checks it against
``ecgqa.load(CKPT).answer(...)``; also checks that an error reaches the page. Screenshots are kept
as test artefacts (pytest's tmp dir, or $ECGQA_TEST_ARTIFACTS when set).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = os.environ.get("ECGQA_CHROMIUM", "/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
    pytest.skip(f"no Chromium at {CHROMIUM} or on PATH (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install -e '.[test]')")
httpx = pytest.importorskip("httpx")

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(qa_checkpoint, prepared_qa, upperbound_checkpoint, tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ecgqa",
                "serve",
                "--checkpoint",
                str(qa_checkpoint),
                "--data",
                str(prepared_qa),
                "--port",
                str(port),
                "--device",
                "cpu",
                "-q",
                "--attributes",
                str(upperbound_checkpoint),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300  # imports take over a minute on a loaded 2-core machine
        while True:
            if proc.poll() is not None:
                pytest.fail(f"`ecgqa serve` exited with {proc.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"`ecgqa serve` did not answer /healthz within 300 s:\n{log.read_text()}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def page(server):
    with sync_api.sync_playwright() as p:
        executable = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
        browser = p.chromium.launch(executable_path=executable, args=FLAGS)
        pg = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors: list[str] = []
        pg.on("pageerror", lambda e: errors.append(str(e)))
        # the page must work under its Content-Security-Policy: Chromium reports every blocked script,
        # style or image on the console ("Refused to ... because it violates ...")
        pg.on(
            "console",
            lambda m: errors.append(m.text) if "Content Security Policy" in m.text or "Refused to" in m.text else None,
        )
        pg.add_init_script(
            "window.__csp = []; document.addEventListener('securitypolicyviolation', "
            "(e) => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));"
        )
        response = pg.goto(server + "/")
        pg.wait_for_selector("body[data-ready='1']", timeout=30_000)
        pg.js_errors = errors
        pg.first_response = response
        yield pg
        browser.close()


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory) -> Path:
    folder = os.environ.get("ECGQA_TEST_ARTIFACTS")
    out = Path(folder) if folder else tmp_path_factory.mktemp("artefacts")
    out.mkdir(parents=True, exist_ok=True)
    return out


def test_pick_ecg_ask_and_read_the_answer(page, qa_checkpoint, prepared_qa, artefacts):
    import ecgqa
    from ecgqa.data.prepared import PreparedData

    data = PreparedData(prepared_qa)
    ecg_id = 127
    question = "Does this ECG show static noise in lead aVL?"
    page.select_option("#ecg1", str(ecg_id))
    page.wait_for_function(f"() => document.getElementById('plot1').src.endsWith('/api/ecgs/{ecg_id}/plot.png')")
    page.wait_for_function("() => document.getElementById('plot1').naturalWidth > 0")
    page.fill("#question", question)
    page.click("#ask")
    page.wait_for_selector("#answer:not([hidden])", timeout=30_000)

    shown = [t.strip() for t in page.locator("#answer-set .pill").all_inner_texts()]
    bars = page.locator("#bars li")
    names = [t.strip() for t in bars.locator(".name").all_inner_texts()]
    values = [float(t) for t in bars.locator(".value").all_inner_texts()]

    expected = ecgqa.load(qa_checkpoint, device="cpu").answer(
        np.asarray(data.signals[data.row_of(ecg_id)], dtype=np.float32), question, ["no", "yes"]
    )
    assert shown == (expected.answer or ["none of the options"])
    assert sorted(names) == sorted(expected.valid_classes) == ["no", "yes"]
    for name, value in zip(names, values, strict=False):
        assert value == pytest.approx(expected.scores[name], abs=1e-3)
    assert "single-verify" in page.inner_text("#answer-meta")
    # the attribute classifier's findings for this ECG, as the API gives them (issue 12)
    api = httpx.get(f"{page.url.rstrip('/')}/api/ecgs/{ecg_id}/findings").json()
    page.wait_for_function(
        "() => document.getElementById('findings-model').textContent.includes('ECG 127')", timeout=30_000
    )
    assert page.locator("#findings-box").is_visible()
    if api["findings"]:
        shown_findings = [t.strip() for t in page.locator("#findings li .name").all_inner_texts()]
        assert shown_findings == [f["name"] for f in api["findings"]]
        assert [float(t) for t in page.locator("#findings li .value").all_inner_texts()] == pytest.approx(
            [f["score"] for f in api["findings"]], abs=1e-3
        )
    else:
        assert "no class above" in page.inner_text("#findings")
    assert page.locator("#error").is_hidden()
    assert page.locator("#unrecognised").is_hidden()  # a dataset question: no warning
    page.screenshot(path=str(artefacts / "serve_answer.png"), full_page=True)
    assert not page.js_errors
    headers = page.first_response.headers
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"
    assert page.evaluate("window.__csp") == []


def test_a_question_the_model_was_not_trained_on_is_flagged_before_the_answer(page, artefacts):
    page.fill("#question", "Is the patient likely to enjoy jazz music?")
    page.click("#ask")
    page.wait_for_function("() => document.getElementById('answer-meta').textContent.includes('not recognised')")
    warning = page.locator("#unrecognised")
    assert warning.is_visible() and "not one the model was trained on" in warning.inner_text()
    box, answer = warning.bounding_box(), page.locator("#answer-set").bounding_box()
    assert box["y"] + box["height"] <= answer["y"]  # read before the answer
    page.screenshot(path=str(artefacts / "serve_unrecognised.png"), full_page=True)
    assert not page.js_errors


def test_example_click_and_visible_error(page, artefacts):
    comparison = page.locator("#examples li", has_text="second ECG").first
    comparison.click()
    page.wait_for_function("() => document.getElementById('ecg2').value !== ''")
    page.wait_for_function(
        "() => document.getElementById('answer-meta').textContent.includes('comparison')", timeout=30_000
    )
    assert "comparison_irrelevant-query" in page.inner_text("#answer-meta")
    assert page.locator("#unrecognised").is_hidden()
    assert page.locator("#answer").is_visible()
    assert page.locator("#bars li").count() > 2  # one confidence bar per option
    page.screenshot(path=str(artefacts / "serve_comparison.png"), full_page=True)
    assert page.locator("#fig2").is_visible()

    page.select_option("#ecg2", "")  # a comparison question about a single ECG
    page.click("#ask")
    page.wait_for_selector("#error:not([hidden])", timeout=30_000)
    assert "second ECG" in page.inner_text("#error-text")
    assert page.locator("#answer").is_hidden()
    page.screenshot(path=str(artefacts / "serve_error.png"))
    assert not page.js_errors


def test_upload_a_record_from_the_page(page, sample_paths, tmp_path):
    folder = sample_paths.ptbxl_records / "records500" / "00000"
    files = []
    for suffix in (".hea", ".dat"):
        target = tmp_path / f"00005_hr{suffix}"
        target.write_bytes((folder / f"00005_hr{suffix}").read_bytes())
        files.append(str(target))
    page.click("#upload-box summary")
    page.set_input_files("#upload", files)
    page.wait_for_function("() => document.getElementById('cap1').textContent.includes('uploaded')", timeout=30_000)
    page.wait_for_function("() => document.getElementById('plot1').naturalWidth > 0")
    assert page.locator("#ecg1").is_disabled()
    page.fill("#question", "Does this ECG show baseline drift?")
    page.click("#ask")
    page.wait_for_function("() => document.getElementById('answer-meta').textContent.includes('noise')", timeout=30_000)
    assert sorted(t.strip() for t in page.locator("#bars li .name").all_inner_texts()) == ["no", "yes"]
    page.click("#clear-upload")
    assert page.locator("#ecg1").is_enabled()
    assert not page.js_errors
    assert page.evaluate("window.__csp") == []  # the uploaded plot is a blob: image the CSP allows


def test_another_origin_cannot_post_to_the_demo(page, server):
    """A page of another origin (http://localhost:PORT, served by the browser itself, against the demo at
    http://127.0.0.1:PORT) posts a CORS-simple multipart form, which needs no preflight: the demo refuses it
    unread (403). Chromium's own Local Network Access check is turned off in this browser, as browsers without
    it (and a demo reached on a public address) would send the request."""
    other = server.replace("127.0.0.1", "localhost")
    executable = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    browser = page.context.browser.browser_type.launch(
        executable_path=executable, args=[*FLAGS, "--disable-features=LocalNetworkAccessChecks"]
    )
    try:
        foreign = browser.new_page()
        foreign.route(other + "/elsewhere", lambda route: route.fulfill(body="<p>another site</p>"))
        foreign.goto(other + "/elsewhere")
        with foreign.expect_response(lambda r: r.url == server + "/api/plot") as caught:
            foreign.evaluate(
                """async (url) => {
                    const form = new FormData();
                    form.append("files", new Blob([new Uint8Array(16)]), "x.npy");
                    try { await fetch(url, {method: "POST", body: form, mode: "no-cors"}); } catch (e) {}
                }""",
                server + "/api/plot",
            )
        assert caught.value.status == 403
    finally:
        browser.close()
    same = page.evaluate(
        "async () => (await fetch('/api/answer', {method: 'POST', headers: {'content-type': 'application/json'}, "
        "body: JSON.stringify({ecg_ids: [127], question: 'Does this ECG show baseline drift?'})})).status"
    )
    assert same == 200  # the demo's own page still posts
