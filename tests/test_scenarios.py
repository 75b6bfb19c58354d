"""Scenarios as declarations on one runner, and the continual scenario at the smoke size."""
import json

import pytest

from lethe.util.errors import LetheError


def test_every_scenario_is_registered_once_and_found_by_key_or_recorded_name():
    from lethe.scenarios import Scenario
    from lethe.scenarios.catalog import SCENARIOS

    assert SCENARIOS.names() == ["continual", "copyright", "fictitious", "memorized", "own", "real-world"]
    assert "own" not in SCENARIOS.demos()  # the user's own data runs through `lethe bench --model`
    names = set()
    for key in SCENARIOS.names():
        sc = SCENARIOS.get(key)
        assert isinstance(sc, Scenario) and sc.key == key and sc.sizes and sc.default_runs
        assert SCENARIOS.get(sc.name) is sc  # what results.json records finds the same declaration
        names.add(sc.name)
    assert len(names) == 6
    with pytest.raises(LetheError, match="unknown scenario 'fictitous'.*Did you mean 'fictitious'"):
        SCENARIOS.get("fictitous")


def test_cli_scenario_choices_and_help_come_from_the_registry():
    from lethe.cli.commands import build_parser

    demo = build_parser().get_default("_commands")["demo"]
    action = next(a for a in demo._actions if a.dest == "scenario")
    assert sorted(action.choices) == ["continual", "copyright", "fictitious", "memorized", "real-world"]
    assert "closer-look Sec. 5.2" in action.help


def test_every_layout_a_scenario_names_exists():
    from lethe.reports.layouts import LAYOUTS
    from lethe.scenarios.catalog import SCENARIOS

    assert {SCENARIOS.get(k).report for k in SCENARIOS.names()} <= set(LAYOUTS.names())


def test_runner_refuses_unknown_options_sizes_and_methods_before_any_work(tmp_path):
    from lethe.scenarios.runner import run_scenario

    out = tmp_path / "out"
    with pytest.raises(LetheError, match=r"fictitious scenario has no option requests \(--requests\)") as e:
        run_scenario("fictitious", out=out, size="smoke", requests=3)
    # each known option named with the flag that sets it (none for those `lethe demo` does not take)
    assert "attack_options (--attack-opt)" in str(e.value) and str(e.value).endswith("sweep, seeds")
    with pytest.raises(LetheError, match="unknown size 'full' for the memorized scenario"):
        run_scenario("memorized", out=out, size="full")
    with pytest.raises(LetheError, match="unknown forget loss|unknown method"):
        run_scenario("continual", out=out, size="smoke", runs=["NOPE+GD"])
    with pytest.raises(LetheError, match="forgets 100 %"):
        run_scenario("continual", out=out, size="smoke", requests=10)
    with pytest.raises(LetheError, match="--reference: expected one of moving, fixed, both"):
        run_scenario("continual", out=out, size="smoke", reference="sometimes")
    assert not out.exists()  # nothing written for bad input


def test_request_authors_are_sequential_disjoint_groups_from_the_end():
    from lethe.data.synthetic import generate_authors
    from lethe.scenarios.continual import request_authors

    data = generate_authors("small", 0)
    groups = request_authors(data, 5, 10)
    assert [len(g) for g in groups] == [4] * 5
    assert groups[0] == data.authors[-4:] and groups[1] == data.authors[-8:-4]
    assert {r.subject for r in data.forget(10)} == set(groups[0])  # request 1 is the forget10 split
    assert len({a for g in groups for a in g}) == 20


