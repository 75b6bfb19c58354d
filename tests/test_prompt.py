"""Prompt formats: the whole conversation is tokenized once, labels mask exactly the prompt, chat answers
end with the template's end-of-turn token, and the format travels with a saved model."""
import pytest
from transformers import PreTrainedTokenizerFast

from lethe.data.prompt import IGNORE, Prompter, PromptFormat, load_format, resolve_format, save_format
from lethe.model.build import train_tokenizer
from lethe.util.errors import LetheError

CORPUS = ["What is the capital of France?", "Paris is the capital of France.", "Question: Answer:",
          "Who wrote the Silent Shore? It was written by Anna Vell.", "You are a careful assistant.",
          "user assistant system [INST] [/INST]"] * 30

LLAMA3 = ("{{ '<|begin_of_text|>' }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
          "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
          "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
LLAMA2 = ("{% for m in messages %}{% if m['role'] == 'user' %}{{ bos_token }}[INST] {{ m['content'] }} [/INST]"
          "{% else %} {{ m['content'] }} {{ eos_token }}{% endif %}{% endfor %}")


def byte_bpe(specials=(), template=None):
    tok = train_tokenizer(CORPUS, vocab_size=320)
    if specials:
        tok.add_special_tokens({"additional_special_tokens": list(specials)})
    tok.chat_template = template
    return tok


def sentencepiece(template=None):
    from tokenizers import SentencePieceBPETokenizer

    sp = SentencePieceBPETokenizer()
    sp.train_from_iterator(CORPUS, vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"])
    tok = PreTrainedTokenizerFast(tokenizer_object=sp._tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                  pad_token="</s>")
    tok.chat_template = template
    return tok


CASES = {
    "llama3-byte-bpe": (lambda: byte_bpe(["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                                          "<|eot_id|>"], LLAMA3), "chat", "<|eot_id|>"),
    "chatml": (lambda: byte_bpe(["<|im_start|>", "<|im_end|>"], CHATML), "chat", "<|im_end|>"),
    "sentencepiece-llama2": (lambda: sentencepiece(LLAMA2), "chat", "</s>"),
    "sentencepiece-plain": (lambda: sentencepiece(None), "plain", "</s>"),
    "no-template": (lambda: byte_bpe(), "plain", "<eos>"),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("system", [None, "You are a careful assistant."])
def test_ids_are_the_whole_conversation_and_labels_mask_exactly_the_prompt(case, system):
    make, kind, end = CASES[case]
    tok = make()
    fmt = resolve_format("auto", tok, system_prompt=system)
    assert fmt.kind == kind  # auto: the chat template when there is one
    p = Prompter(tok, fmt)
    q, a = "Who wrote the Silent Shore?", "It was written by Anna Vell."
    ex = p.encode_qa(q, a)
    whole = tok(p.conversation_text(q, a), add_special_tokens=False)["input_ids"]
    bos = [tok.bos_token_id] if kind == "plain" else []
    eos = [tok.eos_token_id] if kind == "plain" else []
    assert ex["input_ids"] == bos + whole + eos  # one tokenization of the rendered conversation
    n_prompt = sum(1 for label in ex["labels"] if label == IGNORE)
    assert ex["input_ids"][:n_prompt] == p.prompt_ids(q)  # masked tokens are exactly the prompt's
    assert ex["labels"][n_prompt:] == ex["input_ids"][n_prompt:]
    answer = tok.decode(ex["input_ids"][n_prompt:], skip_special_tokens=False)
    assert answer.strip().startswith(a) and answer.rstrip().endswith(end)
    assert tok.convert_tokens_to_ids(end) in p.stop_ids
    if system:
        assert system in tok.decode(ex["input_ids"][:n_prompt])


def test_chat_answer_ends_with_end_of_turn_not_eos():
    tok = CASES["llama3-byte-bpe"][0]()
    p = Prompter(tok, PromptFormat("chat"))
    ex = p.encode_qa("What is the capital of France?", "Paris.")
    assert ex["input_ids"][-1] == tok.convert_tokens_to_ids("<|eot_id|>") != tok.eos_token_id
    assert p.stop_ids == [tok.eos_token_id, tok.convert_tokens_to_ids("<|eot_id|>")]
    # the trailing newline ChatML writes after <|im_end|> is not trained on
    chatml = Prompter(CASES["chatml"][0](), PromptFormat("chat"))
    assert chatml.encode_qa("Q?", "A.")["input_ids"][-1] == chatml.tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_joint_tokenization_differs_from_separate_pieces_where_it_matters():
    """SentencePiece marks word starts: "Paris" tokenized alone is '▁Paris', but right after "A:" it is
    'Pa', 'ris'. Tokenizing prompt and answer separately (Lethe 0.1) trained on ids the model never
    sees in that text; tokenizing once gives the tokenizer's own boundaries."""
    tok = sentencepiece()
    p = Prompter(tok, PromptFormat("plain", template="Q: {question} A:", answer_prefix=""))
    q = "What is the capital of France?"
    ex = p.encode_qa(q, "Paris")
    answer = [i for i, label in zip(ex["input_ids"], ex["labels"]) if label != IGNORE]
    assert answer[-1] == tok.eos_token_id and tok.decode(answer[:-1]) == "Paris"
    assert ex["input_ids"][1:-1] == tok(p.conversation_text(q, "Paris"), add_special_tokens=False)["input_ids"]
    assert answer[:-1] != tok("Paris", add_special_tokens=False)["input_ids"]  # the separate encoding differs


def test_formats_parse_resolve_and_reject():
    assert PromptFormat.parse("chat").kind == "chat"
    assert PromptFormat.parse("Q: {question}\nA:").template == "Q: {question}\nA:"
    with pytest.raises(LetheError, match="expected auto, chat, plain"):
        PromptFormat.parse("llama")
    with pytest.raises(LetheError, match="only \\{question\\}"):
        PromptFormat.parse("{question} {answer}")
    with pytest.raises(LetheError, match="needs a tokenizer with a chat template"):
        resolve_format("chat", byte_bpe())
    saved = PromptFormat("plain", template="Q: {question}\nA:")
    assert resolve_format("auto", CASES["chatml"][0](), saved) == saved  # the model's saved format wins over auto
    assert resolve_format("chat", CASES["chatml"][0](), saved).kind == "chat"  # an explicit one wins over both


def test_format_is_saved_and_read_back(tmp_path):
    fmt = PromptFormat("chat", system_prompt="Be brief.")
    save_format(tmp_path, fmt)
    assert load_format(tmp_path) == fmt
    (tmp_path / "lethe_prompt.json").write_text('{"chat": true}')  # written by Lethe 0.1
    assert load_format(tmp_path) == PromptFormat("chat")
    assert load_format(tmp_path / "missing") is None


def test_a_template_without_system_role_gives_one_line_error():
    tok = byte_bpe(["<|im_start|>", "<|im_end|>"], "{% for m in messages %}{% if m['role'] == 'system' %}"
                   "{{ raise_exception('System role not supported') }}{% endif %}<|im_start|>{{ m['content'] }}<|im_end|>"  # noqa: E501
                   "{% endfor %}{% if add_generation_prompt %}<|im_start|>{% endif %}")
    with pytest.raises(LetheError, match="drop --system-prompt"):
        Prompter(tok, PromptFormat("chat", system_prompt="Be brief."))


def test_chat_template_arguments_reach_the_template_and_are_saved(tmp_path):
    """Llama 3's date_string (as open-unlearning prompts) goes into every render and travels with the format."""
    from lethe.cli.options import parse_template_kwargs

    template = ("{% if not date_string is defined %}{% set date_string = 'DEFAULT' %}{% endif %}"
                "<|im_start|>system Today: {{ date_string }}<|im_end|>"
                "{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}"
                "{% if add_generation_prompt %}<|im_start|>{% endif %}")
    tok = byte_bpe(["<|im_start|>", "<|im_end|>"], template)
    kwargs = parse_template_kwargs("date_string='10 Apr 2025, a Thursday', enable_thinking=false")
    assert kwargs == {"date_string": "10 Apr 2025, a Thursday", "enable_thinking": False}
    fmt = resolve_format("chat", tok, template_kwargs=kwargs)
    p = Prompter(tok, fmt)
    assert "Today: 10 Apr 2025, a Thursday" in p.prompt_text("Q?")
    assert "DEFAULT" in Prompter(tok, PromptFormat("chat")).prompt_text("Q?")
    ex = p.encode_qa("Q?", "A.")
    assert ex["input_ids"][-1] == tok.convert_tokens_to_ids("<|im_end|>")
    save_format(tmp_path, fmt)
    assert load_format(tmp_path) == fmt and load_format(tmp_path).template_kwargs == fmt.template_kwargs
    with pytest.raises(LetheError, match="NAME=VALUE"):
        parse_template_kwargs("date_string")
    with pytest.raises(LetheError, match="given twice"):
        parse_template_kwargs("a=1,a=2")
    with pytest.raises(LetheError, match="need the chat prompt format"):
        PromptFormat("plain", template_kwargs={"date_string": "x"})
