"""The explorer page in real headless Chromium (Debian's `chromium`), against the real service.

Playwright drives the system browser through `executable_path`; no browser is ever downloaded.
Screenshots go to artifacts/screenshots/. The tests skip only when /usr/bin/chromium is missing.

Most tests run on whatever models the session's server has (CONVNET_TEST_MODELS_DIR may point at
smoke models with random weights). Drawing a digit and seeing the right class win needs the real,
trained mnist model in models/; that test starts its own server on it.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from tests.server import MODELS_DIR, ROOT, GunicornServer

CHROMIUM = Path(os.environ.get("CONVNET_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = ROOT / "artifacts" / "screenshots"
REAL_MODELS = ROOT / "models"
TIMEOUT_MS = 60_000

pytestmark = [
    pytest.mark.server,
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing (apt-get install chromium)"
    ),
]


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=TIMEOUT_MS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    """A fresh page whose console errors, page errors and off-site requests are collected."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    pg = context.new_page()
    pg.problems = []
    pg.urls = []
    pg.on("pageerror", lambda exc: pg.problems.append(f"page error: {exc}"))
    pg.on(
        "console",
        lambda msg: msg.type == "error" and pg.problems.append(f"console: {msg.text}"),
    )
    pg.on("request", lambda req: pg.urls.append(req.url))
    yield pg
    context.close()


@pytest.fixture(scope="module")
def mnist_server(server, tmp_path_factory) -> Iterator[GunicornServer]:
    """A server with the real, trained mnist model: the session's own, or one started for it."""
    if MODELS_DIR.resolve() == REAL_MODELS.resolve():
        yield server
        return
    versions = sorted(REAL_MODELS.glob("mnist/*/saved_model.pb"))
    if not versions:
        pytest.skip(f"the trained mnist model is not in {REAL_MODELS} yet")
    tmp = tmp_path_factory.mktemp("mnist-server")
    (tmp / "models").mkdir()
    (tmp / "models" / "mnist").symlink_to(REAL_MODELS / "mnist")
    srv = GunicornServer(tmp=tmp, workers=1, env={"CONVNET_MODELS_DIR": str(tmp / "models")})
    srv.start()
    yield srv
    srv.stop()


# ------------------------------------------------------------------ helpers


def shot(page, name: str, full_page: bool = False) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path


def open_explorer(page, url: str, model: str) -> dict:
    page.goto(f"{url}/?model={model}")
    page.wait_for_selector(f"body[data-state=ready][data-model={model}]")
    return next(
        m for m in requests.get(f"{url}/models", timeout=30).json()["models"] if m["name"] == model
    )


def updates(page) -> int:
    return int(page.evaluate("Number(document.body.dataset.updates || 0)"))


def wait_settled(page, after: int) -> None:
    """Until the page has shown a response newer than `after` and has nothing more in flight."""
    page.wait_for_function(
        "n => Number(document.body.dataset.updates || 0) > n && document.body.dataset.state === 'ready'",
        arg=after,
    )


def top_class(page) -> str:
    return page.locator("#bars li.top").get_attribute("data-class")


def probabilities(page) -> dict[str, float]:
    items = page.locator("#bars li")
    return {
        items.nth(i).get_attribute("data-class"): float(items.nth(i).get_attribute("data-p"))
        for i in range(items.count())
    }


def click_sample(page, model: str, label: str | None = None) -> dict:
    manifest = json.loads((ROOT / "service/explorer/samples/samples.json").read_text())["samples"]
    sample = next(s for s in manifest if s["model"] == model and label in (None, s["label"]))
    before = updates(page)
    page.locator(f'#sample-list button[data-file="{sample["file"]}"]').click()
    wait_settled(page, before)
    return sample


def draw(page, strokes: list[list[tuple[float, float]]]) -> None:
    """Mouse strokes on the pad; points are fractions (0..1) of its width and height."""
    pad = page.locator("#pad").bounding_box()
    for stroke in strokes:
        x, y = stroke[0]
        page.mouse.move(pad["x"] + x * pad["width"], pad["y"] + y * pad["height"])
        page.mouse.down()
        for x, y in stroke[1:]:
            page.mouse.move(pad["x"] + x * pad["width"], pad["y"] + y * pad["height"], steps=8)
        page.mouse.up()


def hover_unit(page, selector: str, shape: list[int], y: int, x: int) -> None:
    """Move the mouse to the centre of unit (y, x) of the map at `selector`."""
    h, w = shape[:2]
    page.locator(selector).scroll_into_view_if_needed()
    box = page.locator(selector).bounding_box()
    page.mouse.move(
        box["x"] + (x + 0.5) * box["width"] / w, box["y"] + (y + 0.5) * box["height"] / h
    )


