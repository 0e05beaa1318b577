"""The sparsity study (SPEC §7): the grid, its tidy tables, restart, the pure analyses, the CLI."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

from dgclab.cli import main
from dgclab.record import Recording
from dgclab.study import (
    GRID,
    depth_ordering,
    load_study,
    orderings,
    plot_dead_fraction,
    plot_dead_over_training,
    plot_dgc_selection,
    plot_gamma_distribution,
    publish_study,
    run_sparsity_study,
    select_arms,
    selection_by_status,
    summarize,
)

ARMS = "basicnet-adam-l2-5e-4,dgc-adam-none"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A tiny grid: two arms, synthetic data, 64 images, 1 epoch."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("study")
    lines = []
    result = run_sparsity_study(out, "synthetic", subset=64, epochs=1, arms=ARMS,
                                progress=False, log=lines.append)
    return result, lines


def test_grid_is_the_documented_one():
    names = [a.name for a in GRID]
    assert len(names) == len(set(names)) == 12
    basic = [a for a in GRID if a.model == "basicnet" and a.batch_size == 64]
    assert {(a.optimizer, a.regularisation, a.lam) for a in basic} == {
        (o, r, lam) for o, r in (("adam", "l2"), ("adamw", "decoupled"), ("sgd", "l2"))
        for lam in (5e-4, 1e-4)} | {("adam", "none", 0.0)}
    assert {a.lr for a in GRID if a.optimizer == "sgd"} == {0.05}
    assert {a.lr for a in GRID if a.optimizer != "sgd"} == {1e-3}
    config = GRID[0].train_config("synthetic", 64, 1, seed=3)
    assert (config.optimizer, config.weight_decay, config.seed) == ("adam", 5e-4, 3)
    assert [a.name for a in select_arms("dgc-*")] == [a.name for a in GRID if a.name[:4] == "dgc-"]
    with pytest.raises(ValueError, match="'nope' matches no arm"):
        select_arms("basicnet-adamw-5e-4,nope")


def test_tables_have_the_tidy_columns(study):
    result, lines = study
    s = result.sparsity
    for column in ("arm", "optimizer", "regularisation", "lambda", "seed", "layer", "filters",
                   "dead_gamma", "dead_activation", "selectivity", "test_acc"):
        assert column in s.columns
    assert set(s["arm"]) == set(ARMS.split(","))
    basic = s[s["arm"] == "basicnet-adam-l2-5e-4"]
    assert basic["layer"].tolist() == [f"features.bn{i}" for i in range(1, 8)]
    assert basic["filters"].tolist() == [32, 64, 64, 128, 128, 256, 256]
    assert (s["dead_activation"] <= s["filters"]).all()
    assert set(result.summary["arm"]) == set(ARMS.split(","))
    p = result.pruning
    assert p["arm"].tolist() == ["basicnet-adam-l2-5e-4"]  # BasicNet arms only
    assert p["params_after"].iloc[0] <= p["params_before"].iloc[0]
    d = result.dgc_selection
    assert set(d["arm"]) == {"dgc-adam-none"}
    assert set(d["status"]) == {"zero", "constant", "live"}
    assert (d.groupby("layer")["channels"].sum() == d.groupby("layer")["in_channels"].first()).all()
    assert (result.out / "dgc-adam-none-seed0" / "train_recording.npz").is_file()
    assert {p.name for p in result.figures} == {
        "dead_fraction_basicnet.png", "dead_fraction_resnet8-dgc.png", "dead_over_training.png",
        "dgc_selection.png", "gamma_basicnet.png", "gamma_resnet8-dgc.png"}
    f = result.filters  # per filter, stacked over runs; counts agree with the per-layer table
    assert len(f) == s["filters"].sum()
    assert (f.groupby(["arm", "layer"], sort=False)["dead_activation"].sum().to_numpy()
            == s["dead_activation"].to_numpy()).all()
    assert sum("training" in line for line in lines) == 2


def test_second_invocation_skips_finished_arms(study, capsys):
    result, _ = study
    out = result.out
    checkpoints = {p: p.stat().st_mtime_ns for p in out.glob("*/checkpoint.pt")}
    assert len(checkpoints) == 2
    code = main(["study", "sparsity", "--dataset", "synthetic", "--subset", "64", "--epochs", "1",
                 "--arms", ARMS, "--out", str(out), "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 0
    assert printed.count("skip ") == 2 and "training" not in printed.split("Summary")[0]
    assert "basicnet-adam-l2-5e-4" in printed.split("Summary")[1]
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/checkpoint.pt")} == checkpoints
    assert load_study(out).sparsity.equals(result.sparsity)
    # another budget in the same folder is refused before anything runs
    assert main(["study", "sparsity", "--dataset", "synthetic", "--subset", "64", "--epochs", "2",
                 "--arms", ARMS, "--out", str(out)]) == 2
    assert "epochs was 1, now 2" in capsys.readouterr().err


def test_published_copy_reads_like_the_study(study, tmp_path, capsys):
    result, _ = study
    dest = tmp_path / "published"
    code = main(["study", "sparsity", "--out", str(result.out), "--report-only",
                 "--publish", str(dest)])
    printed = capsys.readouterr().out
    assert code == 0 and ": training" not in printed and f"to {dest}" in printed
    names = {p.name for p in dest.iterdir()}
    assert {"sparsity.csv", "pruning.csv", "dgc_selection.csv", "training.csv", "summary.csv",
            "filters.csv", "study.json", "report.txt", "dead_over_training.png",
            "gamma_basicnet.png"} <= names
    assert not [p for p in dest.iterdir() if p.is_dir()]  # no run folders, no checkpoints
    copy, original = load_study(dest), load_study(result.out)
    for table in ("sparsity", "pruning", "dgc_selection", "training", "summary", "filters"):
        pd.testing.assert_frame_equal(getattr(copy, table), getattr(original, table),
                                      check_dtype=False)
    assert not copy.training.empty  # from training.csv: the run folders stayed behind
    assert (dest / "report.txt").read_text().startswith("Summary")
    with pytest.raises(ValueError, match="is the study folder itself"):
        publish_study(original, result.out)


def test_orderings_verdicts():
    rows = []
    for name, opt, reg, lam, batch, dead in [
        ("a", "adam", "l2", 5e-4, 64, 0.4), ("b", "adamw", "decoupled", 5e-4, 64, 0.01),
        ("c", "sgd", "l2", 5e-4, 64, 0.02), ("d", "adam", "none", 0.0, 64, 0.0),
        ("e", "adam", "l2", 5e-4, 256, 0.5),
    ]:
        rows.append(dict(arm=name, model="m", optimizer=opt, regularisation=reg, layer="l",
                         batch_size=batch, seed=0, filters=100, dead_gamma=0,
                         dead_activation=int(dead * 100), selectivity=0.1, test_acc=0.9,
                         lr=1e-3, **{"lambda": lam}))
    table = orderings(summarize(pd.DataFrame(rows)))
    verdict = table.set_index(["comparison", "rule"])["verdict"]
    assert set(verdict.xs("dead_gamma", level="rule")) == {"no dead filters"}
    by_activation = verdict.xs("dead_activation", level="rule")
    assert by_activation.iloc[0] == "agrees"  # Adam + L2 0.40 > 0.01, 0.02, 0
    assert by_activation.iloc[1] == "disagrees"  # batch 64 0.40 < batch 256 0.50


def test_selection_by_status_on_a_hand_made_recording():
    # 4 images, 2 heads, 4 channels; channel 0 never selected, channel 3 always
    sel = torch.zeros(4, 2, 4, dtype=torch.bool)
    sel[..., 3] = True
    sel[:2, 0, 1] = True
    info = dict(in_channels=4, out_channels=4, kernel_size=(3, 3), stride=(1, 1),
                padding=(1, 1), dilation=(1, 1), heads=2, hidden=1, pruning_rate=0.5,
                inactive_channels=2, input_hw=(4, 4))
    recording = Recording({"block.conv": sel}, {"block.conv": info})
    filters = pd.DataFrame({"layer": "block.conv.norm", "filter": [0, 1, 2, 3],
                            "dead_gamma": [True, True, False, False],
                            "dead_activation": [True, False, False, False]})
    table = selection_by_status(recording, filters).set_index("status")
    assert table.loc["zero", "channels"] == 1 and table.loc["zero", "frequency"] == 0
    assert table.loc["constant", "frequency"] == pytest.approx(2 / 8)
    assert table.loc["live", "frequency"] == pytest.approx(0.5)  # channels 2 (0) and 3 (1)
    assert table["frequency_all"].iloc[0] == pytest.approx((0 + 2 / 8 + 0 + 1) / 4)
    assert (table["k"] == 2).all()
    with pytest.raises(ValueError, match="per-filter"):
        selection_by_status(recording, filters.drop(columns="dead_activation"))


def test_plots_return_figures(study):
    result, _ = study
    basic = result.sparsity[result.sparsity["model"] == "basicnet"]
    assert isinstance(plot_dead_fraction(basic), Figure)
    assert isinstance(plot_dead_over_training(result.training), Figure)
    assert isinstance(plot_dgc_selection(result.dgc_selection), Figure)
    fig = plot_gamma_distribution(result.filters[result.filters["model"] == "basicnet"])
    assert [line.get_label() for line in fig.axes[0].lines][0].startswith("basicnet-adam-l2")
    with pytest.raises(ValueError, match="lacks the columns"):
        plot_dead_fraction(basic.drop(columns="filters"))
    with pytest.raises(TypeError, match="must be a DataFrame, got dict"):
        plot_dead_fraction(basic.to_dict())


def test_dead_over_training_says_when_nothing_died():
    arms = [f"arm{i}" for i in range(12)]  # more arms than palette colours
    rows = [{"arm": a, "epoch": e, "dead_fraction": 0.0} for a in arms for e in (1, 2)]
    ax = plot_dead_over_training(pd.DataFrame(rows)).axes[0]
    assert ax.get_ylim() == (0, 0.05)
    assert any("no filter" in t.get_text() for t in ax.texts)
    styles = {line.get_label(): line.get_linestyle() for line in ax.lines}
    assert styles["arm0"] == "-" and styles["arm11"] == "--"  # colour repeats, dash tells apart

    rows[-1]["dead_fraction"] = 0.2
    ax = plot_dead_over_training(pd.DataFrame(rows)).axes[0]
    assert ax.get_ylim()[0] == 0 and ax.get_ylim()[1] >= 0.2 and not ax.texts


def test_the_basicnet_arms_can_train_the_pilots_half_width_net(study, tmp_path, capsys):
    result, _ = study
    # a folder of the full-width net refuses the half-width one before anything runs
    assert main(["study", "sparsity", "--dataset", "synthetic", "--subset", "64", "--epochs", "1",
                 "--arms", ARMS, "--out", str(result.out), "--basicnet", "basicnet-half"]) == 2
    assert "basicnet" in capsys.readouterr().err
    half = run_sparsity_study(tmp_path / "half", "synthetic", subset=64, epochs=1,
                              arms="basicnet-adam-none", basicnet="basicnet-half",
                              progress=False, figures=False, log=None)
    assert set(half.sparsity["model"]) == {"basicnet-half"}
    assert half.sparsity["filters"].sum() == 464  # 16-32-32-64-64-128-128
    assert list(half.pruning["arm"]) == ["basicnet-adam-none"]  # dead-filter removal ran
    with pytest.raises(ValueError, match="basicnet must be one of"):
        run_sparsity_study(tmp_path / "bad", "synthetic", basicnet="resnet8")
    assert main(["study", "sparsity", "--budget", "pilot", "--epochs", "3",
                 "--out", str(tmp_path / "x")]) == 2
    assert "--budget pilot sets --full, --epochs and --basicnet itself" in capsys.readouterr().err


def test_depth_ordering_halves_and_verdicts():
    def arm(name, dead_per_layer, rule="dead_gamma"):
        return [dict(arm=name, model="m", layer=f"bn{i}", seed=0, filters=10,
                     dead_gamma=dead if rule == "dead_gamma" else 0,
                     dead_activation=dead if rule == "dead_activation" else 0)
                for i, dead in enumerate(dead_per_layer, 1)]

    # 5 layers: bn1-bn2 against bn4-bn5, the middle bn3 in neither half
    table = depth_ordering(pd.DataFrame(arm("early", [4, 2, 9, 0, 1]) + arm("late", [0, 0, 0, 3, 5])
                                        + arm("none", [0, 0, 0, 0, 0])
                                        + arm("act", [0, 0, 0, 0, 2], rule="dead_activation")))
    rows = table.set_index(["arm", "rule"])
    assert list(rows.index) == [("early", "dead_gamma"), ("late", "dead_gamma"),
                                ("act", "dead_activation")]  # no row without a dead filter
    assert rows.loc[("early", "dead_gamma"), ["earlier", "later"]].tolist() == [0.3, 0.05]
    assert rows.loc[("early", "dead_gamma"), "verdict"] == "agrees"
    assert rows.loc[("early", "dead_gamma"), "layers"] == "bn1..bn2 vs bn4..bn5"
    assert rows.loc[("late", "dead_gamma"), "verdict"] == "disagrees"
    assert rows.loc[("act", "dead_activation"), "later"] == 0.1


def test_tables_and_results_of_the_wrong_type_are_type_errors():
    from dgclab.study import format_report, stop_reason

    for call, name in ((summarize, "sparsity"), (orderings, "summary"),
                       (depth_ordering, "sparsity"), (format_report, "result")):
        with pytest.raises(TypeError, match=f"{name} must be a .*, got list"):
            call([])
    with pytest.raises(TypeError, match="filters must be a DataFrame, got dict"):
        selection_by_status(None, {})
    with pytest.raises(TypeError, match="table must be a DataFrame, got list"):
        stop_reason([], 10, None, None)