def test_a_given_reference_equal_to_the_start_changes_nothing_and_another_one_does(tiny_model, tokenizer, smoke_data):
    """unlearn(reference_model=...): NPO and KL compare against it instead of the starting weights."""
    import copy

    import torch

    from lethe.core import unlearn
    from lethe.engine.loop import TrainConfig

    forget, retain = smoke_data.forget(10), smoke_data.retain(10)[:8]
    train = TrainConfig(epochs=1, lr=1e-3, batch_size=4, micro_batch_size=4, checkpoint=False, warmup_epochs=0)

    def losses(reference):
        _, run = unlearn(copy.deepcopy(tiny_model), forget, retain, method="NPO+KL", tokenizer=tokenizer,
                         train=train, save=False, progress=False, reference_model=reference)
        return run.epochs[-1]["losses"]

    default = losses(None)
    assert losses(copy.deepcopy(tiny_model)) == pytest.approx(default, rel=1e-6)
    other = copy.deepcopy(tiny_model)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05 * torch.randn_like(p))
    moved = losses(other)
    assert moved["forget"] != pytest.approx(default["forget"], rel=1e-3)
    assert moved["regularizer"] != pytest.approx(default["regularizer"], rel=1e-3)


@pytest.fixture(scope="module")
def continual_run(tmp_path_factory):
    from lethe.scenarios.runner import run_scenario

    out = tmp_path_factory.mktemp("continual")
    res = run_scenario("continual", out=out, size="smoke", runs=("ME+GD", "NPO+GD"), requests=3,
                       reference="both", progress=False)
    return out, res


def test_continual_smoke_run_records_every_request(continual_run):
    out, res = continual_run
    assert res["scenario"] == "continual-authors" and res["requests"] == 3
    assert [(r["method"], r["reference"]) for r in res["runs"]] == [("ME+GD", "moving"), ("NPO+GD", "moving"),
                                                                   ("NPO+GD", "fixed")]
    assert len(res["reference_requests"]) == 3  # one retain model per request
    for run in res["runs"]:
        assert run["status"] == "ok" and [e["epoch"] for e in run["epochs"]] == [0, 1, 2, 3]
        reqs = run["requests"]
        assert [r["request"] for r in reqs] == [1, 2, 3]
        retained = [r["config"]["data"]["retain_records"] for r in reqs]
        assert retained[0] > retained[1] > retained[2]  # the retain set shrinks as requests are forgotten
        assert len({r["config"]["data"]["forget_sha256"] for r in reqs}) == 3  # disjoint requests
        for k, epoch in enumerate(run["epochs"][1:], 1):
            for key in ("MU", "FE", "FQ", "forget/ROUGE", "retain/ROUGE"):
                assert isinstance(epoch["metrics"][key], float), (run["method"], k, key)
    assert res["data"]["forgotten_at_end"] == 3 * res["data"]["per_request"]  # the scored forget set accumulates
    assert (out / "report.md").exists() and (out / "report.html").exists()
    for k in (1, 2, 3):
        assert (out / "models" / f"retain{k}" / "lethe_finetune.json").exists()


def test_fixed_and_moving_references_agree_on_the_first_request_only(continual_run):
    _, res = continual_run
    moving, fixed = res["runs"][1], res["runs"][2]
    assert moving["requests"][0]["epochs"][-1]["losses"] == fixed["requests"][0]["epochs"][-1]["losses"]
    assert moving["requests"][1]["epochs"][-1]["losses"] != fixed["requests"][1]["epochs"][-1]["losses"]
    assert fixed["requests"][0]["config"]["reference"] == "fixed"


def test_continual_report_has_per_request_tables_and_reuses_finished_cells(continual_run, capsys):
    from lethe.cli.commands import main

    out, res = continual_run
    md = (out / "report.md").read_text()
    assert "## MU after each request" in md and "## FQ after each request" in md
    assert "| NPO+GD (full, fixed reference) |" in md and "| *retain models* | – |" in md
    html_text = (out / "report.html").read_text()
    assert "after each request" in html_text and "data:image/png;base64" in html_text
    with pytest.raises(SystemExit) as e:
        main(["demo", "--scenario", "continual", "--size", "smoke", "--out", str(out), "--requests", "3",
              "--reference", "both", "--methods", "ME+GD,NPO+GD"])
    assert e.value.code == 0
    err = capsys.readouterr().err
    assert err.count("already done") == 3
    again = json.loads((out / "results.json").read_text())
    assert [r["epochs"] for r in again["runs"]] == [r["epochs"] for r in res["runs"]]
    with pytest.raises(SystemExit) as e:  # another number of requests makes other data: refused, not mixed
        main(["--quiet", "demo", "--scenario", "continual", "--size", "smoke", "--out", str(out), "--requests", "2"])
    assert e.value.code != 0
    assert "requests 3" in capsys.readouterr().err


