"""Examples: canonical rows -> token ids and labels, with the loss on response (assistant) tokens only.

Rendering turns an example into pieces of text, each of one kind: "prompt" (user or system text: no loss, may be cut
when too long), "fixed" (template text around it: no loss, never cut) and "response" (assistant text followed by
EOS: the loss). Pieces are tokenized separately and concatenated, so the loss mask is exact whatever the template.

Length rules (the GPT4All-J recipe): everything before the first response takes at most data.max_prompt_fraction of
data.max_length tokens (prompt text is cut from its end, template text kept), so response tokens remain. A response
cut by max_length loses its EOS (the model is not taught to stop mid-sentence); an example with no trainable token
left is dropped and counted, never trained on.
"""

from __future__ import annotations

from lora_train.data.formats import turns
from lora_train.errors import UserError
from lora_train.schemas import DataConfig

# Named templates: how a user turn (and a system turn) is wrapped; a response is always its text + EOS.
TEMPLATES = {
    "gpt4all": ("", "\n"),  # prompt + "\n" + response + EOS, exactly the GPT4All-J training format
    "alpaca": ("### Instruction:\n", "\n\n### Response:\n"),
}
CHAT_TEMPLATE = "chat_template"  # the tokenizer's own chat template (tokenizer.apply_chat_template)


def check_template(cfg: DataConfig) -> None:
    t = cfg.template
    if t not in TEMPLATES and t != CHAT_TEMPLATE and "{prompt}" not in t:
        raise UserError(f"data.template={t!r}: use {', '.join([*TEMPLATES, CHAT_TEMPLATE])}, or a template "
                        "containing {prompt} (e.g. '### Human: {prompt}\\n### Assistant: ')")


def _wrap(template: str) -> tuple[str, str]:
    if template in TEMPLATES:
        return TEMPLATES[template]
    head, _, tail = template.partition("{prompt}")
    return head, tail


def render(ex: dict, cfg: DataConfig, tokenizer) -> list[tuple[str, str]]:
    """[(text, kind)] for one valid example; kind is "prompt", "fixed" or "response"."""
    return render_turns(turns(ex), cfg.template, tokenizer)


def render_turns(messages: list[dict], template: str, tokenizer, answer: bool = False) -> list[tuple[str, str]]:
    """[(text, kind)] for a conversation under `template`. With answer=True the conversation ends with a user (or
    system) turn that the model is to answer: the pieces end where a response begins in training, so the text a
    server hands the model is, piece for piece, the text an adapter was trained on."""
    if template == CHAT_TEMPLATE:
        return _render_chat_template(messages, tokenizer, answer)
    head, tail = _wrap(template)
    pieces = []
    for t in messages:
        if t["role"] == "assistant":
            pieces.append((t["content"], "response"))
        else:
            # A system turn is context: written as a line of its own, before the user's turn.
            pieces += [(head, "fixed"), (t["content"], "prompt"), (tail, "fixed")] if t["role"] == "user" \
                else [(t["content"], "prompt"), ("\n", "fixed")]
    return [(text, kind) for text, kind in pieces if text or kind == "response"]


def _apply_chat_template(tokenizer, messages: list[dict], generation_prompt: bool) -> str:
    from jinja2 import TemplateError

    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    except TemplateError as e:  # the template's own refusal, e.g. raise_exception("System role not supported")
        raise UserError(f"the tokenizer's chat template cannot render these messages: {e}") from None


def _render_chat_template(messages: list[dict], tokenizer, answer: bool = False) -> list[tuple[str, str]]:
    """Render with the tokenizer's chat template, turn by turn: what each assistant turn adds to the rendered text
    is the response; what comes between is prompt (user text, cuttable) then fixed (the generation prompt). With
    `answer`, the text up to the generation prompt that follows the last turn ends the pieces."""
    if not getattr(tokenizer, "chat_template", None):
        raise UserError("data.template=chat_template: this tokenizer has no chat template; use data.template=gpt4all, "
                        "alpaca or your own template containing {prompt}")
    ends = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if answer and messages and messages[-1]["role"] != "assistant":
        ends.append(len(messages))
    pieces, done = [], ""
    for i in ends:
        before = _apply_chat_template(tokenizer, messages[:i], True)
        through = _apply_chat_template(tokenizer, messages[: i + 1], False) if i < len(messages) else before
        if not before.startswith(done) or not through.startswith(before):
            raise UserError("data.template=chat_template: the tokenizer's chat template does not render turns "
                            "incrementally, so the response tokens cannot be located; use another data.template")
        chunk = before[len(done):]
        last_user = next((t["content"] for t in reversed(messages[:i]) if t["role"] != "assistant"), "")
        cut = chunk.rfind(last_user) + len(last_user) if last_user and last_user in chunk else len(chunk)
        pieces += [(chunk[:cut], "prompt"), (chunk[cut:], "fixed")]
        if i < len(messages):
            pieces.append((through[len(before):], "response"))
        done = through
    return [(text, kind) for text, kind in pieces if text or kind == "response"]


