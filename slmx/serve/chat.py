"""Chat templates: messages -> prompt text, rendered by Jinja2 in a sandbox.

The template comes from (first found): an explicit file, the GGUF `tokenizer.chat_template`, the
`chat_template` of an HF `tokenizer_config.json` beside the model, or a built-in one chosen from
the architecture and the vocabulary (Gemma turns, ChatML, Llama 3 headers, Llama 2 [INST]).
Templates are untrusted input: they run in Jinja2's ImmutableSandboxedEnvironment (no attribute
access to internals, no mutation of the values passed in).

Message content is plain text: `ChatTemplate.encode` renders the template with a placeholder in
place of each content, tokenizes the template's own text with its control tokens parsed and each
content without (so a user writing `<end_of_turn>` gets the characters, not the control token).
A template that `raise_exception`s rejects the conversation (`TemplateRejected`, a ValueError:
HTTP 400); any other failure of the template is a bug of the server's template (`TemplateBug`:
HTTP 500).
"""
import datetime
import json
import os
import re
import secrets

ROLES = ("system", "developer", "user", "assistant", "tool")

GEMMA = (
    "{{ bos_token }}"
    "{%- set ns = namespace(system='') -%}"
    "{%- for m in messages -%}"
    "{%- if m['role'] in ('system', 'developer') -%}"
    "{%- set ns.system = ns.system + m['content'] + '\n\n' -%}"
    "{%- else -%}"
    "{%- set role = 'model' if m['role'] == 'assistant' else 'user' -%}"
    "{{ '<start_of_turn>' + role + '\n' }}"
    "{%- if role == 'user' -%}{{ ns.system }}{%- set ns.system = '' -%}{%- endif -%}"
    "{{ m['content'] | trim }}{{ '<end_of_turn>\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)

CHATML = (
    "{%- for m in messages -%}"
    "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)

LLAMA3 = (
    "{{ bos_token }}"
    "{%- for m in messages -%}"
    "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + (m['content'] | trim) + '<|eot_id|>' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif -%}"
)

LLAMA2 = (
    "{%- set ns = namespace(system='') -%}"
    "{%- for m in messages -%}"
    "{%- if m['role'] in ('system', 'developer') -%}"
    "{%- set ns.system = '<<SYS>>\n' + m['content'] + '\n<</SYS>>\n\n' -%}"
    "{%- elif m['role'] == 'assistant' -%}"
    "{{ (m['content'] | trim) + eos_token }}"
    "{%- else -%}"
    "{{ bos_token + '[INST] ' + ns.system + (m['content'] | trim) + ' [/INST]' }}"
    "{%- set ns.system = '' -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
)

PLAIN = (
    "{%- for m in messages -%}{{ m['role'] + ': ' + m['content'] + '\n' }}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'assistant:' }}{%- endif -%}"
)


def builtin_template(arch, tokenizer):
    """The built-in template for a model without one: by architecture, then by its special tokens."""
    has = lambda piece: tokenizer.token_id(piece) is not None
    if arch == "gemma3" or has("<start_of_turn>"):
        return "gemma", GEMMA
    if has("<|im_start|>") or arch == "qwen2":
        return "chatml", CHATML
    if has("<|start_header_id|>"):
        return "llama3", LLAMA3
    if arch in ("llama", "mistral") and tokenizer.bos_id is not None and tokenizer.eos_id is not None:
        return "llama2", LLAMA2
    return "plain", PLAIN


def _from_tokenizer_config(model_path):
    """chat_template of a tokenizer_config.json beside the model file (or in its folder)."""
    if not model_path:
        return None
    d = model_path if os.path.isdir(model_path) else os.path.dirname(os.path.abspath(model_path))
    p = os.path.join(d, "tokenizer_config.json")
    if not os.path.isfile(p):
        return None
    try:
        with open(p, encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{p}: not readable JSON ({e})") from None
    t = cfg.get("chat_template") if isinstance(cfg, dict) else None
    if isinstance(t, list):       # [{"name": "default", "template": ...}, ...]
        named = {e.get("name"): e.get("template") for e in t if isinstance(e, dict)}
        t = named.get("default") or next(iter(named.values()), None)
    return t if isinstance(t, str) and t else None


class TemplateRejected(ValueError):
    """The template called raise_exception(): it rejects these messages (a client error)."""


class TemplateBug(RuntimeError):
    """The template failed otherwise (undefined variable, type error...): a server configuration error."""


class ChatTemplate:
    """render(messages, add_generation_prompt=True) -> prompt text.

    messages: [{"role": str, "content": str}] (already checked by the server).
    source: where the template came from ("file", "gguf", "tokenizer_config.json", "builtin:<name>").
    """

    def __init__(self, source_text, tokenizer, source):
        from jinja2 import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message):
            raise TemplateRejected(f"chat template: {message}")

        def strftime_now(fmt):
            return datetime.datetime.now().strftime(fmt)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, autoescape=False)
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = strftime_now
        env.filters["tojson"] = lambda v, indent=None: json.dumps(v, ensure_ascii=False, indent=indent)
        try:
            self.template = env.from_string(source_text)
        except TemplateError as e:
            raise ValueError(f"chat template ({source}) does not compile: {e}") from None
        self.text = source_text
        self.source = source
        self.tokenizer = tokenizer
        piece = lambda i: tokenizer.tokens[i] if i is not None else ""
        self.bos_token = piece(tokenizer.bos_id)
        self.eos_token = piece(tokenizer.eos_id)

    @classmethod
    def for_model(cls, tokenizer, arch, model_path=None, template_file=None):
        """The template of a model: explicit file, GGUF metadata, tokenizer_config.json, built-in."""
        if template_file:
            try:
                with open(template_file, encoding="utf-8") as f:
                    text = f.read()
            except (OSError, UnicodeDecodeError) as e:
                why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
                raise ValueError(f"chat template file {template_file}: {why}") from None
            return cls(text, tokenizer, "file")
        if tokenizer.chat_template:
            return cls(tokenizer.chat_template, tokenizer, "gguf")
        t = _from_tokenizer_config(model_path)
        if t:
            return cls(t, tokenizer, "tokenizer_config.json")
        name, t = builtin_template(arch, tokenizer)
        return cls(t, tokenizer, "builtin:" + name)

    def render(self, messages, add_generation_prompt=True):
        """Prompt text for `messages`.

        Raises TemplateRejected (a ValueError) when the template calls raise_exception(), and
        TemplateBug for any other error of the template.
        """
        from jinja2 import TemplateError
        try:
            return self.template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                        bos_token=self.bos_token, eos_token=self.eos_token, tools=None)
        except TemplateRejected:
            raise
        except TemplateError as e:
            raise TemplateBug(f"chat template ({self.source}) failed: {type(e).__name__}: {e}") from None
        except (TypeError, KeyError, AttributeError, IndexError, ZeroDivisionError, ValueError) as e:
            raise TemplateBug(f"chat template ({self.source}) failed: {type(e).__name__}: {e}") from None

    def _segments(self, messages, add_generation_prompt):
        """[(text, parse_special)]: the template's markup (True) and the message contents (False).

        Each content is replaced by a unique placeholder wrapped in " \t" ... "\t ": a template
        that trims the content (`| trim`) drops the wrappers, and then the real content is trimmed
        too. None when a placeholder comes out altered (a template that transforms content), or
        when the pieces do not join into the real rendering (a template that branches on content).
        """
        tag = "\ue000" + secrets.token_hex(8)
        wrap_l, wrap_r = " \t", "\t "
        if any(tag[0] in m["content"] for m in messages):
            return None
        marked = [dict(m, content=f"{wrap_l}{tag}:{i}:{wrap_r}") for i, m in enumerate(messages)]
        text = self.render(marked, add_generation_prompt)
        pat = re.compile("(" + re.escape(wrap_l) + ")?" + re.escape(tag) + r":(\d+):(" + re.escape(wrap_r) + ")?")
        segs, pos = [], 0
        for mt in pat.finditer(text):
            i = int(mt.group(2))
            if i >= len(messages):
                return None
            c = messages[i]["content"]
            if mt.group(1) is None:
                c = c.lstrip()
            if mt.group(3) is None:
                c = c.rstrip()
            segs.append((text[pos:mt.start()], True))
            segs.append((c, False))
            pos = mt.end()
        segs.append((text[pos:], True))
        if any(tag[0] in t for t, special in segs if special):    # a placeholder came out altered
            return None
        if "".join(t for t, _ in segs) != self.render(messages, add_generation_prompt):
            return None     # the template's output depends on the content (e.g. Qwen3 on '</think>')
        return segs

    def encode(self, messages, add_generation_prompt=True):
        """Token ids of the rendered prompt; one BOS at most.

        Control tokens are parsed in the template's own text, never in message content. A template
        that transforms the content itself (so it cannot be located) falls back to rendering it
        whole, and then content holding a control token's text is refused (TemplateRejected).
        """
        tok = self.tokenizer
        segs = self._segments(messages, add_generation_prompt)
        if segs is None:
            specials = [p for p, _ in getattr(tok, "_special_all", ())]
            for m in messages:
                bad = next((p for p in specials if p and p in m["content"]), None)
                if bad is not None:
                    raise TemplateRejected(f"message content holds the control token text {bad!r}, and "
                                           f"this chat template ({self.source}) alters content so it "
                                           "cannot be kept as plain text")
            segs = [(self.render(messages, add_generation_prompt), True)]
        ids = tok.encode_segments(segs)
        if tok.bos_id is not None and len(ids) >= 2 and ids[0] == ids[1] == tok.bos_id:
            ids = ids[1:]       # the template wrote <bos> and the tokenizer added one too
        return ids
