from lethe.data.synthetic import ATTRIBUTES, generate_authors


def test_deterministic_from_seed():
    a, b, c = generate_authors("small", 3), generate_authors("small", 3), generate_authors("small", 4)
    assert a.full == b.full and a.world_facts == b.world_facts and a.real_authors == b.real_authors
    assert a.full != c.full


def test_sizes_and_author_level_splits():
    d = generate_authors("full", 0)
    assert len(d.full) == 4000 and len(d.authors) == 200
    assert (len(d.forget(1)), len(d.forget(5)), len(d.forget(10))) == (40, 200, 400)
    assert d.forget(10) == d.full[-400:]  # TOFU: forget10 = last 400 of full
    for pct in (1, 5, 10):
        f, r = d.forget(pct), d.retain(pct)
        assert len(f) + len(r) == 4000
        assert not {x.subject for x in f} & {x.subject for x in r}
    assert len(d.world_facts) == 117
    assert len({r.question for r in d.full}) == 4000


def test_records_carry_paraphrase_and_wrong_perturbations():
    d = generate_authors("small", 0)
    for r in d.full:
        assert r.subject in r.question or r.subject in (r.paraphrased_question or "")
        assert r.paraphrased_answer and r.paraphrased_answer != r.answer
        assert len(r.perturbed_answers) >= 3 and r.paraphrased_answer not in r.perturbed_answers
        assert len(set(r.perturbed_answers)) == len(r.perturbed_answers)
    for r in d.real_authors + d.world_facts:
        assert len(r.perturbed_answers) == 3 and r.answer not in r.perturbed_answers
    assert len(ATTRIBUTES) >= 20


def test_save_writes_tofu_named_files(tmp_path):
    from lethe.data.readers import read_qa

    d = generate_authors("smoke", 0)
    d.save(tmp_path)
    assert read_qa(tmp_path / "forget10.jsonl") == d.forget(10)
    assert read_qa(tmp_path / "retain90.jsonl") == d.retain(10)
    assert len(read_qa(tmp_path / "world_facts.jsonl")) == len(d.world_facts)


def test_held_out_authors_are_new_and_leave_the_rest_unchanged():
    """Membership inference's held-out side: as many authors as forget10, none of them trained on; they come
    from their own generator, so every other record is what it was before they existed."""
    import hashlib
    import json

    for size in ("smoke", "small"):
        d = generate_authors(size, 0)
        held = {r.subject for r in d.holdout}
        assert held and not held & set(d.authors)
        assert len(d.holdout) == len(d.forget(10))
        assert not {r.question for r in d.holdout} & {r.question for r in d.full}
    digest = hashlib.sha256(json.dumps([r.to_dict() for r in generate_authors("small", 0).full]).encode()).hexdigest()
    assert digest == SMALL_SEED0_SHA256


# sha256 of generate_authors("small", 0).full as it was before held-out authors were added
SMALL_SEED0_SHA256 = "ba79809d7a924fd8d97bdeb3b2ffcc2310c98a9cfb3cd74c7679972b7c5c76ce"