def _fit_prefix(pieces: list[list], budget: int) -> bool:
    """Cut "prompt" pieces (from the last one back, each from its end) until the prefix fits `budget` tokens."""
    excess = sum(len(ids) for ids, _ in pieces) - budget
    if excess <= 0:
        return False
    for piece in reversed(pieces):
        if excess <= 0:
            break
        if piece[1] == "prompt":
            keep = max(0, len(piece[0]) - excess)
            excess -= len(piece[0]) - keep
            piece[0] = piece[0][:keep]
    if excess > 0:  # template text alone is too long: keep its start
        flat = [(ids, kind) for ids, kind in pieces]
        total, pieces[:] = 0, []
        for ids, kind in flat:
            pieces.append([ids[: max(0, budget - total)], kind])
            total += len(pieces[-1][0])
    return True


def piece_ids(tokenizer, rendered: list[list[tuple[str, str]]], eos_in_template: bool) -> list[list[list]]:
    """[[ids, kind]] per rendered example: each piece tokenized on its own (so the loss mask is exact), a response
    followed by EOS unless the chat template already ends it with EOS."""
    flat = [text for pieces in rendered for text, _ in pieces]
    ids = tokenizer(flat, add_special_tokens=False)["input_ids"] if flat else []
    out, k = [], 0
    for pieces in rendered:
        one = []
        for text, kind in pieces:
            t = list(ids[k])
            k += 1
            if kind == "response" and not (eos_in_template and text.rstrip().endswith(tokenizer.eos_token)):
                t.append(tokenizer.eos_token_id)
            one.append([t, kind])
        out.append(one)
    return out


def eos_in_template(template: str, tokenizer) -> bool:
    """A chat template may end an assistant turn with EOS already; never add a second one."""
    return template == CHAT_TEMPLATE and bool(tokenizer.eos_token or "")


def prompt_ids(messages: list[dict], template: str, tokenizer) -> tuple[str, list[int]]:
    """(text, token ids) of a conversation that the model is to answer next, rendered and tokenized exactly as
    training renders and tokenizes the part of an example before its response (earlier assistant turns end with
    EOS as they did in training). No prompt is cut here: a server refuses a prompt too long for the model."""
    pieces = render_turns(messages, template, tokenizer, answer=True)
    ids = piece_ids(tokenizer, [pieces], eos_in_template(template, tokenizer))[0]
    return "".join(text for text, _ in pieces), [i for t, _ in ids for i in t]


class Tokenizer:
    """Renders and tokenizes examples; counts truncations and drops into the report (see module docstring)."""

    def __init__(self, tokenizer, cfg: DataConfig):
        if tokenizer.eos_token_id is None:
            raise UserError("the tokenizer has no EOS token: the model could never learn to stop")
        self.tok, self.cfg = tokenizer, cfg
        self.max_prompt = max(1, int(cfg.max_length * cfg.max_prompt_fraction))
        self.eos_in_template = eos_in_template(cfg.template, tokenizer)

    def _ids(self, rendered: list[list[tuple[str, str]]]) -> list[list[list]]:
        return piece_ids(self.tok, rendered, self.eos_in_template)

    def lengths(self, exs: list[dict]) -> list[int]:
        """Full token length of each example, before any cut."""
        return [sum(len(t) for t, _ in p) for p in self._ids([render(e, self.cfg, self.tok) for e in exs])]

    def __call__(self, exs: list[dict], report, full_lengths: list[int] | None = None) -> list[dict]:
        """Trainer-ready {input_ids, labels} for each example that keeps a trainable token; appends each example's
        uncut length to `full_lengths` when given."""
        out = []
        for pieces in self._ids([render(e, self.cfg, self.tok) for e in exs]):
            if full_lengths is not None:
                full_lengths.append(sum(len(ids) for ids, _ in pieces))
            first = next((i for i, (_, kind) in enumerate(pieces) if kind == "response"), len(pieces))
            prefix = pieces[:first]
            if _fit_prefix(prefix, self.max_prompt):
                report.prompts_truncated += 1
            input_ids, labels, cut = [], [], False
            for ids, kind in prefix + pieces[first:]:
                room = self.cfg.max_length - len(input_ids)
                if len(ids) > room:
                    ids, cut = ids[: max(0, room)], True
                input_ids += ids
                labels += ids if kind == "response" else [-100] * len(ids)
                if cut:
                    break
            report.responses_truncated += cut
            if all(v == -100 for v in labels):
                report.dropped_no_response_tokens += 1
                continue
            out.append({"input_ids": input_ids, "labels": labels})
        return out
