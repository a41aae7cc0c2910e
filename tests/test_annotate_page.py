"""The expert annotation page (``xaiflow annotate``), driven in headless Chromium against a real server
(in a thread of this process) on a real Zarr workspace: authentication, painting at image resolution
(brush, eraser, undo, box), resume across sessions, several annotators, and the agreement study on
what two annotators painted.

The synthetic dataset has 6 images of 48 px (3 classes x 2 specimens, one image each; the source puts
one specimen per class in train and one in test). The page fits a 48 px image at an integer zoom at an
integer offset, so the test maps image coordinates to whole CSS pixels exactly (``_client``)."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager

import numpy as np
import pytest
import xarray as xr
from PIL import Image
from selenium.webdriver.common.keys import Keys

from cli_run import run
from conftest import ingest_synthetic, synthetic_dataset
from xaiflow import store
from xaiflow.annotate import AnnotationServer, AnnotationSession
from xaiflow.annotations import annotated_samples

SIZE = 48
DATASET = "syn"
CLASSES = ("particles", "lamellae", "network")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, client):
    ws = tmp_path_factory.mktemp("annotate") / "ws.zarr"
    return ingest_synthetic(ws, client, name=DATASET, size=SIZE, specimens_per_class=2, images_per_specimen=1,
                            chunk_size=3, splits={"train": 1, "val": 0, "test": 1})


@contextmanager
def serving(workspace, annotator: str, split: str | None = None, auth: str | None = None):
    """A real annotation server for ``annotator`` on 127.0.0.1 in a thread, stopped afterwards."""
    with AnnotationServer(AnnotationSession(workspace, DATASET, annotator, split=split), auth=auth) as server:
        yield server


# --- browser helpers ---------------------------------------------------------------------------------
def _wait_ready(driver, previous: int | None = None, timeout: float = 15) -> int | None:
    """Wait until an image other than ``previous`` is shown (its position) or the session is finished (None)."""
    from selenium.webdriver.support.ui import WebDriverWait

    def shown(d):
        state = d.execute_script("return document.body.dataset.state")
        if state == "finished":
            return "finished"
        position = d.execute_script("return document.getElementById('stage').dataset.position")
        return state == "ready" and position is not None and int(position) != previous and position

    try:
        result = WebDriverWait(driver, timeout, poll_frequency=0.05).until(shown)
    except Exception:
        logs = [e["message"] for e in driver.get_log("browser")]
        raise AssertionError(f"page not ready; message {driver.find_element('id', 'message').text!r}, "
                             f"console {logs}") from None
    return None if result == "finished" else int(result)


def _open(driver, server) -> int | None:
    driver.get(server.url)
    assert "token=" not in driver.current_url  # the token moved into the cookie
    return _wait_ready(driver)


def _client(driver, x: float, y: float, exact: bool = True) -> tuple[int, int]:
    """Viewport CSS pixel of image coordinate (x, y); with ``exact`` asserts the mapping is exact in whole
    pixels (at the fitted zoom), else rounds (after zooming)."""
    r = driver.execute_script("const r = document.getElementById('mask').getBoundingClientRect();"
                              "return [r.left, r.top, r.width, r.height];")
    scale = r[2] / SIZE
    cx, cy = r[0] + x * scale, r[1] + y * scale
    if exact:
        assert scale == int(scale) and cx == int(cx) and cy == int(cy), (x, y, r)
    return round(cx), round(cy)


def _drag(driver, points: list[tuple[float, float]], exact: bool = True) -> None:
    """Press the left button at the first image point, move through the others, release."""
    from selenium.webdriver.common.actions.action_builder import ActionBuilder

    actions = ActionBuilder(driver, duration=0)
    actions.pointer_action.move_to_location(*_client(driver, *points[0], exact=exact))
    actions.pointer_action.pointer_down()
    for p in points[1:]:
        actions.pointer_action.move_to_location(*_client(driver, *p, exact=exact))
    actions.pointer_action.pointer_up()
    actions.perform()


def _keys(driver, keys: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).send_keys(keys).perform()


def _capsule(points: list[tuple[float, float]], diameter: float) -> np.ndarray:
    """Pixels whose centre is within diameter/2 of the polyline (what a brush stroke paints)."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] + 0.5
    out = np.zeros((SIZE, SIZE), bool)
    pts = points if len(points) > 1 else points * 2
    for (ax, ay), (bx, by) in zip(pts[:-1], pts[1:]):
        dx, dy = bx - ax, by - ay
        t = np.clip(((xx - ax) * dx + (yy - ay) * dy) / max(dx * dx + dy * dy, 1e-12), 0, 1)
        out |= (ax + t * dx - xx) ** 2 + (ay + t * dy - yy) ** 2 <= (diameter / 2) ** 2
    return out


