"""answer.csv and the report's front page (cwnnk.answer) on hand-made overlap rows."""


from cwnnk.answer import COLUMNS, answer_rows, front_page, reading, write_answer
from cwnnk.tables import read_table, write_table


def overlap_rows():
    base = dict(n_channels=16, n_dead_channels=2, n_nodes=1000, redundancy_chance=0.02, redundancy_twin=0.2,
                redundancy_vs_twin_ci_lo=-0.05, redundancy_vs_twin_ci_hi=0.05)
    return [
        dict(base, model="m", kind="trained", layer="conv1", depth=0, redundancy=0.31, redundancy_ci_lo=0.25,
             redundancy_ci_hi=0.37, redundancy_vs_twin=0.11, training_effect="raised"),
        dict(base, model="m", kind="trained", layer="conv2", depth=1, redundancy=0.21, redundancy_ci_lo=0.15,
             redundancy_ci_hi=0.27, redundancy_vs_twin=0.01, training_effect="none beyond the interval"),
        dict(base, model="m-e5", kind="snapshot", layer="conv1", depth=0, redundancy=0.5),
        dict(base, model="m-e0", kind="untrained", layer="conv1", depth=0, redundancy=0.2),
        dict(base, model="r18", kind="external", layer="layer4.1.relu_1", depth=0, redundancy=0.019,
             redundancy_ci_lo=0.01, redundancy_ci_hi=0.03, redundancy_twin=None, redundancy_vs_twin=None,
             training_effect=None),
    ]


def test_answer_rows_hold_the_final_models_with_a_reading(tmp_path):
    write_table(tmp_path / "overlap.csv", overlap_rows())
    rows = answer_rows(read_table(tmp_path / "overlap.csv"))
    assert [(r["model"], r["layer"]) for r in rows] == [("m", "conv1"), ("m", "conv2"), ("r18", "layer4.1.relu_1")]
    first = rows[0]
    assert (first["n_channels"], first["n_dead"], first["n_images"]) == (16, 2, 1000)
    # 0.31 / 0.02 = 15.5x chance, 0.29 above it; training raised it by 0.11
    assert first["reading"] == "conv1: channels overlap 15.5x chance (+0.29 above it), 0.11 above the untrained network"
    assert reading(first, short=True) == "15.5x chance; 0.11 above untrained"
    assert rows[1]["reading"].endswith("as the untrained network (+0.01, within the interval)")
    # an interval that reaches the chance level says so; no twin, no twin clause
    assert rows[2]["reading"] == ("layer4.1.relu_1: channels overlap 0.9x chance (-0.00 above it), not beyond chance "
                                  "within its interval")


def test_front_page_puts_the_answer_then_the_verdicts_before_the_description(tmp_path):
    write_table(tmp_path / "overlap.csv", overlap_rows())
    write_table(tmp_path / "claims.csv", [dict(claim="C2", test="redundancy above chance", verdict="supported",
                                               evidence="62 of 63 rows pass {not jinja}")])
    rows = write_answer(tmp_path / "overlap.csv", tmp_path / "claims.csv", tmp_path / "answer.csv",
                        tmp_path / "front.rst", "Channel redundancy\n==================\n\n{{ snakemake.config }}\n")
    assert list(read_table(tmp_path / "answer.csv")) == list(COLUMNS) and len(rows) == 3
    page = (tmp_path / "front.rst").read_text()
    assert page.startswith("{% raw %}") and page.index("{% endraw %}") < page.index("{{ snakemake.config }}")
    assert page.count("   * - m\n") == 2 and "   * - r18\n     - layer4.1.relu_1\n     - 0.019 [0.010, 0.030]" in page
    assert page.index("The answer") < page.index("This run's verdicts") < page.index("Channel redundancy\n")
    assert "     - supported\n" in page


def test_front_page_without_layers():
    assert "No layer was analysed." in front_page([], {})
