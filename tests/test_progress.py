"""Progress a person reads: one line per stage off a terminal, nothing when quiet."""

from __future__ import annotations

from lqf.training.progress import Stage, progress, say


def test_off_a_terminal_each_stage_is_one_line_with_its_time(capsys, monkeypatch) -> None:
    monkeypatch.setenv("LQF_PROGRESS", "line")
    assert list(progress(range(5), total=5, desc="features")) == [0, 1, 2, 3, 4]
    with Stage("solve", 3) as stage:
        stage.update(3)
        stage.note("residual 1e-05")
    stage.close()  # a second close prints nothing more
    say("ridge 1: solved")
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3 and "\r" not in "".join(err)
    assert err[0].startswith("features: 5/5 in ") and err[0].endswith(" s")
    assert err[1].startswith("solve: 3/3 in ") and err[1].endswith("(residual 1e-05)")
    assert err[2] == "ridge 1: solved"


def test_quiet_prints_nothing(capsys, monkeypatch) -> None:
    monkeypatch.setenv("LQF_PROGRESS", "line")
    list(progress(range(3), desc="x", quiet=True))
    with Stage("y", 1, quiet=True) as stage:
        stage.update()
    say("z", quiet=True)
    assert capsys.readouterr().err == ""


def test_a_stage_left_early_still_says_how_far_it_got(capsys, monkeypatch) -> None:
    monkeypatch.setenv("LQF_PROGRESS", "line")
    items = progress(range(10), total=10, desc="search")
    next(items)
    next(items)
    items.close()
    assert capsys.readouterr().err.startswith("search: 1/10 in ")