def box_of(page, selector: str) -> tuple[int, int, int, int]:
    el = page.locator(selector)
    return tuple(int(el.get_attribute(f"data-{k}")) for k in "yxhw")


def assert_clean(page, url: str) -> None:
    assert page.problems == []
    offsite = [u for u in page.urls if not u.startswith((url, "data:", "blob:"))]
    assert offsite == []


# ------------------------------------------------------------------ tests


def test_page_loads_offline_with_every_layer(page, server):
    model = open_explorer(page, server.url, "mnist")
    assert page.locator("#model option").count() >= 2
    assert page.locator("#model").input_value() == "mnist"
    figures = page.locator("#layer-list figure.layer")
    assert figures.count() == len(model["layers"])
    for i, row in enumerate(model["layers"]):
        fig = figures.nth(i)
        assert fig.get_attribute("data-layer") == row["name"]
        caption = fig.locator("figcaption").inner_text()
        assert row["name"] in caption and row["type"] in caption
        assert "\u00d7".join(map(str, row["output_shape"])) in caption
    # Bars in the model's class order, each labelled.
    assert (
        page.locator("#bars li").evaluate_all("els => els.map(e => e.dataset.class)")
        == model["classes"]
    )
    assert_clean(page, server.url)


def test_sample_shows_prediction_input_and_one_map_per_channel(page, server):
    model = open_explorer(page, server.url, "mnist")
    click_sample(page, "mnist", "3")
    probs = probabilities(page)
    assert list(probs) == model["classes"]
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-3)
    assert top_class(page) == max(probs, key=probs.get)
    assert page.locator("#summary").inner_text().startswith(f"Prediction: {top_class(page)}")

    counts = {
        row["name"]: page.locator(f"#layer-{row['name']} .grid .map canvas").count()
        for row in model["layers"]
        if len(row["output_shape"]) == 3
    }
    assert counts["conv1"] == 6
    assert counts["conv2"] == 16
    assert counts == {
        row["name"]: row["output_shape"][2]
        for row in model["layers"]
        if len(row["output_shape"]) == 3
    }
    # Dense layers are strips with one pixel per unit; the softmax is a bar chart.
    for row in model["layers"]:
        if row["type"] in ("dense", "flatten"):
            size = page.locator(f"#layer-{row['name']} .strip canvas").evaluate(
                "c => c.width * c.height"
            )
            assert size >= row["output_shape"][0]
    assert page.locator("#layer-softmax .bars li").count() == len(model["classes"])

    # The preprocessed input is the MNIST-style centred digit: ink in the middle, dark border.
    pixels = np.array(
        page.locator("#input").evaluate(
            "c => Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)"
        ),
        dtype=np.uint8,
    ).reshape(32, 32, 4)[..., 0]
    assert pixels[:4].max() == 0 and pixels[:, :4].max() == 0
    assert pixels[8:24, 8:24].max() > 200
    assert "Top classes" in page.locator("#input-cap").inner_text()
    shot(page, "mnist-sample", full_page=True)
    assert_clean(page, server.url)


def test_upload_a_file(page, server, tmp_path):
    open_explorer(page, server.url, "mnist")
    # A dark "4" on white paper, as a phone photo of a drawing would be: the service inverts it.
    img = Image.new("L", (120, 160), 235)
    ink = np.asarray(img).copy()
    ink[20:90, 30:40] = 20
    ink[80:90, 30:95] = 20
    ink[20:150, 75:86] = 20
    path = tmp_path / "four.png"
    Image.fromarray(ink).save(path)
    before = updates(page)
    page.locator("#file").set_input_files(str(path))
    wait_settled(page, before)
    probs = probabilities(page)
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-3)
    assert page.locator("#status").inner_text() == f"Classified as {top_class(page)}."
    assert page.locator("#layer-conv1 .map").count() == 6
    assert_clean(page, server.url)


