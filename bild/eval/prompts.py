"""Model inputs from source texts: the chat template, plain text with a prefix, or a format string."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .tasks import Task


@dataclass(frozen=True)
class PromptSpec:
    """The prompt options as given: template (None: chosen per tokenizer), prefix (None: the task's instruction)."""

    template: str | None = None
    source_prefix: str | None = None
    max_source_length: int | None = 1024


@dataclass
class PromptBuilder:
    """Turns source texts into a padded batch of model inputs.

    template: "chat" (the tokenizer's chat template, one user message: prefix + text, then the
    assistant turn), "plain" (prefix + text, as T5 expects), or a format string with "{text}"
    (filled with prefix + text). The source is first cut to `max_source_length` tokens, so that the
    template itself is never truncated.
    """

    tokenizer: object
    template: str
    prefix: str = ""
    max_source_length: int | None = None

    def truncate(self, source: str) -> str:
        if not self.max_source_length:
            return source
        ids = self.tokenizer(source, add_special_tokens=False)["input_ids"]
        # Decode only when cutting: a round trip could change text that needs no cut.
        return source if len(ids) <= self.max_source_length else self.tokenizer.decode(ids[: self.max_source_length])

    def text(self, source: str) -> str:
        content = self.prefix + self.truncate(source)
        if self.template == "chat":
            messages = [{"role": "user", "content": content}]
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if self.template == "plain":
            return content
        return self.template.format(text=content)

    def batch(self, sources: Sequence[str]) -> dict[str, torch.Tensor]:
        texts = [self.text(s) for s in sources]
        # A chat template already writes the special tokens the model expects.
        special = self.template != "chat"
        return dict(self.tokenizer(texts, padding=True, add_special_tokens=special, return_tensors="pt"))


def resolve_template(template: str | None, tokenizer, encoder_decoder: bool) -> str:
    """--prompt_template, else "chat" for a decoder-only model whose tokenizer has a chat template."""
    if template is None:
        return "chat" if not encoder_decoder and getattr(tokenizer, "chat_template", None) else "plain"
    if template == "chat" and (encoder_decoder or not getattr(tokenizer, "chat_template", None)):
        raise SystemExit("--prompt_template chat needs a decoder-only model whose tokenizer has a chat template.")
    if template not in ("chat", "plain") and "{text}" not in template:
        raise SystemExit(
            f"--prompt_template must be chat, plain, or a format string containing {{text}}; got {template!r}."
        )
    # Shells pass "\n" through literally; a template almost always means a line break.
    return template.replace("\\n", "\n")


def prompt_builder(task: Task, spec: PromptSpec, columns: tuple[str, str], tokenizer,
                   encoder_decoder: bool) -> PromptBuilder:
    """The prompts of a run: the template resolved for the tokenizer, and the prefix or the task's
    instruction (with the chat template)."""
    template = resolve_template(spec.template, tokenizer, encoder_decoder)
    prefix = spec.source_prefix if spec.source_prefix is not None else (
        task.instruction(columns) if template == "chat" else "")
    return PromptBuilder(tokenizer, template, prefix, spec.max_source_length)
