"""How a question is put to the model, identically in training and evaluation.

A :class:`PromptFormat` is ``plain`` (a text template, ``Question: {question}\\nAnswer:``) or ``chat``
(the tokenizer's chat template, with an optional system prompt). A :class:`Prompter` binds a format
to a tokenizer and encodes QA pairs: the whole rendered conversation (prompt, answer, end of turn)
is tokenized **once**, so token boundaries are the tokenizer's own (SentencePiece and byte-level BPE
alike), and labels mask exactly the prompt's tokens. A chat answer ends with the template's
end-of-turn token (``<|eot_id|>``, ``<|im_end|>``), found by rendering a probe conversation; a plain
answer ends with ``eos``. Generation stops at either.

The format is saved with a model (``lethe_prompt.json``) and with each run, and read back.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ..util.errors import LetheError
from ..util.io import read_user_text

IGNORE = -100
FORMAT_FILE = "lethe_prompt.json"
PLAIN_TEMPLATE = "Question: {question}\nAnswer:"
_PROBE_Q, _PROBE_A = "LETHEPROBEQUESTION", "LETHEPROBEANSWER"


@dataclass(frozen=True)
class PromptFormat:
    """``kind="plain"``: ``template`` with ``{question}``, answer after ``answer_prefix``.
    ``kind="chat"``: the tokenizer's chat template, rendered with ``template_kwargs`` (e.g. Llama 3's
    ``date_string``, Qwen3's ``enable_thinking``; pairs of name and value). ``system_prompt`` goes first in
    either."""

    kind: str = "plain"
    template: str = PLAIN_TEMPLATE
    answer_prefix: str = " "
    system_prompt: str | None = None
    template_kwargs: tuple = ()

    def __post_init__(self):
        if isinstance(self.template_kwargs, dict):
            object.__setattr__(self, "template_kwargs", tuple(sorted(self.template_kwargs.items())))
        if self.template_kwargs and self.kind != "chat":
            raise LetheError("chat template arguments (--chat-template-kwargs) need the chat prompt format")
        if self.kind not in ("plain", "chat"):
            raise LetheError(f"prompt format kind must be 'plain' or 'chat', got '{self.kind}'")
        if self.kind == "plain":
            check_template(self.template)

    @classmethod
    def parse(cls, spec: str | None, system_prompt: str | None = None) -> "PromptFormat | None":
        """``chat``, ``plain``, or a template with ``{question}``; ``auto`` gives None (decided by
        :func:`resolve_format` once the tokenizer is known)."""
        if spec is None or spec == "auto":
            return None
        if spec == "chat":
            return cls("chat", system_prompt=system_prompt)
        if spec == "plain":
            return cls("plain", system_prompt=system_prompt)
        if "{" in spec:  # a template: checked field by field (check_template)
            return cls("plain", template=spec, system_prompt=system_prompt)
        raise LetheError(f"prompt format '{spec}': expected auto, chat, plain, or a template containing {{question}}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["template_kwargs"] = dict(self.template_kwargs)
        if not d["template_kwargs"]:
            del d["template_kwargs"]  # files stay readable by Lethe versions without the field
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PromptFormat":
        if "kind" not in d and "chat" in d:  # files written by Lethe 0.1: {"chat": true} or the old fields
            d = {"kind": "chat" if d.get("chat") else "plain",
                 **{k: v for k, v in d.items() if k in ("template", "answer_prefix")}}
        unknown = set(d) - {"kind", "template", "answer_prefix", "system_prompt", "template_kwargs"}
        if unknown:
            raise LetheError(f"prompt format: unknown field(s) {sorted(unknown)}")
        return cls(**d)



def check_template(template: str) -> None:
    """A plain template is data, not code: ``{question}`` and literal text (``{{``/``}}`` for braces), nothing
    else: no other field, no attribute or index access (``{question.__class__}``), no conversion or format spec."""
    import string

    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as e:
        raise LetheError(f"prompt template {template!r}: {e} (write {{{{ and }}}} for literal braces)") from None
    fields = [(name, spec, conv) for _, name, spec, conv in parts if name is not None]
    for name, spec, conv in fields:
        if name != "question" or spec or conv:
            shown = "{" + name + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") + "}"
            raise LetheError(f"prompt template {template!r}: only {{question}} may appear in braces, found {shown} "
                             "(write {{ and }} for literal braces)")
    if not fields:
        raise LetheError(f"prompt template {template!r} has no {{question}}")


def resolve_format(spec: "PromptFormat | str | None", tokenizer, saved: PromptFormat | None = None,
                   system_prompt: str | None = None, template_kwargs=None) -> PromptFormat:
    """The format to use: an explicit one; else (``auto``) the model's saved one; else chat when the
    tokenizer has a chat template, plain otherwise. ``system_prompt`` and ``template_kwargs`` (chat template
    arguments) go into an ``auto`` choice too; given ones replace saved ones."""
    fmt = PromptFormat.parse(spec, system_prompt) if isinstance(spec, str) or spec is None else spec
    if fmt is None:
        fmt = saved or PromptFormat("chat" if getattr(tokenizer, "chat_template", None) else "plain")
        if system_prompt is not None:
            fmt = replace(fmt, system_prompt=system_prompt)
    if template_kwargs:
        fmt = replace(fmt, template_kwargs=tuple(sorted(dict(template_kwargs).items())))
    if fmt.kind == "chat" and not getattr(tokenizer, "chat_template", None):
        raise LetheError("prompt format 'chat' needs a tokenizer with a chat template (tokenizer_config.json "
                         "'chat_template'); this one has none: use --prompt-format plain or a template")
    return fmt


def load_format(directory: str | Path) -> PromptFormat | None:
    f = Path(directory) / FORMAT_FILE
    if not f.exists():
        return None
    try:
        return PromptFormat.from_dict(json.loads(read_user_text(f)))
    except (json.JSONDecodeError, TypeError, RecursionError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise LetheError(f"{f}: not a valid prompt format ({reason})") from None


def save_format(directory: str | Path, fmt: PromptFormat) -> None:
    (Path(directory) / FORMAT_FILE).write_text(json.dumps(fmt.to_dict(), indent=2), encoding="utf-8")


def _special_strings(tokenizer) -> list[str]:
    specials = set(getattr(tokenizer, "all_special_tokens", []) or [])
    for tok in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).values():
        if getattr(tok, "special", False):
            specials.add(str(tok.content if hasattr(tok, "content") else tok))
    return sorted(specials, key=len, reverse=True)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class Prompter:
    """A tokenizer bound to a prompt format: the one place where QA pairs and texts become token ids."""

    def __init__(self, tokenizer, fmt: PromptFormat | None = None):
        self.tokenizer = tokenizer
        self.format = fmt if fmt is not None else resolve_format(None, tokenizer)
        self.answer_lead, self.end_of_turn, self.end_of_turn_id = self.format.answer_prefix, "", None
        if self.format.kind == "chat":
            self._probe_chat_template()

    # -- chat template ---------------------------------------------------------------------------
    def _messages(self, question: str) -> list[dict]:
        msgs = [{"role": "system", "content": self.format.system_prompt}] if self.format.system_prompt else []
        return msgs + [{"role": "user", "content": question}]

    def _render(self, messages, generation_prompt: bool) -> str:
        try:
            return self.tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=False,
                                                      **dict(self.format.template_kwargs))
        except Exception as e:  # jinja raises for roles a template does not support (e.g. system)
            raise LetheError(f"the tokenizer's chat template failed to render the prompt ({type(e).__name__}: {e})"
                             + ("; drop --system-prompt if the template has no system role"
                                if self.format.system_prompt else "")) from e

    def _probe_chat_template(self) -> None:
        """Find what the template puts between the generation prompt and the answer, and after the answer."""
        prompt = self._render(self._messages(_PROBE_Q), True)
        full = self._render(self._messages(_PROBE_Q) + [{"role": "assistant", "content": _PROBE_A}], False)
        at = full.find(_PROBE_A, len(prompt) if full.startswith(prompt) else 0)
        if at < 0:
            raise LetheError("the tokenizer's chat template does not render an assistant message's content; "
                             "use --prompt-format plain or a template")
        self.answer_lead = full[len(prompt):at] if full.startswith(prompt) else ""
        after = full[at + len(_PROBE_A):]
        hits = [(after.find(s), -len(s), s) for s in _special_strings(self.tokenizer) if s and s in after]
        if hits:
            pos, _, token = min(hits)
            self.end_of_turn = after[: pos + len(token)]
            self.end_of_turn_id = self.tokenizer.convert_tokens_to_ids(token)

    # -- encoding --------------------------------------------------------------------------------
    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    @property
    def stop_ids(self) -> list[int]:
        """Token ids that end an answer in generation: eos and the chat template's end of turn."""
        ids = [self.tokenizer.eos_token_id, self.end_of_turn_id]
        return [i for i in dict.fromkeys(ids) if i is not None]

    def prompt_text(self, question: str) -> str:
        if self.format.kind == "chat":
            return self._render(self._messages(question), True)
        text = self.format.template.format(question=question)
        return f"{self.format.system_prompt}\n\n{text}" if self.format.system_prompt else text

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _bos(self) -> list[int]:
        # A chat template writes its own begin-of-text token (as text) where it wants one.
        bos = self.tokenizer.bos_token_id
        return [bos] if self.format.kind == "plain" and bos is not None else []

    def prompt_ids(self, question: str) -> list[int]:
        return self._bos() + self._ids(self.prompt_text(question))

    def conversation_text(self, question: str, answer: str, prompt: str | None = None) -> str:
        """The rendered conversation a QA pair is trained and scored on (plain: without bos/eos ids).
        ``prompt``: ``prompt_text(question)`` when the caller has it already."""
        prompt = self.prompt_text(question) if prompt is None else prompt
        if self.format.kind == "chat":
            return prompt + self.answer_lead + answer.strip() + self.end_of_turn
        return prompt + self.format.answer_prefix + answer

    def encode_qa(self, question: str, answer: str, *, max_length: int = 512) -> dict[str, list[int]]:
        """Ids of the whole conversation, tokenized at once; labels IGNORE exactly on the prompt's tokens.

        The answer ends with the end-of-turn token (chat) or eos (plain, or a template with no end of
        turn). Truncation cuts the answer's end, never the prompt.
        """
        prompt_text = self.prompt_text(question)  # rendered once: a chat template's render is not free
        prompt = self._ids(prompt_text)
        full = self._ids(self.conversation_text(question, answer, prompt_text))
        if not (self.format.kind == "chat" and self.end_of_turn) and self.tokenizer.eos_token_id is not None:
            full = full + [self.tokenizer.eos_token_id]
        # Tokens shared with the prompt alone are prompt; one merged across the boundary counts as answer.
        cut = _common_prefix(prompt, full)
        bos = self._bos()
        ids = (bos + full)[:max_length]
        labels = ([IGNORE] * (len(bos) + cut) + full[cut:])[:max_length]
        return {"input_ids": ids, "labels": labels}

    def encode_text(self, token_ids, *, max_length: int = 2048) -> dict[str, list[int]]:
        """A plain text sequence ([bos] + tokens): every token is predicted, bos is not."""
        bos = [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []
        ids = (bos + list(token_ids))[:max_length]
        return {"input_ids": ids, "labels": ([IGNORE] * len(bos) + list(token_ids))[:max_length]}

    def text_token_ids(self, record) -> list[int]:
        """A text record's token ids: given ones (``.npy`` data) or its text tokenized without specials."""
        if record.token_ids is not None:
            return list(record.token_ids)
        return self._ids(record.text)

    def encode(self, record, *, max_length: int = 512) -> dict[str, list[int]]:
        """QA records -> prompt + answer; text records -> the whole sequence."""
        from .records import QARecord

        if isinstance(record, QARecord):
            return self.encode_qa(record.question, record.answer, max_length=max_length)
        return self.encode_text(self.text_token_ids(record), max_length=max_length)

    def decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


def as_prompter(tokenizer_or_prompter, fmt: PromptFormat | None = None) -> Prompter:
    """A :class:`Prompter` as it is, or a tokenizer bound to ``fmt`` (default: ``auto``)."""
    if isinstance(tokenizer_or_prompter, Prompter):
        return tokenizer_or_prompter
    return Prompter(tokenizer_or_prompter, fmt)