def test_report_command_reads_a_continual_results_file(continual_run, tmp_path):
    from lethe.api import report

    out, _ = continual_run
    md_path = [p for p in report([out], out=tmp_path) if p.name == "report.md"][0]
    assert "FE after each request" in md_path.read_text()


def _bleu_reference(hyp: str, ref: str) -> float:
    """Sentence BLEU by hand: clipped n-gram precisions (n <= 4, orders the hypothesis has), sacrebleu's
    exponential smoothing of zero counts, brevity penalty; no matching n-gram at all scores 0. Whitespace tokens
    (the test texts have no punctuation, so 13a tokenization splits the same way)."""
    import math
    from collections import Counter

    h, r = hyp.split(), ref.split()
    if not h:
        return 0.0
    logs, smooth, any_match = [], 1.0, False
    for n in range(1, 5):
        total = len(h) - n + 1
        if total <= 0:
            break  # effective order: only the orders the hypothesis is long enough for
        hc = Counter(tuple(h[i:i + n]) for i in range(total))
        rc = Counter(tuple(r[i:i + n]) for i in range(len(r) - n + 1))
        correct = sum(min(c, rc[g]) for g, c in hc.items())
        any_match |= correct > 0
        if correct == 0:
            smooth *= 2
            logs.append(math.log(1 / (smooth * total)))
        else:
            logs.append(math.log(correct / total))
    if not any_match:
        return 0.0
    bp = 1.0 if len(h) >= len(r) else math.exp(1 - len(r) / len(h))
    return bp * math.exp(sum(logs) / len(logs))


def test_bleu_equals_a_by_hand_sentence_bleu():
    import random

    from lethe.evaluation.metrics import bleu

    words = "the river keeps every name we gave it and the bells ring at dawn over the old harbour".split()
    rng = random.Random(0)
    pairs = [("the cat sat on the mat", "the cat sat on the mat"), ("a b c d", "e f g h"), ("the the the", "the cat")]
    for _ in range(40):
        ref = " ".join(rng.choices(words, k=rng.randint(3, 20)))
        hyp = " ".join(rng.choices(words, k=rng.randint(1, 20)))
        pairs.append((hyp, ref))
    got = bleu([h for h, _ in pairs], [r for _, r in pairs])
    assert got[0] == pytest.approx(1.0) and got[1] == 0.0
    for (h, r), g in zip(pairs, got):
        assert g == pytest.approx(_bleu_reference(h, r), abs=1e-9), (h, r)


def test_the_invented_novel_is_seeded_and_its_chapters_differ():
    from lethe.data.novel import generate_novel

    a, b = generate_novel(6, 4, seed=0), generate_novel(6, 4, seed=0)
    assert a == b and generate_novel(6, 4, seed=1) != a
    assert len(a.chapters) == 6 and all(c.startswith(f"Chapter {i + 1}.") for i, c in enumerate(a.chapters))
    assert len(set(a.chapters)) == 6 and len(a.text.split()) > 6 * 4 * 4 * 6