def test_hovering_a_pool_unit_highlights_its_window_and_max(page, server):
    model = open_explorer(page, server.url, "mnist")
    click_sample(page, "mnist", "8")
    pool = next(r for r in model["layers"] if r["name"] == "pool1")
    before = model["layers"][model["layers"].index(pool) - 1]["name"]  # relu1
    channel, y, x = 2, 6, 4
    hover_unit(page, f"#layer-pool1 .map[data-channel='{channel}']", pool["output_shape"], y, x)

    window = f"#layer-{before} .map[data-channel='{channel}'] .box.window"
    assert page.locator(window).count() == 1
    assert box_of(page, window) == (2 * y, 2 * x, 2, 2)
    assert page.locator(f"#layer-{before} .box.window").count() == 1  # only that map
    mark = f"#layer-{before} .map[data-channel='{channel}'] .box.max"
    my, mx, mh, mw = box_of(page, mark)
    assert (mh, mw) == (1, 1) and 2 * y <= my < 2 * y + 2 and 2 * x <= mx < 2 * x + 2

    # The marked unit is the true maximum of the window in the activations the page was sent.
    sample = (ROOT / "service/explorer/samples/digit-8.png").read_bytes()
    feats = requests.post(
        f"{server.url}/features/mnist?encoding=base64&layers={before}",
        data=sample,
        headers={"Content-Type": "image/png"},
        timeout=60,
    ).json()
    acts = np.frombuffer(base64.b64decode(feats["layers"][0]["data"]), "<f4").reshape(
        feats["layers"][0]["shape"]
    )
    win = acts[2 * y : 2 * y + 2, 2 * x : 2 * x + 2, channel]
    assert acts[my, mx, channel] == win.max()

    # Its receptive field on the 32x32 input: 6x6 pixels starting at (2y, 2x).
    assert box_of(page, "#input-fig .box.rf") == (2 * y, 2 * x, 6, 6)
    readout = page.locator("#readout").inner_text()
    assert "pool1" in readout and f"max at row {my}, column {mx}" in readout
    shot(page, "mnist-pool-hover")

    # Leaving the map clears the highlight.
    page.mouse.move(1, 1)
    assert page.locator(".box").count() == 0
    assert_clean(page, server.url)


def test_hovering_a_conv_unit_highlights_its_receptive_field(page, server):
    model = open_explorer(page, server.url, "mnist")
    click_sample(page, "mnist", "5")
    conv2 = next(r for r in model["layers"] if r["name"] == "conv2")
    hover_unit(page, "#layer-conv2 .map[data-channel='5']", conv2["output_shape"], 2, 3)
    # conv1 5x5 -> pool 2x2/2 -> conv2 5x5: 14x14 input pixels, 2 apart.
    assert box_of(page, "#input-fig .box.rf") == (4, 6, 14, 14)
    assert box_of(page, "#layer-conv2 .map[data-channel='5'] .box.cursor") == (2, 3, 1, 1)

    # The same with the keyboard: focus conv1's maps, move right twice and down once.
    page.locator("#layer-conv1 .grid").focus()
    for key in ("ArrowRight", "ArrowRight", "ArrowDown", "PageDown"):
        page.keyboard.press(key)
    assert box_of(page, "#layer-conv1 .map[data-channel='1'] .box.cursor") == (1, 2, 1, 1)
    assert box_of(page, "#input-fig .box.rf") == (1, 2, 5, 5)
    assert "conv1, map 1, row 1, column 2" in page.locator("#readout").inner_text()
    assert_clean(page, server.url)


def test_normalisation_switch_repaints(page, server):
    open_explorer(page, server.url, "mnist")
    click_sample(page, "mnist", "0")

    def conv1_pixels() -> list[int]:
        return page.locator("#layer-conv1 .map canvas").evaluate_all(
            "cs => cs.flatMap(c => Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data))"
        )

    per_map = conv1_pixels()
    assert "per map" in page.locator("#layer-conv1 .legend").inner_text()
    page.get_by_label("one range per layer").check()
    assert "per layer" in page.locator("#layer-conv1 .legend").inner_text()
    assert conv1_pixels() != per_map
    page.get_by_label("each map to its own range").check()
    assert conv1_pixels() == per_map
    assert_clean(page, server.url)


def test_scenes_shows_gradcam_and_its_layers(page, server):
    model = open_explorer(page, server.url, "scenes")
    click_sample(page, "scenes", "cat")
    # Every spatial layer shows one map per channel, the residual additions included.
    for row in model["layers"]:
        if len(row["output_shape"]) == 3:
            maps = page.locator(f"#layer-{row['name']} .map").count()
            assert maps == row["output_shape"][2], row["name"]
    assert page.locator("#layer-b3_2_add .map").count() == 128
    assert page.locator("#bars li").count() == len(model["classes"])

    fig = page.locator("#gradcam-fig")
    assert fig.is_visible()
    predicted = top_class(page)
    assert fig.get_attribute("data-class") == predicted
    caption = page.locator("#gradcam-cap").inner_text()
    assert f"“{predicted}”" in caption and model["signatures"]["gradcam"]["layer"] in caption
    spread = page.locator("#gradcam").evaluate(
        """c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                  let lo = 255, hi = 0; for (let i = 0; i < d.length; i += 4) {
                  lo = Math.min(lo, d[i]); hi = Math.max(hi, d[i]); } return hi - lo; }"""
    )
    assert spread > 20  # a picture, not a blank square

    # Explaining another class asks the API again and says so.
    other = next(c for c in model["classes"] if c != predicted)
    before = updates(page)
    page.get_by_label("Explain class").select_option(other)
    wait_settled(page, before)
    assert fig.get_attribute("data-class") == other
    shot(page, "scenes-gradcam")
    assert_clean(page, server.url)


