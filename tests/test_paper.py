"""The paper's reference numbers render as a labelled box."""

from dispsafe_nb.report import paper


def test_the_reference_box_names_its_source_and_states_each_figure():
    box = paper.xstest_over_refusal_box()
    assert box.startswith("> **Reference, the paper**") and "not a run of ours" in box
    assert "84.6% for KL-DiSP" in box and "36.1% for TV-DiSP" in box and "35.9% for the dual system" in box


def test_cost_box_states_the_papers_cost_figures():
    box = paper.cost_box()
    assert box.startswith("> **Reference, the paper**") and "not a run of ours" in box
    assert (
        "2× the compute" in box
        and "30%–100% more memory" in box
        and "< 1% memory" in box
        and "< 10% compute" in box
    )