def _box(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    out = np.zeros((SIZE, SIZE), bool)
    out[y0:y1, x0:x1] = True
    return out


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return (a & b).sum() / (a | b).sum()


def _annotations(workspace) -> xr.Dataset:
    """The stored group by plain xarray, indexed by sample id (stored: positions in ``sample``, ids in ``sample_id``)."""
    ds = xr.open_zarr(str(workspace), group=f"annotations/{DATASET}").load()
    return ds.assign_coords(sample=ds.sample_id.values)


# --- the order ----------------------------------------------------------------------------------------------
def test_order_is_stratified_seeded_and_stable(workspace):
    from xaiflow.annotate.session import stratified_order

    labels = ["a"] * 5 + ["b"] * 3 + ["c"]
    order = stratified_order(labels, seed=7)
    assert sorted(order) == list(range(9)) and order == stratified_order(labels, seed=7)
    rounds = [sorted(labels[i] for i in order[a:b]) for a, b in ((0, 3), (3, 5), (5, 7), (7, 8), (8, 9))]
    assert rounds == [["a", "b", "c"], ["a", "b"], ["a", "b"], ["a"], ["a"]]
    first, again = (AnnotationSession(workspace, None, "olga") for _ in range(2))  # the only dataset: the default
    assert first.samples.tolist() == again.samples.tolist()  # a restart shows the same sequence
    other = AnnotationSession(workspace, DATASET, "pablo").samples.tolist()
    assert sorted(other) == sorted(first.samples.tolist()) and other != first.samples.tolist()
    labels_of = dict(zip(*(store.strings(store.open_group(workspace, f"images/{DATASET}")[k].values)
                           for k in ("sample", "label"))))
    assert sorted(labels_of[s] for s in first.samples[:3]) == sorted(CLASSES)


def test_images_are_rendered_by_their_own_percentiles():
    from xaiflow.annotate.session import render_png

    ramp = np.arange(64 * 64, dtype=np.float64).reshape(64, 64)
    for image in (ramp.astype(np.uint16) * 7 + 1000, (ramp / 4096 - 3).astype(np.float32)):
        shown = np.asarray(Image.open(io.BytesIO(render_png(image))))
        assert shown.dtype == np.uint8 and shown.shape == (64, 64)
        assert shown.min() == 0 and shown.max() == 255 and (np.diff(shown.ravel().astype(int)) >= 0).all()
        lo, hi = np.percentile(image, (0.5, 99.5))  # the darkest and brightest 0.5 % are clipped
        assert (shown[image <= lo] == 0).all() and (shown[image >= hi] == 255).all()
        assert abs(int(shown[32, 0]) - 128) <= 1  # the median is mid-grey
    eight_bit = (ramp % 256).astype(np.uint8)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(render_png(eight_bit)))), eight_bit)


# --- 1. authentication -------------------------------------------------------------------------------
class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def _request(url: str, headers: dict | None = None, data: bytes | None = None) -> tuple[int, dict, bytes]:
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(urllib.request.Request(url, data=data, headers=headers or {}), timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def _non_loopback_addresses() -> set[str]:
    found = set()
    try:
        found |= {a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)}
    except OSError:
        pass
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
            found.add(s.getsockname()[0])
        except OSError:
            pass
    return {a for a in found if not a.startswith("127.") and a != "0.0.0.0"}