def test_switching_model_while_a_drawing_waits_sends_nothing_stale(page, server):
    """A stroke drawn while the previous one is still being classified waits for it; switching
    the model meanwhile drops it. It was sent anyway, as a bodiless GET, and showed an error."""
    import time

    sent: list[str] = []
    page.on(
        "request",
        lambda r: (
            ("/features/" in r.url or "/gradcam/" in r.url)
            and sent.append(f"{r.method} {r.url.split('?')[0].split(server.url)[1]}")
        ),
    )

    def slow(route):
        time.sleep(1.0)  # the first classification is still running when the model changes
        route.continue_()

    page.route("**/features/mnist*", slow)
    open_explorer(page, server.url, "mnist")
    draw(page, [[(0.5, 0.2), (0.5, 0.8)]])
    page.wait_for_function("document.body.dataset.state === 'busy'")
    draw(page, [[(0.3, 0.5), (0.7, 0.5)]])  # waits for the first request
    page.select_option("#model", "scenes")
    page.wait_for_function("document.body.dataset.state === 'ready'")
    page.wait_for_timeout(500)
    assert all(s.startswith("POST ") for s in sent), sent
    assert "error" not in (page.get_attribute("#status", "class") or ""), page.text_content(
        "#status"
    )
    assert_clean(page, server.url)


def test_controls_are_labelled_and_reachable_by_keyboard(page, server):
    open_explorer(page, server.url, "mnist")
    unnamed = page.evaluate(
        """() => [...document.querySelectorAll('button, select, input, canvas[role=img]')]
              .filter(el => !(el.labels?.length || el.getAttribute('aria-label')
                              || el.textContent.trim()))
              .map(el => el.outerHTML.slice(0, 80))"""
    )
    assert unnamed == []
    reached = []
    for _ in range(40):
        page.keyboard.press("Tab")
        reached.append(
            page.evaluate(
                "() => { const e = document.activeElement;"
                " return e.id || e.dataset.file || e.value || e.className; }"
            )
        )
    # The model, the pad's buttons, the file input, the samples, the colour-scale radios ("map")
    # and the feature-map grids (one stop per layer).
    for control in ("model", "clear", "file", "digit-0.png", "map", "grid"):
        assert control in reached, reached


