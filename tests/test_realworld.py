"""Real-world fact bank and the scenario's guard (the full run needs SmolLM2 and minutes of CPU)."""
import pytest

from lethe.data.realworld import COUNTRIES, country_facts, knows


def test_fact_bank_is_grouped_by_subject_with_wrong_options():
    facts = country_facts(0)
    assert len(facts) == 4 * len(COUNTRIES)
    for rec, value in facts:
        assert value in rec.answer and rec.paraphrased_answer == rec.answer
        assert len(rec.perturbed_answers) == 3 and all(not knows(p, value) for p in rec.perturbed_answers)
    assert len({rec.subject for rec, _ in facts}) == len(COUNTRIES)
    assert country_facts(0) == country_facts(0)


def test_knows_is_a_case_insensitive_containment():
    assert knows("The capital of France is Paris.", "Paris")
    assert knows("it is in EUROPE", "Europe") and not knows("The capital is Lyon.", "Paris")
    assert not knows("The main language spoken in Germany is English.", "German")
    assert not knows("a member of the European Union", "Europe")
    assert knows("The capital is Mexico City, of course", "Mexico City")


def test_scenario_refuses_a_model_that_knows_nothing(tmp_path, tiny_model, tokenizer):
    from lethe.errors import LetheError
    from lethe.model.load import save_model
    from lethe.scenarios.real_world import run_real_world

    model_dir = save_model(tiny_model, tokenizer, tmp_path / "tiny")
    with pytest.raises(LetheError, match="knows too few subjects"):
        run_real_world(out=tmp_path / "out", model_name=str(model_dir), size="smoke", progress=False)
