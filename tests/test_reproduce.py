"""``ray-sticker reproduce``: the published tables (tuning/tables/*.yaml) validate against their
configs, the comparison's arithmetic, and (slow) two rows of EIGML's Table 4 run at test size
through Ray Tune with the report written."""

import math

import pytest

from ray_sticker import cli
from ray_sticker.config import ConfigError
from ray_sticker.sweep.runner import base_config, check_sweep
from ray_sticker.sweep.spec import POINT_KEY
from ray_sticker.sweep.tables import PAPERS, TableSpec, compare, list_tables, load_table, markdown


def test_every_table_validates_against_its_configs_and_each_paper_has_one():
    tables = list_tables()
    assert {t.paper for t in tables} == set(PAPERS)
    for table in tables:
        # every table brings published figures, but M2SA's: the copy of its paper here gives none
        assert any(row.published for row in table.rows) or table.paper == "M2SA", table.name
        for tiny in (False, True):
            spec = table.sweep(tiny=tiny)
            assert spec.num_trials() == len(table.rows) * len(table.seeds)
            check_sweep(spec, base_config(spec), data=False)  # every row's fields exist in the model


def _table(**changes) -> TableSpec:
    data = {"name": "t", "paper": "EIGML", "source": "Table 9", "config": "eigml", "tiny": "eigml-tiny",
            "metrics": {"val_map": "MAP", "val_r10@1": "R@1"}, "scale": 100, "seeds": [1, 2],
            "rows": [{"label": "full", "published": {"val_map": 81.0}},
                     {"label": "w/o SAMM", "overrides": {"model.overrides.use_samm": False},
                      "published": {"val_map": 80.0, "val_r10@1": 70.0}}]}
    return TableSpec.model_validate({**data, **changes})


def test_rows_and_seeds_become_points_and_the_comparison_averages_the_seeds():
    table = _table()
    spec = table.sweep(tiny=True)
    assert spec.points == [{"train.seed": 1}, {"train.seed": 2}, {"model.overrides.use_samm": False, "train.seed": 1},
                           {"model.overrides.use_samm": False, "train.seed": 2}]
    assert spec.config == "eigml-tiny" and spec.name == "t-tiny" and spec.resources.num_workers == 0
    rows = [{POINT_KEY: 0, "status": "TERMINATED", "val_map": 0.80, "val_r10@1": 0.5},
            {POINT_KEY: 1, "status": "TERMINATED", "val_map": 0.84, "val_r10@1": 0.7},
            {POINT_KEY: 2, "status": "TERMINATED", "val_map": 0.79, "val_r10@1": 0.6},
            {POINT_KEY: 3, "status": "ERROR", "val_map": 0.10}]  # a failed trial counts for nothing
    full, ablated = compare(table, rows)
    assert full["trials"] == 2 and full["val_map:measured"] == pytest.approx(82.0)
    assert full["val_map:std"] == pytest.approx(math.sqrt(8.0))  # (80, 84): sample std
    assert full["val_map:diff"] == pytest.approx(1.0) and full["val_r10@1:published"] is None
    assert ablated["trials"] == 1 and ablated["val_map:std"] is None
    assert ablated["val_map:diff"] == pytest.approx(-1.0) and ablated["val_r10@1:diff"] == pytest.approx(-10.0)
    text = markdown(table, [full, ablated], True, "here")
    assert "| 1 | full | 82.00 ± 2.83 | 81.00 | +1.00 |" in text
    assert "w/o SAMM (1/2 trials)" in text


def test_a_metric_by_group_gets_a_column_per_group():
    """M2SA's per-language table: <metric>_<group> of each trial, averaged over the seeds."""
    table = _table(metrics={"val_macro_f1": "F1"}, by_group="val_macro_f1", rows=[{"label": "X-SM+C"}])
    rows = [{POINT_KEY: 0, "status": "TERMINATED", "val_macro_f1": 0.6, "val_macro_f1_de": 0.5, "val_macro_f1_en": 0.7},
            {POINT_KEY: 1, "status": "TERMINATED", "val_macro_f1": 0.8, "val_macro_f1_de": 0.7}]
    (line,) = compare(table, rows)
    assert line["val_macro_f1@de:measured"] == pytest.approx(60.0) and line["val_macro_f1@de:std"] > 0
    assert line["val_macro_f1@en:measured"] == pytest.approx(70.0) and line["val_macro_f1@en:std"] is None
    assert "| # | row | de | en |" in markdown(table, [line], True, "here")
    assert "| 1 | X-SM+C | 60.00 ± 14.14 | 70.00 |" in markdown(table, [line], True, "here")
    assert load_table("m2sa-table").by_group == "val_macro_f1"
    with pytest.raises(ValueError, match="by_group 'val_f1' is not among the metrics"):
        _table(by_group="val_f1")


def test_bad_tables_and_rows_are_refused():
    with pytest.raises(ValueError, match="paper 'X' is none of"):
        _table(paper="X")
    with pytest.raises(ValueError, match="published \\['val_f1'\\] are not among the metrics"):
        _table(rows=[{"label": "a", "published": {"val_f1": 1.0}}])
    with pytest.raises(ConfigError, match="table t has rows 1..2; no row 3"):
        _table().select([3])
    with pytest.raises(ConfigError, match="unknown table 'nope'"):
        load_table("nope")


def test_list_names_every_table_and_its_rows(capsys):
    assert cli.main(["-q", "reproduce", "--list"]) == 0
    out = capsys.readouterr().out
    for table in list_tables():
        assert table.name in out and table.rows[0].label in out


@pytest.mark.slow
@pytest.mark.ray
def test_two_rows_of_eigml_table4_at_test_size(ray_cluster, tmp_path, capsys):
    table = load_table("eigml-table4")
    assert cli.main(["-q", "reproduce", "eigml-table4", "train.epochs=1", "train.batch_size=32", "--tiny", "--rows", "1,6",
                     "--storage", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    exp = tmp_path / "eigml-table4-tiny"
    for row in (table.rows[0], table.rows[5]):
        published = f"{row.published['val_map']:.2f}"
        line = next(line for line in out.splitlines() if f"| {row.label} |" in line)
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[3] == published and cells[2] != "—", line  # measured beside published
    for name in ("reproduce.md", "reproduce.csv", "reproduce.png", "results.csv"):
        assert (exp / name).stat().st_size > 100, name
