"""Sweeps, the static slider block and the live ipywidgets explorer (headless: no browser,
no display). Runs use tiny configurations so the whole file stays fast on two cores."""
from __future__ import annotations

import base64
import io
import json
import re
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

import gradcourse as gc  # noqa: E402
from gradcourse.live_sliders import LiveExplorer, StaticBuildNote, in_static_build, live_explorer  # noqa: E402
from gradcourse.plots import explorer_figure, render_png  # noqa: E402
from gradcourse.static_sliders import format_value, static_explorer, sweep_explorer  # noqa: E402
from gradcourse.sweeps import sweep  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"
TINY = gc.TrainConfig(steps=20, eval_every=10, eval_examples=128)


@pytest.fixture(autouse=True)
def not_a_static_build(monkeypatch):
    """Tests run as in Jupyter, even inside ``make book``'s environment."""
    monkeypatch.delenv("GRADCOURSE_STATIC_BUILD", raising=False)


@pytest.fixture
def explorer():
    made = []

    def make(**kwargs):
        kwargs.setdefault("start", False)
        made.append(LiveExplorer(train_config=TINY, device="cpu", **kwargs))
        return made[-1]

    yield make
    for item in made:
        item.close()


def tiny_png(value: float) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (int(value * 255) % 256, 0, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


def payload(block) -> dict:
    """The JSON the block's script reads."""
    match = re.search(r'<script type="application/json" id="[^"]+">(.*?)</script>', block.html, re.S)
    return json.loads(match.group(1))


LRS, CLIPS = [0.001, 0.03, 0.3], [None, 0.5]


def grid_frames():
    return {(lr, c): tiny_png(i / 7 + j / 3) for i, lr in enumerate(LRS) for j, c in enumerate(CLIPS)}


# ----- the static block ----------------------------------------------------------------
def test_values_read_like_settings():
    assert [format_value(v) for v in (None, 0.03, 1e-4, 3.0, True, "relu", 12)] == \
        ["off", "0.03", "0.0001", "3", "on", "relu", "12"]


def test_block_has_one_frame_per_combination_and_a_labelled_slider_per_setting():
    block = static_explorer(grid_frames(), {"lr": LRS, "clip_threshold": CLIPS}, title="LR and clipping",
                            caption="Move the sliders.")
    data = payload(block)
    assert block.n_frames == 6 and len(data["frames"]) == 6
    assert [s["name"] for s in data["sliders"]] == ["learning rate", "clip threshold"]
    assert data["sliders"][0]["labels"] == ["0.001", "0.03", "0.3"]
    assert data["sliders"][1]["labels"] == ["off", "0.5"]
    assert len(re.findall(r'<input type="range"', block.html)) == 2
    assert 'max="2"' in block.html and 'max="1"' in block.html
    assert re.search(r'<img [^>]*alt="LR and clipping \(learning rate = 0.001, clip threshold = off\)"', block.html)
    assert block._repr_html_() == block.html and "Move the sliders." in block.html
    assert block.size_bytes == len(block.html.encode())


def test_identical_images_are_embedded_once():
    same = tiny_png(0.5)
    block = static_explorer({(lr,): same for lr in LRS}, {"lr": LRS})
    assert block.n_frames == 3 and len(payload(block)["images"]) == 1


def test_two_blocks_never_share_an_element_id():
    first = static_explorer(grid_frames(), {"lr": LRS, "clip_threshold": CLIPS})
    second = static_explorer(grid_frames(), {"lr": LRS, "clip_threshold": CLIPS})
    ids = [re.findall(r'\bid="([^"]+)"', block.html) for block in (first, second)]
    assert all(len(set(found)) == len(found) for found in ids)
    assert not set(ids[0]) & set(ids[1])


def test_a_missing_combination_is_named():
    frames = grid_frames()
    del frames[(0.03, 0.5)]
    with pytest.raises(ValueError, match=r"no frame for the slider combination lr=0.03, clip_threshold=0.5"):
        static_explorer(frames, {"lr": LRS, "clip_threshold": CLIPS})


def test_a_frame_off_the_sliders_is_refused():
    frames = grid_frames()
    frames[(0.5, None)] = tiny_png(0.1)
    with pytest.raises(ValueError, match=r"frame \(0.5, None\) does not match the sliders"):
        static_explorer(frames, {"lr": LRS, "clip_threshold": CLIPS})


def test_a_block_over_the_size_limit_is_refused():
    with pytest.raises(ValueError, match=r"over the limit of 0.00 MB"):
        static_explorer(grid_frames(), {"lr": LRS, "clip_threshold": CLIPS}, max_bytes=1000)


def test_figures_are_rendered_at_one_size_and_closed():
    figures = {(lr,): plt.subplots()[0] for lr in LRS}
    block = static_explorer(figures, {"lr": LRS})
    assert plt.get_fignums() == []
    from PIL import Image

    sizes = {Image.open(io.BytesIO(base64.b64decode(image))).size for image in payload(block)["images"]}
    assert len(sizes) == 1


@pytest.mark.slow
def test_a_five_by_five_sweep_block_stays_well_under_two_megabytes(digits):
    run = gc.train(train_config=TINY, data=digits)
    lrs, clips = [0.001, 0.003, 0.01, 0.03, 0.1], [None, 0.1, 0.3, 1.0, 3.0]
    # Distinct titles make 25 distinct images, as a real sweep would.
    frames = {(lr, c): explorer_figure(run, title=f"lr {lr}, clip {format_value(c)}") for lr in lrs for c in clips}
    block = static_explorer(frames, {"lr": lrs, "clip_threshold": clips})
    assert len(payload(block)["images"]) == 25
    assert block.size_bytes < 1_500_000, block


# ----- sweeps --------------------------------------------------------------------------
def test_sweep_trains_every_combination_keyed_in_grid_order():
    runs = sweep({"lr": [0.01, 0.1], "clip_threshold": [None, 0.5]}, train_config=TINY)
    assert list(runs) == [(0.01, None), (0.01, 0.5), (0.1, None), (0.1, 0.5)]
    for (lr, threshold), run in runs.items():
        assert run.train_config.lr == lr and run.steps_done == TINY.steps
        if threshold is None:
            assert run.train_config.clip == "none"
        else:
            assert (run.train_config.clip, run.train_config.clip_threshold) == ("norm", threshold)


def test_a_second_sweep_reads_every_run_from_the_disk_cache(cache_dir):
    grid = {"depth": [2, 3], "lr": [0.05, 0.2]}
    first = sweep(grid, train_config=TINY)
    files = {path: path.stat().st_mtime_ns for path in cache_dir.glob("*.pkl")}
    assert len(files) == 4
    second = sweep(grid, train_config=TINY)
    assert {path: path.stat().st_mtime_ns for path in cache_dir.glob("*.pkl")} == files
    # A retrained run would have measured its own wall time; a cached one carries the first's.
    assert [run.seconds for run in second.values()] == [run.seconds for run in first.values()]


@pytest.mark.parametrize("grid, message", [
    ({"colour": [1, 2]}, "unknown setting 'colour'"),
    ({"lr": []}, r"grid\['lr'\] is empty"),
    ({"lr": [0.1, 0.1]}, "repeats a value"),
    ({"lr": [0.1, -1.0]}, r"TrainConfig.lr = -1.0 is out of range"),
    ({"image_size": [8, 16]}, "are data settings"),
])
def test_a_bad_grid_is_refused_before_anything_trains(grid, message, cache_dir):
    with pytest.raises(gc.ConfigError, match=message):
        sweep(grid, train_config=TINY)
    assert not list(cache_dir.glob("*.pkl"))


def test_sweep_explorer_has_a_slider_per_grid_field_with_readable_values():
    block = sweep_explorer({"lr": [0.01, 0.3], "clip_threshold": [None, 1.0]}, train_config=TINY,
                           title="Clipping")
    data = payload(block)
    assert block.n_frames == 4
    assert [s["labels"] for s in data["sliders"]] == [["0.01", "0.3"], ["off", "1"]]
    assert "training loss per step and gradient norm by layer" in data["alt"]


# ----- the live explorer ---------------------------------------------------------------
def test_controls_cover_the_settings_a_reader_plays_with(explorer):
    import ipywidgets as w

    live = explorer()
    assert set(live.controls) >= {"lr", "clip", "clip_threshold", "depth", "activation", "init", "norm",
                                  "residual", "optimizer"}
    assert isinstance(live.controls["lr"], w.FloatLogSlider)
    assert isinstance(live.controls["clip_threshold"], w.FloatLogSlider)
    assert ("off", "none") in live.controls["clip"].options
    assert live.controls["clip_threshold"].disabled  # clipping starts off
    assert live.png == b"" and live.status == ""


def test_moving_a_slider_retrains_and_shows_the_figure(explorer):
    live = explorer()
    live.controls["lr"].value = 0.1  # what a reader's drag does: the observer starts a run
    assert live.wait(timeout=120)
    assert live.png.startswith(PNG)
    assert live.run.train_config.lr == pytest.approx(0.1) and live.run.steps_done == TINY.steps
    assert live.status.startswith("finished") and live.error is None
    assert live.counts["trained"] == 1


def test_frames_are_shown_while_training(explorer):
    live = explorer(progress_every=5, frame_interval=0.0)
    shown = []
    live.image.observe(lambda change: shown.append(bytes(change["new"])), names="value")
    live.set(steps=30, wait=True)
    assert live.counts["frames"] >= 2 and len(shown) >= 3  # partial frames, then the final one
    assert shown[-1] == live.png


def test_the_first_frame_is_drawn_early_and_later_ones_wait_for_the_interval(explorer):
    live = explorer(progress_every=5, frame_interval=1e9)
    live.set(steps=30, wait=True)
    assert live.counts["frames"] == 1  # the first look at the partial run, then only the final figure


def test_the_default_live_run_learns_and_fails_at_a_tenfold_learning_rate(digits):
    from gradcourse.live_sliders import LIVE_MODEL, LIVE_TRAIN

    assert LIVE_TRAIN.steps <= 100  # sized to retrain within a second: see BENCHMARKS.md
    good = gc.train(LIVE_MODEL, LIVE_TRAIN, digits, device="cpu", progress=False)
    high = gc.train(LIVE_MODEL, LIVE_TRAIN, digits, device="cpu", progress=False, lr=10 * LIVE_TRAIN.lr)
    assert good.final_val_acc > 0.8 and not good.diverged
    assert high.diverged or high.final_val_acc < 0.2


def test_clip_off_and_on(explorer):
    live = explorer()
    run = live.set(clip_threshold=0.5, clip="norm", wait=True)
    assert (run.train_config.clip, run.train_config.clip_threshold) == ("norm", 0.5)
    assert not live.controls["clip_threshold"].disabled
    run = live.set(clip_threshold=None, wait=True)
    assert run.train_config.clip == "none" and live.controls["clip"].value == "none"
    assert live.controls["clip_threshold"].disabled


def test_a_bad_setting_is_shown_not_raised(explorer):
    live = explorer()
    assert live.set(depth=0, wait=True) is None
    assert "CNNConfig.depth = 0 is out of range" in live.status and live.status.startswith("Error")
    assert live.error is not None
    assert live.set(colour="red", wait=True) is None
    assert "unknown setting 'colour'" in live.status
    assert "colour" not in live.settings  # refused, so the next change works
    assert live.set(depth=2, wait=True) is not None and live.error is None


def test_a_newer_request_cancels_the_run_in_progress(explorer):
    live = explorer()
    live.set(steps=100_000, eval_every=100_000)  # would take minutes
    deadline = time.monotonic() + 60
    while not live.status.startswith("training") and time.monotonic() < deadline:
        time.sleep(0.01)
    for lr in (0.02, 0.03, 0.04):  # a quick drag: only the last value may train
        live.set(steps=20, eval_every=10, lr=lr)
    start = time.monotonic()
    assert live.wait(timeout=120)
    assert time.monotonic() - start < 60
    assert live.run.train_config.lr == 0.04 and live.run.steps_done == 20
    assert live.counts["trained"] == 1 and live.counts["cancelled"] >= 1


def test_returning_to_a_setting_is_served_from_memory(explorer):
    live = explorer()
    first = live.set(lr=0.01, wait=True)
    first_png = live.png
    live.set(lr=0.2, wait=True)
    assert live.png != first_png
    again = live.set(lr=0.01, wait=True)
    assert again is first and live.png == first_png
    assert live.counts == {**live.counts, "trained": 2, "from_memory": 1}
    assert live.status.startswith("(from memory)")


def test_static_build_is_read_from_the_environment(monkeypatch):
    assert not in_static_build()
    monkeypatch.setenv("GRADCOURSE_STATIC_BUILD", "1")
    assert in_static_build()


def test_in_a_static_build_live_explorer_is_a_note_and_makes_no_widget(monkeypatch):
    from ipywidgets.widgets import widget

    monkeypatch.setenv("GRADCOURSE_STATIC_BUILD", "1")
    before = len(widget._instances)
    note = live_explorer(train_config=TINY)
    assert isinstance(note, StaticBuildNote)
    assert "Colab" in note._repr_html_() and "Jupyter" in note._repr_html_()
    assert len(widget._instances) == before


def test_an_explorer_displayed_in_a_static_build_shows_the_note(explorer, monkeypatch):
    live = explorer()
    assert "application/vnd.jupyter.widget-view+json" in live._repr_mimebundle_()
    monkeypatch.setenv("GRADCOURSE_STATIC_BUILD", "1")
    bundle = live._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" not in bundle and "Colab" in bundle["text/html"]


def test_public_names():
    assert gc.sweep is sweep and gc.static_explorer is static_explorer and gc.live_explorer is live_explorer
    assert gc.sweep_explorer is sweep_explorer


def test_the_public_api_is_every_name_the_chapters_use_and_fits_one_screen():
    import json
    import re
    from pathlib import Path

    used = set()
    for path in (Path(__file__).parent.parent / "notebooks").glob("*.ipynb"):
        for cell in json.loads(path.read_text())["cells"]:
            if cell["cell_type"] == "code":
                used |= set(re.findall(r"\bgc\.([A-Za-z_]\w*)", "".join(cell["source"])))
    used -= {"__version__", "__file__"}
    assert used <= set(gc.__all__), f"chapters use names outside the public API: {sorted(used - set(gc.__all__))}"
    assert len(gc.__all__) <= 30
    for name in gc.__all__:
        assert getattr(gc, name) is not None


def test_render_png_closes_pyplot_figures():
    fig, _ = plt.subplots()
    assert render_png(fig).startswith(PNG)
    assert plt.get_fignums() == []