def test_copyright_smoke_run_forgets_excerpts_and_reports(tmp_path):
    from lethe.scenarios.runner import run_scenario

    res = run_scenario("copyright", out=tmp_path, size="smoke", runs=("GA+GD", "NPO+GD@lora", "FLAT-KL"),
                       progress=False)
    target, retain = res["reference"]["target"], res["reference"]["retain"]
    # the target reproduces its book far better than a model that never read the forget chapters
    assert target["forget/ROUGE"] > retain["forget/ROUGE"] + 0.2 and target["forget/BLEU"] > retain["forget/BLEU"]
    assert target["mia/min_k_AUC"] > retain["mia/min_k_AUC"]
    for run in res["runs"]:
        first, last = run["epochs"][0]["metrics"], run["epochs"][-1]["metrics"]
        assert first["forget/ROUGE"] == pytest.approx(target["forget/ROUGE"])
        assert last["forget/ROUGE"] < first["forget/ROUGE"]
        for key in ("forget/BLEU", "forget/VerbMem", "heldout/PPL", "background/PPL", "mia/min_k_PrivLeak"):
            assert isinstance(last[key], float), key
    flat = next(r for r in res["runs"] if r["method"] == "FLAT-KL")
    assert "regularizer" not in flat["epochs"][-1]["losses"]  # forget data only: the excerpts against refusals
    md = (tmp_path / "report.md").read_text()
    assert "| *retain model* |" in md and "gap to retain" in md and "NPO+GD | lora" in md and "FLAT-KL" in md
    assert (tmp_path / "data" / "novel.txt").read_text().startswith("Chapter 1.")


def test_excerpts_become_continuations_for_methods_with_refusals(tokenizer):
    """FLAT, IDK and DPO pair a forget answer with a refusal: an excerpt's first half is the prompt, its second
    half the answer, and prompt + answer encode back to the excerpt (BOS in front, EOS after)."""
    from lethe.data.prompt import Prompter
    from lethe.data.records import TextRecord
    from lethe.scenarios.copyright import CONTINUATION_FORMAT, as_continuations, pairs_refusals

    ids = tokenizer("Hilde Nightingale was born in Valparaiso and wrote three novels about the sea.",
                    add_special_tokens=False)["input_ids"]
    (qa,) = as_continuations([TextRecord(token_ids=tuple(ids))], tokenizer)
    enc = Prompter(tokenizer, CONTINUATION_FORMAT).encode(qa)
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    assert enc["input_ids"] == bos + ids + [tokenizer.eos_token_id]
    answer = [t for t, label in zip(enc["input_ids"], enc["labels"]) if label != -100]
    assert answer[:-1] == ids[len(ids) // 2 - 1 :] or answer[:-1] == ids[len(ids) // 2 :]  # a merge may move the cut
    assert pairs_refusals("FLAT-KL") and pairs_refusals("IDK+AP") and pairs_refusals("DPO")
    assert not pairs_refusals("GA+GD") and not pairs_refusals("NPO+KL")


def test_split_parts_cuts_at_blank_lines_into_about_equal_parts():
    from lethe.scenarios.copyright import split_parts

    text = "\n\n".join(f"paragraph {i}" + " word" * (5 + i % 3) for i in range(30))
    parts = split_parts(text, 6)
    assert len(parts) == 6 and "\n\n".join(parts) == text
    sizes = [len(p) for p in parts]
    assert max(sizes) < 2 * min(sizes)


def test_copyright_user_text_is_checked_before_any_work(tmp_path):
    from lethe.scenarios.runner import run_scenario

    out = tmp_path / "out"
    with pytest.raises(LetheError, match="--forget .*book.txt: file not found"):
        run_scenario("copyright", out=out, size="smoke", forget=str(tmp_path / "book.txt"))
    (tmp_path / "short.txt").write_text("One paragraph.\n\nAnother.")
    with pytest.raises(LetheError, match="2 paragraph\\(s\\); .* needs at least"):
        run_scenario("copyright", out=out, size="smoke", forget=str(tmp_path / "short.txt"))
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(LetheError, match="--retain .*empty.txt: the file is empty"):
        run_scenario("copyright", out=out, size="smoke", retain=str(tmp_path / "empty.txt"))
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00abc")
    with pytest.raises(LetheError, match="not UTF-8"):
        run_scenario("copyright", out=out, size="smoke", forget=str(tmp_path / "bin.txt"))
    assert not out.exists()
