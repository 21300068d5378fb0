import matplotlib

matplotlib.use("Agg")

from types import SimpleNamespace

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_lib import viz


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_to_uint8_maps_the_range_ends():
    x = torch.tensor([-2.0, -1.0, 0.0, 1.0, 3.0])
    assert viz.to_uint8(x).tolist() == [0, 0, 128, 255, 255]


def test_image_grid_layout_and_values():
    x = torch.full((5, 1, 4, 6), -1.0)
    x[1] = 1.0
    grid = viz.image_grid(x, nrow=3, padding=2)
    assert grid.dtype == np.uint8
    assert grid.shape == (2 * (4 + 2) + 2, 3 * (6 + 2) + 2, 3)  # 2 rows x 3 columns, grey -> RGB
    assert (grid[2:6, 2:8] == 0).all()  # first image black
    assert (grid[2:6, 10:16] == 255).all()  # second image white
    assert (grid[0] == 255).all()  # white padding
    assert viz.image_grid(torch.zeros(1, 8, 8)).shape == (8, 8, 3)  # one image: no padding


@pytest.mark.parametrize("bad, error", [(np.zeros((1, 3, 4, 4)), TypeError), (torch.zeros(1, 2, 4, 4), ValueError)])
def test_image_grid_rejects_bad_input(bad, error):
    with pytest.raises(error):
        viz.image_grid(bad)


def test_show_images_and_save_grid(tmp_path):
    x = torch.rand(4, 3, 8, 8) * 2 - 1
    fig = viz.show_images(x, nrow=2, title="samples")
    assert fig.axes[0].get_title() == "samples"
    path = viz.save_grid(x, tmp_path / "sub" / "grid.png", nrow=2)
    saved = np.asarray(Image.open(path))
    assert saved.shape == (2 * 10 + 2, 2 * 10 + 2, 3)
    np.testing.assert_array_equal(saved, viz.image_grid(x, nrow=2))


def test_plot_trajectory_from_list_and_trajectory():
    frames = [torch.zeros(3, 1, 8, 8) + k / 10 for k in range(10)]
    fig = viz.plot_trajectory(frames, timesteps=list(range(9, -1, -1)), num_columns=4, max_rows=2)
    assert len(fig.axes) == 2 * 4
    assert fig.axes[0].get_title() == "t = 9" and fig.axes[3].get_title() == "t = 0"
    trajectory = SimpleNamespace(timesteps=torch.arange(9, -1, -1), x_t=frames, x0_pred=frames)
    assert len(viz.plot_trajectory(trajectory, num_columns=20).axes) == 3 * 10
    with pytest.raises(ValueError, match="timesteps"):
        viz.plot_trajectory(frames, timesteps=[1, 2])


def test_plot_schedules_draws_one_curve_per_schedule():
    t = torch.linspace(0, 1, 50, dtype=torch.float64)
    schedules = {"a": SimpleNamespace(alpha_bar=1 - t, log_snr=-t), "b": SimpleNamespace(alpha_bar=1 - t**2, log_snr=-2 * t)}
    fig = viz.plot_schedules(schedules)
    assert [ax.get_title() for ax in fig.axes] == ["alpha_bar", "log_snr"]
    assert all(len(ax.lines) == 2 for ax in fig.axes)
    with pytest.raises(ValueError, match="no attribute 'snr'"):
        viz.plot_schedules(schedules, quantities=("snr",))


def test_slider_calls_the_function_for_each_value():
    seen = []
    widget = viz.slider(lambda t: seen.append(t), "t", range(0, 1000, 100), value=200)
    control = widget.children[0]
    assert (control.min, control.max, control.step, control.value) == (0, 900, 100, 200)
    widget.update()  # ipywidgets 8 also calls fn on construction, 7 only once displayed
    assert seen[-1] == 200
    control.value = 500
    assert seen[-1] == 500
    labels = viz.slider(lambda s: seen.append(s), "s", ["linear", "cosine"])
    labels.children[0].value = "cosine"
    assert seen[-1] == "cosine"
    with pytest.raises(ValueError, match="not one of values"):
        viz.slider(print, "t", range(3), value=7)


def test_frame_player_embeds_every_frame_and_its_label():
    import json
    import re

    import matplotlib.pyplot as plt

    from diffusion_lib.viz import FramePlayer

    figures = []
    for k in range(3):
        fig, ax = plt.subplots(figsize=(1, 1))
        ax.plot([0, 1], [0, k])
        figures.append(fig)
    image = np.zeros((4, 5), dtype=np.uint8)
    player = FramePlayer([*figures, image], ["t = 0", "t = 1", "t = 2", "<t = 3>"], title="a & b", start=1)
    data = json.loads(re.search(r'class="frame-player-data">(.*?)</script>', player.html).group(1))
    assert len(data["images"]) == len(player) == 4 and len(set(data["images"])) == 4
    assert data["labels"][3] == "<t = 3>"
    assert f'src="data:image/png;base64,{data["images"][1]}"' in player.html
    assert 'max="3" value="1"' in player.html and "a &amp; b" in player.html
    assert player._repr_html_() == player.html and repr(player) == "FramePlayer(4 frames: t = 0 … <t = 3>)"
    assert not plt.get_fignums()  # the figures were closed once rendered


def test_frame_player_keeps_its_label_out_of_the_slider_row():
    import re

    from diffusion_lib.viz import FramePlayer

    # a label of changing length beside the slider would resize it during play (tests/test_browser.py
    # checks the layout itself in Chromium)
    player = FramePlayer([np.zeros((2, 2), np.uint8)] * 2, ["t = 0", "t = 999, a longer label"])
    row = re.search(r'<div class="frame-player-controls"[^>]*>(.*?)</div>', player.html).group(1)
    assert "<input" in row and "<button" in row and "frame-player-label" not in row
    assert "white-space:nowrap" in row


@pytest.mark.parametrize("frames, labels, kwargs, match", [
    ([], [], {}, "frames must not be empty"),
    ([np.zeros((2, 2), np.uint8)], ["a", "b"], {}, "one label per frame"),
    ([np.zeros((2, 2), np.uint8)], ["a"], {"start": 1}, "start must be a frame index"),
])
def test_frame_player_refuses_bad_input(frames, labels, kwargs, match):
    from diffusion_lib.viz import FramePlayer

    with pytest.raises(ValueError, match=match):
        FramePlayer(frames, labels, **kwargs)


def test_frame_player_refuses_float_images():
    from diffusion_lib.viz import FramePlayer

    with pytest.raises(TypeError, match="uint8"):
        FramePlayer([np.zeros((2, 2))], ["a"])


def test_frame_player_keeps_absolute_grey_levels():
    import base64
    import io
    import json
    import re

    from diffusion_lib.viz import FramePlayer

    dark, light = np.full((3, 3), 40, np.uint8), np.full((3, 3), 200, np.uint8)
    player = FramePlayer([dark, light], ["dark", "light"])
    data = json.loads(re.search(r'class="frame-player-data">(.*?)</script>', player.html).group(1))
    levels = [np.asarray(Image.open(io.BytesIO(base64.b64decode(png))).convert("L")) for png in data["images"]]
    assert abs(int(levels[0].mean()) - 40) <= 1 and abs(int(levels[1].mean()) - 200) <= 1
