"""A run folder never gives a plausible wrong answer: resume checks the checkpoint's own config,
divergence stops the run, malformed folders are one clear line, nothing is trained over."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dgclab.__main__ import main
from dgclab.record import Recording, load_recording
from dgclab.report import write_report
from dgclab.train import Trainer, TrainingDiverged, load_checkpoint
from helpers import StopAfter, tiny

@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A run folder of one finished epoch (copy it before changing it)."""
    run = tmp_path_factory.mktemp("runs") / "one-epoch"
    Trainer(tiny(epochs=1), run, progress=False).fit()
    return run


@pytest.fixture
def run(finished_run, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    return copy


def cli(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


# ---- resume believes the checkpoint, not the command line -----------------------------------


def test_resume_without_config_json_compares_the_checkpoints_config(run):
    (run / "config.json").unlink()
    with pytest.raises(ValueError, match=r"epochs was 1, now 3.*lr was 0.05, now 0.2"):
        Trainer(tiny(epochs=3, lr=0.2), run, resume=True, progress=False)
    # where it runs may change
    Trainer(tiny(epochs=1, device="cpu", workers=0), run, resume=True, progress=False)


def test_resume_with_an_edited_config_json_still_compares_the_checkpoint(run):
    saved = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps(saved | {"lr": 0.2}))
    with pytest.raises(ValueError, match="lr was 0.05, now 0.2"):
        Trainer(tiny(epochs=1, lr=0.2), run, resume=True, progress=False)


def test_cli_resume_with_another_width_names_the_key(run, capsys):
    code, err = cli(capsys, "train", "--model", "resnet8", "--width", "16", "--dataset",
                    "synthetic", "--subset", "128", "--epochs", "1", "--lr", "0.05",
                    "--out", run, "--resume", "--no-progress", "--no-report")
    assert code == 2
    assert "width was 8, now 16" in one_line_error(err)


# ---- nothing is trained over --------------------------------------------------------------


def test_resume_without_a_checkpoint_over_a_history_is_refused(run):
    (run / "checkpoint.pt").unlink()
    before = (run / "metrics.csv").read_text()
    with pytest.raises(ValueError, match="no checkpoint.pt"):
        Trainer(tiny(epochs=1), run, resume=True, progress=False)
    with pytest.raises(ValueError, match="no checkpoint.pt"):
        Trainer(tiny(epochs=1), run, progress=False)
    assert (run / "metrics.csv").read_text() == before


def test_a_run_killed_in_its_first_epoch_starts_again(tmp_path):
    # what such a folder holds: config.json and a metrics.csv with its header only
    Trainer(tiny(epochs=1), tmp_path / "run", progress=False)
    history = Trainer(tiny(epochs=1), tmp_path / "run", resume=True, progress=False).fit()
    assert history["epoch"].tolist() == [1]


def test_temporaries_of_killed_writes_are_removed_when_a_run_starts(run):
    stale = [run / ".checkpoint.pt.abc123_x.tmp", run / ".metrics.csv.zz9.tmp"]
    for path in stale:
        path.write_bytes(b"half a file")
    keep = run / "notes.tmp"  # not one of ours
    keep.write_text("mine")
    Trainer(tiny(epochs=1), run, resume=True, progress=False)
    assert not any(path.exists() for path in stale)
    assert keep.read_text() == "mine"


# ---- a run folder's outputs are those of its checkpoint ------------------------------------


def test_a_kill_between_checkpoint_and_recording_is_repaired_by_resume(tmp_path):
    straight = Trainer(tiny(), tmp_path / "a", progress=False)
    straight.fit()
    b = tmp_path / "b"
    with pytest.raises(KeyboardInterrupt):
        Trainer(tiny(), b, callbacks=[StopAfter(1)], progress=False).fit()
    (b / "test_recording.npz").unlink()  # killed after epoch 1's checkpoint, before its recording
    resumed = Trainer(tiny(), b, resume=True, progress=False)
    resumed.fit()
    for (name, x), y in zip(straight.model.state_dict().items(),
                            resumed.model.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=0, atol=0, msg=name)  # still exact
    a_rec, b_rec = (load_recording(run / "test_recording.npz") for run in (tmp_path / "a", b))
    assert a_rec.attrs == b_rec.attrs == {"epoch": 2}
    for name in a_rec.layer_names:
        assert torch.equal(a_rec.selections(name), b_rec.selections(name))


def test_a_finished_run_with_an_older_recording_is_recorded_again_on_resume(run):
    before = load_recording(run / "test_recording.npz")
    assert before.attrs == {"epoch": 1}
    stale = Recording({n: before.selections(n)[:3] for n in before.layer_names},
                      {n: before.layer_info(n) for n in before.layer_names},
                      attrs={"epoch": 0})
    stale.save(run / "test_recording.npz")
    page = write_report(run).read_text()
    assert "The recording is of epoch 0, the metrics of epoch 1" in page
    history = Trainer(tiny(epochs=1), run, resume=True, progress=False).fit()  # nothing to train
    assert history["epoch"].tolist() == [1]
    after = load_recording(run / "test_recording.npz")
    assert after.attrs == {"epoch": 1} and len(after) == len(before)
    for name in before.layer_names:
        assert torch.equal(after.selections(name), before.selections(name))
    assert "The recording is of epoch" not in write_report(run).read_text()


# ---- divergence stops the run, the last good checkpoint kept --------------------------------


def test_non_finite_values_are_refused_up_front(capsys):
    for value in ("inf", "nan", "-inf"):
        with pytest.raises(ValueError, match=f"lr must be finite and > 0, got lr={float(value)!r}"):
            tiny(lr=float(value)).validate()
    code, err = cli(capsys, "train", "--lr", "inf", "--out", "unused")
    assert code == 2 and "lr=inf" in one_line_error(err)


class Poison:
    """After epoch 1, a weight becomes infinite (what a huge learning rate does)."""

    def on_epoch_end(self, trainer, epoch, row):
        if epoch == 1:
            with torch.no_grad():
                next(trainer.model.parameters()).view(-1)[0] = math.inf


def test_a_diverging_run_stops_and_keeps_its_last_good_checkpoint(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"epoch 2, step 3: the loss is nan.*"
                                               r"still holds epoch 1"):
        Trainer(tiny(epochs=3), run, callbacks=[Poison()], progress=False).fit()
    state = load_checkpoint(run / "checkpoint.pt")
    assert state["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())
    assert pd.read_csv(run / "metrics.csv")["epoch"].tolist() == [1]


def test_a_huge_learning_rate_diverges_with_a_clear_error(tmp_path, capsys):
    code, err = cli(capsys, "train", "--model", "resnet8", "--width", "8", "--dataset",
                    "synthetic", "--subset", "128", "--epochs", "1", "--batch-size", "32",
                    "--lr", "1e30", "--out", tmp_path / "run", "--no-progress", "--no-report")
    assert code == 1
    assert "training diverged in epoch 1" in err and "nothing was saved" in err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


# ---- malformed run folders: one line naming the file, exit code 2 ---------------------------


def _bare_tensor(run):
    torch.save(torch.zeros(3), run / "checkpoint.pt")


def _no_model(run):
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    del state["model"]
    torch.save(state, run / "checkpoint.pt")


def _truncated(run):
    data = (run / "checkpoint.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(data[: len(data) // 2])


def _other_width(run):
    saved = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps(saved | {"width": 16}))


def _config_list(run):
    (run / "config.json").write_text("[1, 2]")


def _config_not_json(run):
    (run / "config.json").write_text("{'model': 'resnet8'")


def _config_bad_value(run):
    saved = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps(saved | {"epochs": "5"}))


@pytest.mark.parametrize("damage,file,says", [
    (_bare_tensor, "checkpoint.pt", "holds a Tensor, not a dict"),
    (_no_model, "checkpoint.pt", "no 'model' entry"),
    (_truncated, "checkpoint.pt", "not a readable dgclab checkpoint"),
    (_other_width, "checkpoint.pt", "weights do not fit"),
    (_config_list, "config.json", "expected a JSON object"),
    (_config_not_json, "config.json", "cannot be read as JSON"),
    (_config_bad_value, "config.json", "epochs must be an int, got epochs='5'"),
])
@pytest.mark.parametrize("command", ["eval", "export"])
def test_a_malformed_run_folder_is_one_line_naming_the_file(run, capsys, damage, file, says,
                                                            command):
    damage(run)
    argv = [command, run] + ([run.parent / "model.pt"] if command == "export" else [])
    code, err = cli(capsys, *argv)
    line = one_line_error(err)
    assert code == 2, err
    assert str(run / file) in line and says in line


def test_out_that_is_a_file_or_below_one(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for out in (afile, afile / "run"):
        code, err = cli(capsys, "train", "--dataset", "synthetic", "--out", out, "--no-progress")
        assert code == 2
        assert str(out) in one_line_error(err)


# ---- the CLI's argument validation, driven by generated values ------------------------------

NUMBER_FLAGS = {  # flag -> a strategy of values that must be refused
    "--lr": st.sampled_from(["0", "-1", "nan", "inf", "-inf", "1e400"]),
    "--momentum": st.sampled_from(["-0.5", "nan", "inf"]),
    "--weight-decay": st.sampled_from(["-1e-4", "nan", "inf"]),
    "--lasso-lambda": st.sampled_from(["-1", "nan", "inf"]),
    "--pruning-rate": st.sampled_from(["1", "1.5", "-0.1", "nan", "inf"]),
    "--epochs": st.integers(max_value=0).map(str),
    "--batch-size": st.integers(max_value=0).map(str),
    "--width": st.integers(max_value=0).map(str),
    "--heads": st.integers(max_value=0).map(str),
    "--subset": st.integers(max_value=0).map(str),
    "--workers": st.integers(max_value=-1).map(str),
    "--seed": st.one_of(st.integers(max_value=-1), st.integers(min_value=2**32)).map(str),
}


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flag=st.sampled_from(sorted(NUMBER_FLAGS)), data=st.data())
def test_cli_refuses_every_bad_number_with_one_line(flag, data, capsys, tmp_path):
    value = data.draw(NUMBER_FLAGS[flag], label="value")
    code, err = cli(capsys, "train", "--dataset", "synthetic", "--out", tmp_path / "never",
                    f"{flag}={value}", "--no-progress")  # "=": argparse takes "-inf" for a flag
    assert code == 2
    line = one_line_error(err)
    assert flag.lstrip("-").replace("-", "_") + "=" in line, line
    assert not (tmp_path / "never").exists()  # refused before anything was written


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flag=st.sampled_from(["--epochs", "--width", "--seed", "--lr", "--model", "--conv",
                             "--optimizer", "--dataset"]),
       value=st.text(alphabet="abcxyz-_./ ", min_size=1, max_size=8))
def test_cli_refuses_words_where_choices_or_numbers_belong(flag, value, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--out", str(tmp_path / "never"), flag, value])
    assert exit_.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_two_runs_of_one_seed_differ_only_in_their_timings(tmp_path):
    """The README's determinism note: same seed, same machine and threads, same metrics.csv but
    for ``epoch_seconds``."""
    for name in ("a", "b"):
        Trainer(tiny(), tmp_path / name, progress=False).fit()
    a, b = (pd.read_csv(tmp_path / name / "metrics.csv") for name in ("a", "b"))
    pd.testing.assert_frame_equal(a.drop(columns="epoch_seconds"),
                                  b.drop(columns="epoch_seconds"), check_exact=True)
