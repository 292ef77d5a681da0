"""A small byte-level BPE tokenizer for the tiny course model, built from the kit's own text.

InternVL2-2B ships a 92,553-token sentencepiece tokenizer; the tiny model needs far fewer tokens,
but the SAME special tokens by name: ``<|im_start|>``, ``<|im_end|>`` (end of turn), ``<img>``,
``</img>``, ``<IMG_CONTEXT>`` (one per image token), plus ``<s>``, ``</s>``, ``<unk>``. Byte-level
BPE can encode any text (a student may type anything); frequent course phrases and dish names
become single tokens.
"""
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from labkit.checkpoints.remote_code import LABKIT_TEMPLATE

BASE_SPECIALS = ["<unk>", "<s>", "</s>"]  # ids 0, 1, 2 as in InternLM2
CHAT_SPECIALS = [
    "<|im_start|>", "<|im_end|>",
    "<img>", "</img>", "<IMG_CONTEXT>",
    "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>",
]
CJK_CHAR = r"[\u3000-\u303f\u3400-\u9fff\uff00-\uffef]"
REQUIRED_TOKENS = ("<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>")

def jinja_chat_template(name=LABKIT_TEMPLATE):
    """Template ``name`` of labkit/model/conversation.py as a tokenizer's Jinja ``chat_template``.

    transformers' ``apply_chat_template`` (and LMDeploy, when no other template is given) read
    this. It is written from the template's own parts, so it renders exactly what the model's
    ``build_prompt`` renders, after ``bos_token``: the system turn (a ``system`` message replaces
    the template's system prompt), each question with the assistant's turn opened, each answer
    closed. Every piece of text is a quoted Jinja string, so transformers' ``trim_blocks`` never
    eats a newline.
    """
    from labkit.model.conversation import get_conv_template

    conv = get_conv_template(name)
    system_open, system_close = _around(conv.system_template, "{system}", name)
    user_open, user_close = _around(conv.user_template, "{query}", name)
    answer_open, answer_close = _around(conv.answer_template, "{answer}", name)

    def write(before, variable, after):  # one output expression: text + a variable + text
        parts = ([_quote(before)] if before else []) + [variable] + ([_quote(after)] if after else [])
        return "{{ " + " + ".join(parts) + " }}"

    return (
        "{% set ns = namespace(system=" + _quote(conv.system_message) + ") %}"
        "{% for m in messages %}{% if m['role'] == 'system' %}{% set ns.system = m['content'] %}{% endif %}{% endfor %}"
        "{{ bos_token }}"
        "{% if ns.system %}" + write(system_open, "ns.system", system_close) + "{% endif %}"
        "{% for m in messages %}"
        "{% if m['role'] == 'user' %}" + write(user_open, "m['content']", user_close) +
        "{% elif m['role'] == 'assistant' %}" + write(answer_open, "m['content']", answer_close) +
        "{% endif %}{% endfor %}"
    )


def _around(text, placeholder, name):
    """The text before and after ``placeholder``, which a template part must hold exactly once."""
    before, found, after = text.partition(placeholder)
    if not found or placeholder in after:
        raise ValueError(f"Template {name!r}: {text!r} should hold {placeholder} exactly once.")
    return before, after


def _quote(text):
    """``text`` as a Jinja string literal (Jinja reads Python's backslash escapes)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def train_tokenizer(texts, vocab_size=1200):
    """Train a byte-level BPE on ``texts`` and wrap it as a transformers fast tokenizer."""
    texts = [t for t in texts if t]
    if not texts:
        raise ValueError("train_tokenizer needs some text to learn from.")
    core = Tokenizer(models.BPE(unk_token="<unk>"))
    # Chinese has no spaces: isolate each CJK character first, so merges stay within words of
    # other scripts and dish names become a few character tokens (as in InternLM2's vocabulary).
    core.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(CJK_CHAR), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=BASE_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer=trainer)
    core.add_special_tokens(CHAT_SPECIALS)
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", core.token_to_id("<s>"))]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="</s>",
        additional_special_tokens=CHAT_SPECIALS,
        model_max_length=8192,
        clean_up_tokenization_spaces=False,
        model_input_names=["input_ids", "attention_mask"],  # as InternLM2's: no token_type_ids for generate()
    )
    tokenizer.chat_template = jinja_chat_template()
    return tokenizer


def missing_tokens(tokenizer):
    """Required special tokens the tokenizer does not know as single tokens."""
    vocab = tokenizer.get_vocab()
    return [t for t in REQUIRED_TOKENS if t not in vocab]


def course_texts():
    """The text the tiny tokenizer learns from: dish names, descriptions, prompts, answers."""
    from labkit.data import dishes
    from labkit.model.conversation import INTERNVL_SYSTEM, XTUNER_SYSTEM

    texts = [XTUNER_SYSTEM, INTERNVL_SYSTEM, "system", "user", "assistant"]
    for dish in dishes.DISHES:
        texts += [dish.name, dish.cuisine, dish.description]
        texts += [f"图中的菜是{dish.name}。", f"这是一道{dish.cuisine}：{dish.name}。"]
    texts += list(getattr(dishes, "QUESTIONS", []))
    texts += [
        "图中的菜是什么？", "请说出图中这道菜的名字。", "这是哪一道菜？", "图中的菜是哪一道？",
        "A. B. C. D. A，B，C，D，", "你好！我是一个多模态模型，可以看图回答问题。",
        "Hello! What dish is this? Describe the picture.",
    ]
    return texts


def save_tokenizer(tokenizer, out_dir):
    out_dir = Path(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