def test_phone_sized_screen(browser, server):
    context = browser.new_context(
        viewport={"width": 390, "height": 844}, device_scale_factor=2, has_touch=True
    )
    context.set_default_timeout(TIMEOUT_MS)
    try:
        pg = context.new_page()
        pg.goto(f"{server.url}/?model=mnist")
        pg.wait_for_selector("body[data-state=ready][data-model=mnist]")
        before = updates(pg)
        pg.locator("#sample-list button").first.tap()
        wait_settled(pg, before)
        overflow = pg.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0
        # Tapping a pool unit highlights its window too.
        pg.locator("#layer-pool1 .map[data-channel='0']").scroll_into_view_if_needed()
        box = pg.locator("#layer-pool1 .map[data-channel='0']").bounding_box()
        pg.touchscreen.tap(box["x"] + box["width"] * 0.5 / 14, box["y"] + box["height"] * 0.5 / 14)
        assert box_of(pg, "#layer-relu1 .map[data-channel='0'] .box.window") == (0, 0, 2, 2)
        # Tapping a conv unit opens its arithmetic; tapping a class shows its wiring.
        pg.wait_for_selector("body[data-weights=mnist]")
        pg.locator("#layer-conv2 .map[data-channel='3']").scroll_into_view_if_needed()
        box = pg.locator("#layer-conv2 .map[data-channel='3']").bounding_box()
        pg.touchscreen.tap(box["x"] + box["width"] * 4.5 / 10, box["y"] + box["height"] * 5.5 / 10)
        panel = arith(pg)
        assert (panel["layer"], panel["kind"]) == ("conv2", "conv")
        assert float(panel["result"]) == pytest.approx(float(panel["activation"]), abs=1e-4)
        wiring = pg.locator("#layer-fc3 .wiring")
        other = next(c for c in "0123456789" if c != top_class(pg))
        node = wiring.locator(f"g.class[data-class='{other}'] circle")
        node.scroll_into_view_if_needed()
        box = node.bounding_box()
        pg.touchscreen.tap(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        assert wiring.get_attribute("data-class") == other
        overflow = pg.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0
        pg.evaluate("window.scrollTo(0, 0)")
        shot(pg, "phone")
    finally:
        context.close()


# ------------------------------------------------------------------ the real model


DIGITS = {
    # A "1": one vertical stroke.
    "1": [[(0.5, 0.15), (0.5, 0.85)]],
    # A "7": a top bar, then a long diagonal down to the lower left.
    "7": [[(0.25, 0.2), (0.75, 0.2), (0.42, 0.85)]],
    # A "0": an oval.
    "0": [
        [(0.5 + 0.22 * np.sin(t), 0.5 - 0.32 * np.cos(t)) for t in np.linspace(0, 2 * np.pi, 24)]
    ],
}


@pytest.mark.parametrize("digit", list(DIGITS))
def test_drawing_a_digit_makes_the_right_class_win(page, mnist_server, digit):
    open_explorer(page, mnist_server.url, "mnist")
    before = updates(page)
    draw(page, DIGITS[digit])
    wait_settled(page, before)
    probs = probabilities(page)
    assert top_class(page) == digit, probs
    assert probs[digit] > 0.5
    shot(page, f"mnist-draw-{digit}")
    if digit == "7":
        # The picture for the README (scripts/explorer_screenshots.py copies it to docs/): the drawn
        # digit, its prediction and the first layers, with a pooling unit inspected.
        page.locator("#layer-pool1 .grid").focus()
        for key in ["PageDown"] * 3 + ["ArrowDown"] * 5 + ["ArrowRight"] * 8:
            page.keyboard.press(key)
        page.evaluate("window.scrollTo(0, 0)")
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(
            path=str(SCREENSHOTS / "explorer.png"),
            full_page=True,
            clip={"x": 0, "y": 0, "width": 1280, "height": 1560},
        )
        assert page.locator("#layer-relu1 .box.window").count() == 1
    assert_clean(page, mnist_server.url)


# ------------------------------------------------------------------ teaching views (issue 33)


def features_of(url: str, model: str, sample: dict) -> dict[str, np.ndarray]:
    """Every layer's activations (and "image": the input) for a sample, from the API itself."""
    body = requests.post(
        f"{url}/features/{model}?encoding=base64",
        data=(ROOT / "service/explorer/samples" / sample["file"]).read_bytes(),
        headers={"Content-Type": "image/png"},
        timeout=60,
    ).json()

    def arr(block: dict) -> np.ndarray:
        return np.frombuffer(base64.b64decode(block["data"]), "<f4").reshape(block["shape"])

    acts = {layer["name"]: arr(layer) for layer in body["layers"]}
    acts["image"] = arr(body["input"])
    return acts


def weights_of(url: str, model: str) -> dict[str, dict[str, np.ndarray | None]]:
    body = requests.get(f"{url}/models/{model}/weights?encoding=base64", timeout=60).json()
    return {
        layer["name"]: {
            k: np.frombuffer(base64.b64decode(v["data"]), "<f4").reshape(v["shape"]) if v else None
            for k, v in layer.items()
            if k not in ("name", "type")
        }
        for layer in body["layers"]
    }


def with_weights(page, model: str) -> dict:
    """Click the model's first sample and wait until the page has fetched the weights."""
    sample = click_sample(page, model)
    page.wait_for_selector(f"body[data-weights={model}]")
    return sample


def click_unit(page, layer: str, shape: list[int], ch: int, y: int, x: int) -> dict:
    hover_unit(page, f"#layer-{layer} .map[data-channel='{ch}']", shape, y, x)
    page.mouse.down()
    page.mouse.up()
    return arith(page)


def click_strip_unit(page, layer: str, n: int, unit: int) -> dict:
    canvas = page.locator(f"#layer-{layer} .strip canvas")
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    cols = min(n, 50)
    rows = -(-n // cols)
    page.mouse.click(
        box["x"] + (unit % cols + 0.5) * box["width"] / cols,
        box["y"] + (unit // cols + 0.5) * box["height"] / rows,
    )
    return arith(page)


def arith(page) -> dict:
    return page.locator("#arith").evaluate("e => ({...e.dataset, text: e.innerText})")


def assert_agrees(panel: dict, served: np.ndarray) -> None:
    """The page's own arithmetic equals the activation it was sent, which is the API's."""
    result, activation = float(panel["result"]), float(panel["activation"])
    assert activation == pytest.approx(float(served.reshape(-1)[int(panel["index"])]), abs=1e-6)
    assert result == pytest.approx(activation, abs=1e-4 * max(1.0, abs(activation)))


# The units clicked: (layer, channel, row, column) on maps, (layer, unit) on strips; corners
# included, where "same" padding puts zeros in the patch.
UNITS = {
    "mnist": {
        "maps": [("conv1", 0, 14, 14), ("conv1", 5, 0, 27), ("relu2", 7, 5, 5), ("conv2", 3, 4, 6)],
        "strips": [("fc1", 17), ("fc2", 3), ("fc3", 7), ("temperature", 2)],
    },
    "scenes": {
        "maps": [
            ("conv1", 2, 0, 0),
            ("conv1", 31, 16, 9),
            ("bn1", 4, 10, 10),
            ("b1_1_add", 8, 3, 30),
            ("b2_1_conv_a", 40, 15, 0),
            ("b2_1_shortcut_conv", 5, 7, 7),
            ("b3_2_conv_b", 100, 4, 4),
        ],
        "strips": [("gap", 9), ("fc", 1), ("temperature", 3)],
    },
}


@pytest.mark.parametrize("model", ["mnist", "scenes"])
def test_the_arithmetic_at_a_unit_gives_the_served_activation(page, server, model):
    info = open_explorer(page, server.url, model)
    sample = with_weights(page, model)
    acts = features_of(server.url, model, sample)
    rows = {r["name"]: r for r in info["layers"]}
    for layer, ch, y, x in UNITS[model]["maps"]:
        panel = click_unit(page, layer, rows[layer]["output_shape"], ch, y, x)
        assert panel["layer"] == layer and panel["kind"] == rows[layer]["type"], panel
        assert_agrees(panel, acts[layer])
        if panel["kind"] == "conv":
            kh, kw = rows[layer]["kernel_size"]
            tables = page.locator("#arith .channel").first.locator("table")
            assert tables.count() == 3  # patch, kernel, products
            assert tables.first.locator("td").count() == kh * kw
            assert "sum of products" in panel["text"] and "bias" in panel["text"]
    # The last unit clicked is a conv unit: the picture for docs/explorer.md.
    page.locator("#arith").scroll_into_view_if_needed()
    shot(page, f"{model}-arithmetic")
    for layer, unit in UNITS[model]["strips"]:
        panel = click_strip_unit(page, layer, rows[layer]["output_shape"][0], unit)
        assert panel["layer"] == layer and int(panel["index"]) == unit
        assert_agrees(panel, acts[layer])
        if rows[layer]["type"] == "dense":
            assert "largest products" in panel["text"]
    assert_clean(page, server.url)


def test_the_arithmetic_follows_the_keyboard_and_says_where_there_is_none(page, server):
    info = open_explorer(page, server.url, "scenes")
    sample = with_weights(page, "scenes")
    acts = features_of(server.url, "scenes", sample)
    page.locator("#layer-conv1 .grid").focus()
    for key in ("ArrowDown", "ArrowDown", "ArrowRight", "PageDown"):
        page.keyboard.press(key)
    panel = arith(page)
    assert panel["text"].startswith("conv1 (conv), map 1, row 2, column 1")
    assert_agrees(panel, acts["conv1"])
    # A strip by keyboard: focus it and step right.
    page.locator("#layer-fc .strip canvas").focus()
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    panel = arith(page)
    assert (panel["layer"], panel["index"]) == ("fc", "1")
    assert_agrees(panel, acts["fc"])
    # The mirror layers have no arithmetic to show, and the page says so.
    flip = next(r for r in info["layers"] if r["type"] == "flip")
    panel = click_unit(page, flip["name"], flip["output_shape"], 0, 3, 3)
    assert panel["kind"] == "none" and "mirror image" in panel["text"]
    assert "result" not in panel
    panel = click_strip_unit(page, "flip_mean", 128, 5)
    assert panel["kind"] == "none" and "no arithmetic view" in panel["text"]
    assert_clean(page, server.url)


def test_the_shift_views_say_there_is_no_arithmetic(page, server):
    """mnist from v7 runs on the digit and its one-pixel shifts (`views`, `view_mean`)."""
    info = open_explorer(page, server.url, "mnist")
    with_weights(page, "mnist")
    rows = {r["type"]: r for r in info["layers"]}
    panel = click_unit(page, rows["views"]["name"], rows["views"]["output_shape"], 0, 16, 16)
    assert panel["kind"] == "none" and "shifts by one pixel" in panel["text"]
    assert "result" not in panel
    panel = click_strip_unit(page, "view_mean", rows["view_mean"]["output_shape"][0], 5)
    assert panel["kind"] == "none" and "no arithmetic view" in panel["text"]
    assert_clean(page, server.url)


@pytest.mark.parametrize("model", ["mnist", "scenes"])
def test_filters_sit_above_their_maps_coloured_around_zero(page, server, model):
    info = open_explorer(page, server.url, model)
    with_weights(page, model)
    weights = weights_of(server.url, model)
    for row in info["layers"]:
        if row["type"] != "conv":
            continue
        filters = page.locator(f"#layer-{row['name']} .filters canvas")
        assert filters.count() == row["filters"], row["name"]
    # conv1's first filter, summed over its input channels: red where positive, blue where
    # negative (the diverging scale is white at zero).
    kernel = weights["conv1"]["kernel"].sum(axis=2)[..., 0]
    pixels = np.array(
        page.locator("#layer-conv1 .filters canvas").first.evaluate(
            "c => Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)"
        )
    ).reshape(*kernel.shape, 4)
    strong = np.abs(kernel) > 0.3 * np.abs(kernel).max()
    assert strong.any()
    red_minus_blue = pixels[..., 0].astype(int) - pixels[..., 2].astype(int)
    assert (np.sign(red_minus_blue[strong]) == np.sign(kernel[strong])).all()
    conv1 = next(r for r in info["layers"] if r["name"] == "conv1")
    label = page.locator("#layer-conv1 .filters").get_attribute("aria-label")
    assert f"conv1's {conv1['filters']} filters" in label
    assert_clean(page, server.url)


@pytest.mark.parametrize("model", ["mnist", "scenes"])
def test_softmax_is_shown_step_by_step(page, server, model):
    info = open_explorer(page, server.url, model)
    click_sample(page, model)
    rows = page.locator("#softmax-table tr[data-class]")
    assert rows.count() == len(info["classes"])
    for i in range(rows.count()):
        p, served = (float(rows.nth(i).get_attribute(k)) for k in ("data-p", "data-served"))
        assert p == pytest.approx(served, abs=1e-5)
    temperature = info["calibration"]["temperature"]
    text = page.locator("#layer-softmax .softmax-steps").inner_text()
    assert f"T = {temperature:.3g}" in text
    assert_clean(page, server.url)


@pytest.mark.parametrize("model", ["mnist", "scenes"])
def test_wiring_shows_a_classes_strongest_connections(page, server, model):
    info = open_explorer(page, server.url, model)
    sample = with_weights(page, model)
    acts = features_of(server.url, model, sample)
    weights = weights_of(server.url, model)
    logits = next(r for r in reversed(info["layers"]) if r["type"] == "dense")
    source = logits["inputs"][0]
    wiring = page.locator(f"#layer-{logits['name']} .wiring")
    predicted = top_class(page)
    assert wiring.get_attribute("data-class") == predicted

    def check(cls: str) -> None:
        k = info["classes"].index(cls)
        contribution = acts[source] * weights[logits["name"]]["kernel"][:, k]
        want = np.argsort(-np.abs(contribution), kind="stable")[:12]
        lines = wiring.locator("line")
        got = [int(lines.nth(i).get_attribute("data-from")) for i in range(lines.count())]
        assert set(got) == set(want.tolist())
        for i in range(lines.count()):
            c = float(lines.nth(i).get_attribute("data-contribution"))
            assert c == pytest.approx(contribution[got[i]], rel=1e-5, abs=1e-6)

    check(predicted)
    other, third = [c for c in info["classes"] if c != predicted][:2]
    wiring.locator(f"g.class[data-class='{other}']").hover()  # mouse
    assert wiring.get_attribute("data-class") == other
    check(other)
    wiring.locator(f"g.class[data-class='{third}']").focus()  # keyboard
    assert wiring.get_attribute("data-class") == third
    check(third)
    shot(page, f"{model}-wiring")
    assert_clean(page, server.url)


SEED_KERNELS = {
    "identity": [[0, 0, 0], [0, 1, 0], [0, 0, 0]],
    "edge detection 1": [[1, 0, -1], [0, 0, 0], [-1, 0, 1]],
    "edge detection 2": [[0, 1, 0], [1, -4, 1], [0, 1, 0]],
    "edge detection 3": [[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]],
    "sharpen": [[0, -1, 0], [-1, 5, -1], [0, -1, 0]],
    "box blur": [[1 / 9] * 3] * 3,
    "Gaussian blur": [[1 / 16, 2 / 16, 1 / 16], [2 / 16, 4 / 16, 2 / 16], [1 / 16, 2 / 16, 1 / 16]],
}


def convolve_same(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    padded = np.pad(image, 1)
    out = np.zeros_like(image)
    for y in range(image.shape[0]):
        for x in range(image.shape[1]):
            out[y, x] = (padded[y : y + 3, x : x + 3] * kernel).sum()
    return out


@pytest.mark.parametrize("model", ["mnist", "scenes"])
def test_trying_the_seeds_kernels_on_the_input(page, server, model):
    open_explorer(page, server.url, model)
    sample = click_sample(page, model)
    grey = features_of(server.url, model, sample)["image"].astype(np.float64).mean(axis=2)

    def result() -> tuple[np.ndarray, np.ndarray]:
        out = page.locator("#try-out")
        return (
            np.array(json.loads(out.get_attribute("data-values"))),
            np.array(json.loads(out.get_attribute("data-kernel"))),
        )

    def tried() -> int:
        return int(page.evaluate("Number(document.body.dataset.tried || 0)"))

    # Opened with the keyboard.
    page.locator("#try summary").focus()
    page.keyboard.press("Enter")
    page.wait_for_function("Number(document.body.dataset.tried || 0) > 0")
    for name, kernel in SEED_KERNELS.items():
        before = tried()
        page.select_option("#try-kernel", name)
        page.wait_for_function("n => Number(document.body.dataset.tried || 0) > n", arg=before)
        values, sent = result()
        np.testing.assert_allclose(sent, kernel, atol=5e-5)  # the cells hold 4 decimals
        np.testing.assert_allclose(values, convolve_same(grey, sent), rtol=1e-9, atol=1e-9)
    # An edited kernel: one cell changed makes it the user's own.
    before = tried()
    page.get_by_label("kernel row 2, column 2").fill("2.5")
    page.wait_for_function("n => Number(document.body.dataset.tried || 0) > n", arg=before)
    assert page.locator("#try-kernel").input_value() == "custom"
    values, sent = result()
    assert sent[1, 1] == 2.5
    np.testing.assert_allclose(values, convolve_same(grey, sent), rtol=1e-9, atol=1e-9)
    shot(page, f"{model}-try-kernel")
    assert_clean(page, server.url)


# ------------------------------------------------------------------ load times (measured, not asserted)

# The page before issue 33's teaching views, for the comparison in docs/explorer.md.
BEFORE = os.environ.get("EXPLORER_BEFORE", "e8b1b4c")
PAGE_FILES = ("index.html", "explorer.js", "explorer.css")
TIMINGS = ROOT / "artifacts" / "explorer-timings.json"


def old_page(commit: str) -> dict[str, bytes] | None:
    import subprocess

    files = {}
    for name in PAGE_FILES:
        done = subprocess.run(
            ["git", "show", f"{commit}:service/explorer/{name}"], cwd=ROOT, capture_output=True
        )
        if done.returncode != 0:
            return None  # not a git checkout (an installed copy): only the current page is timed
        files[name] = done.stdout
    return files


def serve(body: bytes, kind: str):
    return lambda route, _request: route.fulfill(body=body, content_type=kind)


def load_times(browser, url: str, model: str, files: dict[str, bytes] | None) -> dict:
    """One cold page load: first contentful paint and ready (ms since navigation), then the
    first classification of a sample (ms from the click to the painted result)."""
    import time

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    try:
        pg = context.new_page()
        types = {"html": "text/html", "js": "text/javascript", "css": "text/css"}
        for name, body in (files or {}).items():
            kind = types[name.rsplit(".", 1)[1]]
            pattern = f"{url}/?model={model}" if name == "index.html" else f"**/explorer/{name}"
            pg.route(pattern, serve(body, kind))
        pg.goto(f"{url}/?model={model}")
        pg.wait_for_selector(f"body[data-state=ready][data-model={model}]")
        ready = pg.evaluate("performance.now()")
        paint = pg.evaluate(
            "performance.getEntriesByName('first-contentful-paint')[0]?.startTime ?? null"
        )
        started = time.perf_counter()
        click_sample(pg, model)
        first = (time.perf_counter() - started) * 1000
        return {"first_paint_ms": paint, "ready_ms": ready, "first_classification_ms": first}
    finally:
        context.close()


def test_load_times_before_and_after(browser, server):
    """Median of 5 cold loads per model and page; written to artifacts/ for docs/explorer.md.
    The page before is the same server's, with the old page files served in place of today's."""
    before = old_page(BEFORE)
    pages = {"after": None, **({f"before ({BEFORE})": before} if before else {})}
    results: dict = {}
    for model in ("mnist", "scenes"):
        runs: dict[str, list[dict]] = {label: [] for label in pages}
        for _ in range(5):  # interleaved, so that neither page has the warmer server
            for label, files in pages.items():
                runs[label].append(load_times(browser, server.url, model, files))
        results[model] = {
            label: {key: float(np.median([r[key] for r in rs])) for key in rs[0]}
            for label, rs in runs.items()
        }
    TIMINGS.parent.mkdir(parents=True, exist_ok=True)
    TIMINGS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    for model in results.values():
        for figures in model.values():
            assert all(v is not None and v > 0 for v in figures.values()), figures
