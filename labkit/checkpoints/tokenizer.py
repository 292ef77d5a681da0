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

BASE_SPECIALS = ["<unk>", "<s>", "</s>"]  # ids 0, 1, 2 as in InternLM2
CHAT_SPECIALS = [
    "<|im_start|>", "<|im_end|>",
    "<img>", "</img>", "<IMG_CONTEXT>",
    "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>",
]
CJK_CHAR = r"[\u3000-\u303f\u3400-\u9fff\uff00-\uffef]"
REQUIRED_TOKENS = ("<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>")

# The layout XTuner trains with (see labkit/model/conversation.py); LMDeploy reads it from here.
CHAT_TEMPLATE = (
    "{% set sys = 'You are an AI assistant whose name is InternLM (书生·浦语).' %}"
    "{% for m in messages %}{% if m['role'] == 'system' %}{% set sys = m['content'] %}{% endif %}{% endfor %}"
    "{{ bos_token }}<|im_start|>system\n{{ sys }}<|im_end|>"
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}<|im_start|>user\n{{ m['content'] }}<|im_end|><|im_start|>assistant\n"
    "{% elif m['role'] == 'assistant' %}{{ m['content'] }}<|im_end|>{% endif %}"
    "{% endfor %}"
)


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
    tokenizer.chat_template = CHAT_TEMPLATE
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