@contextmanager
def command_process(workspace, annotator: str):
    """``xaiflow annotate`` in its own process (token auth); yields (process, printed URL)."""
    env = {k: v for k, v in os.environ.items() if k != "XAIFLOW_ANNOTATE_AUTH_STRING"}
    proc = subprocess.Popen([sys.executable, "-m", "xaiflow.cli", "annotate", "-w", str(workspace), "-d", DATASET,
                             "--annotator", annotator, "--no-browser"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as in a terminal
    try:
        printed = []
        while not printed or not printed[-1].startswith("open "):
            line = proc.stdout.readline()
            assert line, f"exited {proc.wait()}: {''.join(printed)} {proc.stderr.read()}"
            printed.append(line)
        yield proc, printed[-1].split()[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_every_request_needs_the_token_or_basic_auth(workspace):
    stored = store.open_group(workspace, f"images/{DATASET}")
    with command_process(workspace, "auth-check") as (proc, url):
        token_url = urllib.parse.urlsplit(url)
        assert token_url.hostname == "127.0.0.1"
        port, token = token_url.port, urllib.parse.parse_qs(token_url.query)["token"][0]
        base = f"http://127.0.0.1:{port}"
        for address in _non_loopback_addresses():  # the host's other interfaces do not answer
            with pytest.raises(OSError):
                socket.create_connection((address, port), timeout=2).close()
        cookie_name = f"xaiflow_annotate_{port}"
        for path, headers in [("/api/image/0.png", {}), ("/api/state", {}), ("/", {}),
                              ("/api/image/0.png", {"Cookie": f"{cookie_name}=wrong"}),
                              ("/?token=wrong", {}), ("/static/app.js", {})]:
            status, _, body = _request(base + path, headers)
            assert status == 403, path
            assert not body.startswith(b"\x89PNG") and b"classes" not in body and b"<html" not in body

        status, headers, _ = _request(url)  # the printed URL: token -> cookie, redirect to the bare page
        assert status == 303 and headers["Location"] == "/"
        set_cookie = headers["Set-Cookie"]
        assert set_cookie.startswith(f"{cookie_name}={token};") and "HttpOnly" in set_cookie
        assert "SameSite=Strict" in set_cookie
        cookie = {"Cookie": f"{cookie_name}={token}"}
        pages = (("/", "text/html"), ("/static/app.js", "text/javascript"), ("/api/image/0.png", "image/png"))
        for path, kind in pages:  # the package's own files, and the image
            status, headers, body = _request(base + path, cookie)
            assert status == 200 and headers["Content-Type"].startswith(kind), path
        shown = np.asarray(Image.open(io.BytesIO(body)))
        session = AnnotationSession(workspace, DATASET, "auth-check")  # the same seeded order as the command's
        row = int(session.rows[0])
        assert stored.image.dtype == np.uint8 and np.array_equal(shown, stored.image[row].values)
        status, _, body = _request(f"{base}/api/state", cookie)
        assert status == 200 and b"label" not in body and session.sample_at(0).encode() not in body
        # a page of another site (DNS rebinding) or another origin gets nothing, even with the cookie
        assert _request(f"{base}/api/state", {**cookie, "Host": "evil.example:80"})[0] == 403
        post = {**cookie, "Content-Type": "application/json"}
        assert _request(f"{base}/api/submit", {**post, "Origin": "http://evil.example"}, b"{}")[0] == 403
        assert _request(f"{base}/api/submit", {**cookie, "Content-Type": "text/plain"}, b"{}")[0] == 415
        assert _request(f"{base}/api/submit", {**post, "Content-Length": str(10**9)}, b"{}")[0] == 413
        status, _, body = _request(f"{base}/api/submit", post, b'{"position": 0, "label": "particles", '
                                   b'"confidence": 0.5, "seconds": 1, "region": "AAAA"}')
        assert status == 400 and b"region" in body  # a region of the wrong size is refused, nothing stored
        assert annotated_samples(workspace, DATASET, "auth-check") == set()
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 130 and "stopped" in err, err

    with serving(workspace, "auth-check", auth="expert:s3cret") as server:
        url = f"http://127.0.0.1:{server.port}/api/image/0.png"
        assert server.token is None and "token" not in server.url
        for headers in ({}, {"Authorization": "Basic " + base64.b64encode(b"expert:wrong").decode()}):
            status, response_headers, body = _request(url, headers)
            assert status == 401 and "Basic" in response_headers["WWW-Authenticate"]
            assert not body.startswith(b"\x89PNG")
        good = {"Authorization": "Basic " + base64.b64encode(b"expert:s3cret").decode()}
        status, _, body = _request(url, good)
        assert status == 200 and body.startswith(b"\x89PNG")


# --- 2. painting ---------------------------------------------------------------------------------------
def test_painted_region_is_stored_at_image_resolution(workspace, browser):
    stroke = [(6.0, 24.0), (24.0, 20.0), (42.0, 24.0)]
    erase_kept, erase_undone = [(15.0, 12.0), (15.0, 36.0)], [(33.0, 12.0), (33.0, 36.0)]
    with serving(workspace, "alice") as server:
        position = _open(browser, server)
        sample = server.session.sample_at(position)
        started = time.monotonic()
        _keys(browser, "b[[")  # brush, size 8 -> 6
        assert browser.find_element("id", "size-value").text == "6"
        _drag(browser, stroke)
        _keys(browser, "e")
        _drag(browser, erase_kept)
        _drag(browser, erase_undone)
        _keys(browser, "z")  # undo the second erasure
        _keys(browser, Keys.ENTER)  # no class chosen yet: nothing is sent
        assert "Choose the class" in browser.find_element("id", "message").text
        browser.find_element("css selector", "label:has(#class-1)").click()  # "lamellae"
        slider = browser.find_element("id", "confidence")
        browser.execute_script("arguments[0].focus()", slider)  # a new image starts at 0.5
        slider.send_keys(Keys.ARROW_RIGHT * 6)  # 0.8
        assert browser.find_element("id", "confidence-value").text == "0.80"
        browser.find_element("id", "submit").click()
        next_position = _wait_ready(browser, previous=position)
        elapsed = time.monotonic() - started
        assert next_position is not None and "1 of 6 done" in browser.find_element("id", "progress").text

    ds = _annotations(workspace)
    cell = ds.sel(sample=sample, annotator="alice")
    region = cell.region.values.astype(bool)
    painted, erased, undone = _capsule(stroke, 6), _capsule(erase_kept, 6), _capsule(erase_undone, 6)
    expected = painted & ~erased
    assert _iou(region, expected) > 0.8, _iou(region, expected)
    assert not region[erased].any()  # erased stays erased
    assert region[painted & undone].all()  # the undone erasure is painted again
    assert not region[~painted].any()
    assert str(cell.annotated_class.values) == "lamellae" and bool(cell.done)
    assert float(cell.confidence) == pytest.approx(0.8)
    assert 0 < float(cell.seconds) <= elapsed + 0.5
    assert cell.annotated_at.values.item().endswith("+00:00")


# --- 3. resume and several annotators -----------------------------------------------------------------
def test_a_new_session_resumes_and_each_annotator_has_its_own_entry(workspace, browser):
    with serving(workspace, "dora") as server:
        position = _open(browser, server)
        first = server.session.sample_at(position)
        rect = "const r = document.getElementById('mask').getBoundingClientRect(); return [r.left, r.width];"
        fitted = browser.execute_script(rect)
        _keys(browser, "++h")  # zoom in twice at the centre, then pan: the painting stays in image pixels
        zoomed = browser.execute_script(rect)
        _drag(browser, [(24.0, 24.0), (30.0, 27.0)], exact=False)
        panned = browser.execute_script(rect)
        assert zoomed[1] == pytest.approx(fitted[1] * 1.25 ** 2)
        assert panned[0] - zoomed[0] == pytest.approx(6 * zoomed[1] / SIZE, abs=1)  # dragged 6 image pixels
        _keys(browser, "b")
        _drag(browser, [(10.0, 10.0), (20.0, 10.0)], exact=False)
        _keys(browser, "1" + Keys.ENTER)  # class 1, Enter submits
        assert _wait_ready(browser, previous=position) is not None

    with serving(workspace, "dora") as server:  # a new session: new server, new token
        position = _open(browser, server)
        assert "1 of 6 done" in browser.find_element("id", "progress").text
        shown = [server.session.sample_at(position)]
        for _ in range(4):  # skip through the rest: the submitted image never comes back
            browser.find_element("id", "skip").click()
            position = _wait_ready(browser, previous=position)
            shown.append(server.session.sample_at(position))
        assert first not in shown and len(set(shown)) == 5

    with serving(workspace, "erin") as server:  # another annotator on the same image
        position = _open(browser, server)
        while server.session.sample_at(position) != first:
            browser.find_element("id", "skip").click()
            position = _wait_ready(browser, previous=position)
        _drag(browser, [(30.0, 30.0), (40.0, 40.0)])
        _keys(browser, "3" + Keys.ENTER)
        _wait_ready(browser, previous=position)

    ds = _annotations(workspace)
    assert {"dora", "erin"} <= set(ds.annotator.values.tolist())
    both = ds.sel(sample=first, annotator=["dora", "erin"])
    assert both.done.values.all() and both.annotated_class.values.tolist() == ["particles", "network"]
    dora, erin = both.region.values.astype(bool)
    assert dora[10, 15] and not dora[35, 35] and erin[35, 35] and not erin[10, 15]


# --- 4. two annotators, agreement by hand -----------------------------------------------------------------
#: per annotator and test image (by its true class): the rectangle painted (x0, y0, x1, y1) and the class chosen
PLAN = {
    "ann_a": {"particles": ((4, 4, 20, 20), "particles"), "lamellae": ((10, 10, 30, 40), "lamellae"),
              "network": ((0, 24, 48, 48), "network")},
    "ann_b": {"particles": ((8, 8, 24, 24), "particles"), "lamellae": ((10, 20, 30, 40), "lamellae"),
              "network": ((24, 0, 48, 48), "lamellae")},
}


def test_two_annotators_agreement_matches_a_hand_computation(workspace, browser):
    labels, true = {}, store.open_group(workspace, f"images/{DATASET}").label
    for annotator, plan in PLAN.items():
        with serving(workspace, annotator, split="test") as server:
            position = _open(browser, server)
            assert server.session.total == 3
            _keys(browser, "r")  # the box tool
            while position is not None:
                sample = server.session.sample_at(position)
                labels[sample] = label = str(true.sel(sample=sample).values)
                (x0, y0, x1, y1), chosen = plan[label]
                _drag(browser, [(x0, y0), (x1, y1)])
                _keys(browser, f"{CLASSES.index(chosen) + 1}" + Keys.ENTER)
                position = _wait_ready(browser, previous=position)
            assert "3 of 3 done" in browser.find_element("id", "progress").text

    ds = _annotations(workspace)
    samples = sorted(labels)
    boxes = {a: [_box(*PLAN[a][labels[s]][0]) for s in samples] for a in PLAN}
    for a in PLAN:  # the stored regions are exactly the rectangles
        for s, box in zip(samples, boxes[a]):
            assert np.array_equal(ds.region.sel(sample=s, annotator=a).values.astype(bool), box), (a, s)
    # by hand: classes (p, l, n) vs (p, l, l): p_o = 2/3, p_e = 1/3*1/3 + 1/3*2/3 + 1/3*0 = 1/3, kappa = 0.5
    kappa = (2 / 3 - 1 / 3) / (1 - 1 / 3)
    a, b = boxes["ann_a"], boxes["ann_b"]
    iou = np.mean([(x & y).sum() / (x | y).sum() for x, y in zip(a, b)])
    dice = np.mean([2 * (x & y).sum() / (x.sum() + y.sum()) for x, y in zip(a, b)])
    # rectangles: 12x12/(256+256-144); 20x20 in 20x30; 24x24 in 48x24 + 24x48 - 24x24
    assert iou == pytest.approx(np.mean([144 / 368, 400 / 600, 576 / 1728]))
    from xaiflow.human import annotator_agreement

    table = annotator_agreement(ds.sel(annotator=["ann_a", "ann_b"]))
    row = table[(table.annotator_a == "ann_a") & (table.annotator_b == "ann_b")].iloc[0]
    assert row.n_samples == 3
    assert row.cohen_kappa == pytest.approx(kappa)
    assert row.iou == pytest.approx(iou) and row.dice == pytest.approx(dice)


# --- the command ---------------------------------------------------------------------------------------------
def test_command_refuses_bad_input_before_serving(workspace):
    for args in (["-d", "nope", "--annotator", "alice"], ["-d", DATASET, "--annotator", "not valid!"],
                 ["-d", DATASET, "--annotator", "alice", "--split", "holdout"]):
        res = run("annotate", "-w", workspace, *args, "--no-browser")
        assert res.returncode == 2, res.stderr
        lines = [line for line in res.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
        assert "http://" not in res.stdout


# --- failures are answered, never a dropped connection ---------------------------------------------------------
def _reingest(ws, specimens_per_class: int) -> None:
    from xaiflow.config import parse_config
    from xaiflow.ingest import ingest_dataset

    cfg = synthetic_dataset(name=DATASET, size=32, chunk_size=4, specimens_per_class=specimens_per_class,
                            images_per_specimen=1)
    ingest_dataset(parse_config({"datasets": [cfg]}).datasets[0], ws, overwrite=True)


def test_busy_and_reingested_workspaces_get_a_json_error(tmp_path, monkeypatch):
    """A group held by another writer beyond the lock wait: 503 with Retry-After; images ingested again
    (other samples) while the page is open: 409 for the image and the submission, with the message the
    page shows; nothing is written. No request is left without an answer."""
    from xaiflow import annotations as ann
    from xaiflow.locks import group_lock

    ws = tmp_path / "ws.zarr"
    _reingest(ws, 2)
    ann.write_annotation(ws, DATASET, _first_sample(ws), "alice", label="particles", confidence=1,
                         region=np.ones((32, 32), bool), seconds=1)
    monkeypatch.setattr(ann, "LOCK_WAIT_SECONDS", 0.2)
    with AnnotationServer(AnnotationSession(ws, DATASET, "bob")) as server:
        base = f"http://127.0.0.1:{server.port}"
        headers = {"Cookie": f"{server.cookie}={server.token}", "Content-Type": "application/json"}
        submission = json.dumps({"position": 0, "label": "network", "confidence": 0.5, "seconds": 3,
                                 "region": base64.b64encode(bytes(32 * 32 // 8)).decode()}).encode()
        with group_lock(str(ws), f"annotations/{DATASET}", "another writer"):  # bob is new: needs the lock
            status, response_headers, body = _request(f"{base}/api/submit", headers, submission)
        assert status == 503 and response_headers["Retry-After"] == "5"
        assert "busy" in json.loads(body)["error"]
        _reingest(ws, 3)
        status, _, body = _request(f"{base}/api/image/0.png", headers)
        assert status == 409 and "ingested again" in json.loads(body)["error"]
        status, _, body = _request(f"{base}/api/submit", headers, submission)
        assert status == 409 and "ingested again" in json.loads(body)["error"]
    stored = ann.open_annotations(ws, DATASET)
    assert stored["annotator"].values.tolist() == ["alice"] and int(stored["done"].sum()) == 1


def _first_sample(ws) -> str:
    return str(store.strings(store.open_group(ws, f"images/{DATASET}")["sample"].values)[0])


def test_an_idle_connection_does_not_hold_up_stopping(workspace, monkeypatch):
    """A browser's preconnect (a connection that sends nothing) ends after the handler's timeout, so
    stopping the server (which waits for its request threads) does not wait for it."""
    import threading

    from xaiflow.annotate.server import AnnotationHandler

    monkeypatch.setattr(AnnotationHandler, "timeout", 1)
    server = AnnotationServer(AnnotationSession(workspace, DATASET, "idle")).start()
    idle = socket.create_connection(("127.0.0.1", server.port))
    try:
        time.sleep(0.2)  # the server has accepted it and a handler thread waits for a request line
        started = time.monotonic()
        closing = threading.Thread(target=server.close, daemon=True)
        closing.start()
        closing.join(timeout=15)
        assert not closing.is_alive(), "close() is still waiting for the idle connection"
        assert time.monotonic() - started < 5
    finally:
        idle.close()
