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
    from lethe.model.save import save_model
    from lethe.scenarios.runner import run_scenario
    from lethe.util.errors import LetheError

    model_dir = save_model(tiny_model, tokenizer, tmp_path / "tiny")
    with pytest.raises(LetheError, match="knows too few subjects"):
        run_scenario("real-world", out=tmp_path / "out", model_name=str(model_dir), size="smoke", progress=False)


def test_own_answer_keeps_the_sentence_that_states_the_fact():
    from lethe.data.realworld import own_answer

    assert own_answer("The capital of Japan is Tokyo. It is a large", "Tokyo") == "The capital of Japan is Tokyo."
    assert own_answer("Japan is in East Asia, near Korea. Tokyo is", "Asia") == "Japan is in East Asia, near Korea."
    assert own_answer("The yen is used in Japan, which has a", "yen") == "The yen is used in Japan, which has a"
    assert own_answer("  Mr. Smith lives in Paris.  ", "Paris") == "Mr. Smith lives in Paris."
    assert own_answer("No fact here", "Paris") == "No fact here"
    assert own_answer("It costs 3.5 euro.", "euro") == "It costs 3.5 euro."


def test_report_has_a_per_set_table_with_the_starting_model(tmp_path):
    from lethe.reports.layouts import write_reports
    from lethe.reports.markdown import per_set_tables

    results = {
        "scenario": "real-world", "reference": {"target": {"forget/ROUGE": 0.9, "forget/CS": 0.8, "neighbour/ES": 0.5,
                                                          "neighbour/ROUGE": 0.95, "forget/TR_values": [1.0]}},
        "runs": [{"method": "ME+GD", "params": "lora", "epochs": [
            {"epoch": 0, "metrics": {}}, {"epoch": 6, "metrics": {"forget/ROUGE": 0.1, "forget/CS": 0.2,
                                                                "neighbour/ROUGE": 0.8, "neighbour/ES": 0.4}}]}],
    }
    tables = per_set_tables(results)
    assert [t[0] for t in tables] == ["forget", "neighbour"]
    assert tables[0][1] == ["ROUGE", "CS"] and tables[1][1] == ["ROUGE", "ES"]  # the paper's column order
    assert tables[0][2] == [["*target model*", 0.9, 0.8], ["ME+GD (lora)", 0.1, 0.2]]
    md_path, html_path = write_reports(results, tmp_path)
    md = md_path.read_text()
    assert "### neighbour" in md and "| *target model* | 0.950 | 0.500 |" in md
    html_text = html_path.read_text()
    assert "neighbour set</h3>" in html_text
