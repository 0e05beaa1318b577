"""dgclab.viz.live: the training-state figure, and the live view inside a real Trainer fit."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from IPython.display import Image  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

import dgclab.viz.live as live_module  # noqa: E402
from dgclab.analysis import MetricTracker  # noqa: E402
from dgclab.record import Recording  # noqa: E402
from dgclab.train import TrainConfig, Trainer  # noqa: E402
from dgclab.viz import LiveTrainingView, RecordingSnapshots, plot_training_state  # noqa: E402

PANELS = ("loss", "k", "dead", "overlap")


pytestmark = pytest.mark.usefixtures("one_thread")


def panels(fig):
    by_label = {a.get_label(): a for a in fig.axes}
    return [by_label[p] for p in PANELS], by_label["accuracy"]


def step_logs(n=6):
    return [{"step": s, "epoch": 1 + (s - 1) // 3, "loss": 2.0 / s, "acc": s / 10, "lasso": 1.0,
             "lr": 0.1, "k_frac": min(s / 8, 0.75)} for s in range(1, n + 1)]


ROWS = [{"epoch": 1, "step": 3, "test_loss": 1.5, "test_acc": 0.4, "dead_filters": 1,
         "head_overlap": 0.3},
        {"epoch": 2, "step": 6, "test_loss": 1.1, "test_acc": 0.6, "dead_filters": 2,
         "head_overlap": 0.35}]


def test_training_state_panels():
    fig = plot_training_state(step_logs(), ROWS, smooth=2)
    assert isinstance(fig, Figure)
    (loss, k, dead, overlap), acc = panels(fig)
    assert len(fig.axes) == 5  # four panels and the accuracy twin
    np.testing.assert_allclose(loss.lines[0].get_ydata(), [2.0 / s for s in range(1, 7)])
    np.testing.assert_allclose(loss.lines[1].get_ydata()[1], (2.0 + 1.0) / 2)  # running mean
    np.testing.assert_allclose(loss.lines[2].get_ydata(), [1.5, 1.1])  # test loss at epoch ends
    np.testing.assert_allclose(acc.lines[1].get_ydata(), [40, 60])  # test accuracy in %
    np.testing.assert_allclose(k.lines[0].get_ydata(), [min(s / 8, 0.75) for s in range(1, 7)])
    np.testing.assert_allclose(dead.lines[0].get_xdata(), [3, 6])
    np.testing.assert_allclose(dead.lines[0].get_ydata(), [1, 2])
    np.testing.assert_allclose(overlap.lines[0].get_ydata(), [0.3, 0.35])
    assert "step 6, 2 epoch(s) done" in fig.get_suptitle()


def test_training_state_without_data_and_into_ax():
    fig = plot_training_state([], [])
    (loss, k, dead, overlap), _ = panels(fig)
    for a in (loss, k, dead, overlap):
        assert not a.lines and "no data yet" in a.texts[0].get_text()

    fig = Figure()
    ax = fig.add_subplot(1, 2, 2)
    assert plot_training_state(pd.DataFrame(step_logs(3)), pd.DataFrame(ROWS[:1]), ax=ax) is fig
    assert len(fig.axes) == 5 and ax not in fig.axes  # ax replaced by the 2 x 2 panels
    with pytest.raises(ValueError, match="step_logs lacks"):
        plot_training_state([{"step": 1}], [])
    with pytest.raises(ValueError, match="tracker"):
        plot_training_state([], [], tracker=object())
    with pytest.raises(TypeError, match="step_logs must be a list of dicts or a DataFrame, got int"):
        plot_training_state(3, [])
    with pytest.raises(TypeError, match="smooth must be an int, got smooth=2.5"):
        plot_training_state([], [], smooth=2.5)


def test_training_state_from_a_tracker():
    frame = pd.DataFrame({
        "step": [2, 2, 4, 4, 2, 4], "epoch": 1, "layer": ["bn1", "bn2"] * 2 + ["c", "c"],
        "metric": ["dead_gamma"] * 4 + ["head_jaccard"] * 2,
        "value": [0.0, 0.5, 0.25, 0.25, 0.2, 0.4]})
    fig = plot_training_state(step_logs(4), [], tracker=frame)
    (_, _, dead, overlap), _ = panels(fig)
    np.testing.assert_allclose(dead.lines[0].get_ydata(), [25, 25])  # % mean over BN layers
    assert "%" in dead.get_ylabel()
    np.testing.assert_allclose(overlap.lines[0].get_ydata(), [0.2, 0.4])


def test_live_view_in_a_trainer_fit():
    config = TrainConfig(model="resnet8", width=8, dataset="synthetic", subset=128, epochs=1,
                         eval_batch_size=128)
    view, snaps = LiveTrainingView(every_n_steps=1), RecordingSnapshots()
    trainer = Trainer(config, progress=False, callbacks=[view, snaps])
    trainer.fit()
    assert trainer.steps_per_epoch == 2
    assert view.draws == 2 + 1  # after each of the 2 steps, and at the epoch end
    assert [log["step"] for log in view.step_logs] == [1, 2] and len(view.epoch_rows) == 1
    assert len(view.figure.axes) == 5  # four panels and the accuracy twin
    (loss, k, dead, overlap), acc = panels(view.figure)
    for a in (loss, k, dead, overlap, acc):
        assert any(len(line.get_xdata()) for line in a.lines), a.get_label()
    assert list(snaps.recordings) == [1] and isinstance(snaps.recordings[1], Recording)

    with pytest.raises(ValueError, match="every_n_steps"):
        LiveTrainingView(every_n_steps=0)
    with pytest.raises(TypeError, match="every_n_steps must be an int, got every_n_steps='5'"):
        LiveTrainingView(every_n_steps="5")


def test_live_view_with_a_tracker_draws_every_n_steps():
    config = TrainConfig(model="resnet8", width=8, dataset="synthetic", subset=128, epochs=2,
                         eval_batch_size=128, record=False)
    trainer = Trainer(config, progress=False)
    tracker = MetricTracker(trainer.model, every_n_steps=1, input_size=trainer.input_size)
    view = LiveTrainingView(every_n_steps=3, tracker=tracker)
    trainer.callbacks += [tracker, view]  # the tracker first: its snapshot exists when drawn
    trainer.fit()
    assert view.draws == 1 + 2  # at step 3 of 4, and at both epoch ends
    (_, _, dead, overlap), _ = panels(view.figure)
    assert len(dead.lines[0].get_xdata()) == 4  # the tracker's snapshots, one per step
    assert len(overlap.lines[0].get_xdata()) == 4


def test_live_view_updates_one_display_in_a_kernel(monkeypatch):
    class Handle:
        updates = []

        def update(self, obj):
            self.updates.append(obj)

    shown = []
    monkeypatch.setattr(live_module, "in_kernel", lambda: True)
    monkeypatch.setattr(live_module, "figure_png", lambda fig, dpi: b"\x89PNG")  # no rendering
    monkeypatch.setattr(live_module, "display",
                        lambda obj, display_id=False: shown.append((obj, display_id)) or Handle())
    view = LiveTrainingView(every_n_steps=2)
    view.on_train_begin(None)
    for log in step_logs(4):
        view.on_step_end(None, log["step"], log["epoch"], log)
    view.on_epoch_end(None, 1, ROWS[0])
    assert view.draws == 3
    assert len(shown) == 1 and shown[0][1] is True  # displayed once, with a display id ...
    assert len(Handle.updates) == 2  # ... then updated in place
    assert all(isinstance(i, Image) for i in [shown[0][0], *Handle.updates])
