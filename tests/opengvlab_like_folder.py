"""Build a model folder that behaves like OpenGVLab's InternVL2-2B hub folder, at the tiny course size.

labkit's own checkpoints ship labkit's remote code and a byte-level BPE fast tokenizer. A student
may instead point the kit at OpenGVLab's real folder, whose remote code and tokenizer differ in ways
that matter (see ``tests/opengvlab_like/``): ``language_model.generate`` does not exist under
transformers >= 4.50, the cache is the legacy tuple of tuples, the prompt comes from the folder's own
``conversation.py`` (here a template name labkit does not know, ``opengvlab-like-chat``), the
vision tower needs ``timm``, and the tokenizer is a slow sentencepiece ``InternLM2Tokenizer`` whose
image tokens are added tokens above the sentencepiece range. The real weights are 4.4 GB; this
folder holds the same architecture at labkit's tiny size, so tests run on a CPU in seconds.

The folder's weights come from labkit (``labkit.checkpoints.folder.build_model``), with keys exactly as the
real checkpoint names them, so labkit's and the fixture's implementations can be compared on them.

    build_opengvlab_like(out_dir, seed=0, source=None) -> Path
    opengvlab_like_checkpoint  # the session fixture in conftest.py: the folder, built once
"""
from __future__ import annotations

import copy
import io
import json
import shutil
import tempfile
from pathlib import Path

FIXTURE_CODE = Path(__file__).resolve().parent / "opengvlab_like"
REMOTE_CODE_FILES = (
    "configuration_intern_vit.py", "configuration_internlm2.py", "configuration_internvl_chat.py",
    "conversation.py", "modeling_intern_vit.py", "modeling_internlm2.py", "modeling_internvl_chat.py",
    "tokenization_internlm2.py",
)
FOLDER_NAME = "opengvlab_like_internvl2"  # also the name of transformers' dynamic module for the folder
TEMPLATE = "opengvlab-like-chat"
FIXTURE_SYSTEM_MESSAGE = "你是一个测试用的多模态助手。"
SP_VOCAB = 1000
# InternLM2's chat specials, in the order of their real ids (92538 ... 92543): inside the sentencepiece range
SP_SPECIALS = ("<|plugin|>", "<|interpreter|>", "<|action_end|>", "<|action_start|>", "<|im_end|>", "<|im_start|>")
# InternVL's tokens, added above the sentencepiece range (real ids 92544 ... 92552)
ADDED_TOKENS = ("<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>")
ADDITIONAL_SPECIALS = ("<|im_start|>", "<|im_end|>", "<|action_start|>", "<|action_end|>", "<|interpreter|>",
                       "<|plugin|>") + ADDED_TOKENS
CHAT_TEMPLATE = (  # the real folder's chat_template (it puts a newline after <|im_end|>, chat() does not)
    "{{ bos_token }}{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLM_AUTO_MAP = {
    "AutoConfig": "configuration_internlm2.InternLM2Config",
    "AutoModel": "modeling_internlm2.InternLM2ForCausalLM",
    "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM",
}
CHAT_AUTO_MAP = {
    "AutoConfig": "configuration_internvl_chat.InternVLChatConfig",
    "AutoModel": "modeling_internvl_chat.InternVLChatModel",
    "AutoModelForCausalLM": "modeling_internvl_chat.InternVLChatModel",
}


def train_sentencepiece(texts, vocab_size=SP_VOCAB, seed=0):
    """A sentencepiece BPE model (bytes) like InternLM2's: unk 0, <s> 1, </s> 2, no pad, byte fallback,
    no dummy prefix, whitespace kept; the chat specials are user-defined pieces. Deterministic."""
    import sentencepiece as spm

    spm.set_random_generator_seed(seed)
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=out, vocab_size=vocab_size, model_type="bpe",
        character_coverage=1.0, byte_fallback=True, user_defined_symbols=list(SP_SPECIALS),
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, normalization_rule_name="identity",
        add_dummy_prefix=False, remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
        split_digits=False, hard_vocab_limit=False, minloglevel=2,
    )
    return out.getvalue()


def _special(content):
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
            "special": True}


def fixture_vocab(sp_model_bytes):
    """{token: id} of the fixture tokenizer: every sentencepiece piece, then the added tokens above them."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=sp_model_bytes)
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    vocab.update({token: sp.get_piece_size() + i for i, token in enumerate(ADDED_TOKENS)})
    return vocab


def _write_tokenizer(folder, sp_model_bytes):
    vocab = fixture_vocab(sp_model_bytes)
    (folder / "tokenizer.model").write_bytes(sp_model_bytes)
    declared = ("<unk>", "<s>", "</s>") + SP_SPECIALS + ADDED_TOKENS
    tokenizer_config = {
        "added_tokens_decoder": {str(vocab[t]): _special(t) for t in sorted(declared, key=vocab.get)},
        "additional_special_tokens": list(ADDITIONAL_SPECIALS),
        "auto_map": {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer", None]},
        "bos_token": "<s>", "chat_template": CHAT_TEMPLATE, "clean_up_tokenization_spaces": False,
        "eos_token": "</s>", "model_max_length": 4096, "pad_token": "</s>",
        "tokenizer_class": "InternLM2Tokenizer", "unk_token": "<unk>",
    }
    plain = {k: v for k, v in _special("").items() if k != "special"}
    special_map = {"additional_special_tokens": list(ADDITIONAL_SPECIALS)}
    special_map.update({name: {**plain, "content": token} for name, token in
                        (("bos_token", "<s>"), ("eos_token", "</s>"), ("pad_token", "</s>"), ("unk_token", "<unk>"))})
    _write_json(folder / "tokenizer_config.json", tokenizer_config)
    _write_json(folder / "special_tokens_map.json", special_map)
    _write_json(folder / "added_tokens.json", {t: vocab[t] for t in sorted(ADDED_TOKENS)})
    return vocab


def _write_json(path, data):
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _read_weights(folder):
    from safetensors.torch import load_file

    index = folder / "model.safetensors.index.json"
    shards = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else ["model.safetensors"]
    weights = {}
    for shard in shards:
        weights.update(load_file(str(folder / shard)))
    return weights


def _source_weights(source, vocab, config):
    """The weights of ``source`` (a checkpoint folder), if its tokenizer has exactly this vocabulary."""
    from transformers import AutoTokenizer

    source = Path(source)
    theirs = AutoTokenizer.from_pretrained(str(source), trust_remote_code=True).get_vocab()
    if theirs != vocab:
        raise ValueError(
            f"{source}: its tokenizer's vocabulary ({len(theirs)} tokens) is not the fixture's ({len(vocab)} tokens); "
            "its embedding rows would mean other tokens. Use a folder built with the fixture's tokenizer."
        )
    weights = _read_weights(source)
    rows = weights["language_model.model.tok_embeddings.weight"].shape[0]
    if rows != len(vocab) or config["llm_config"]["vocab_size"] != len(vocab):
        raise ValueError(f"{source}: the embedding has {rows} rows but the fixture's vocabulary has {len(vocab)} tokens.")
    return weights


def build_opengvlab_like(out_dir, seed=0, source=None, arch=None, device="cpu"):
    """Write the OpenGVLab-like folder to ``out_dir`` (atomically: a temp folder beside it, then a rename).

    Weights: labkit's tiny model with random weights from ``seed``, or those of ``source`` (a folder
    whose tokenizer has the same vocabulary, e.g. a labkit checkpoint written with this tokenizer; its
    config.json then gives the architecture). Saved in bfloat16 under the real checkpoint's key names.
    ``arch``: another architecture for the random weights (a config dict, e.g. InternVL2-2B's real
    one; its vocabulary becomes the fixture tokenizer's), built on ``device``.
    """
    import torch
    from safetensors.torch import save_file

    from labkit import fileio
    from labkit.checkpoints.folder import build_model, load_config, tiny_config
    from labkit.checkpoints.tokenizer import course_texts

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        for name in REMOTE_CODE_FILES:
            shutil.copyfile(FIXTURE_CODE / name, tmp / name)
        texts = course_texts() + [FIXTURE_SYSTEM_MESSAGE]
        vocab = _write_tokenizer(tmp, train_sentencepiece(texts, seed=seed))
        if source is not None:
            arch = load_config(Path(source) / "config.json")
        elif arch is None:
            arch = tiny_config(len(vocab))
        else:
            arch = copy.deepcopy(arch)
            arch["llm_config"]["vocab_size"] = len(vocab)
        if source is None:
            model = build_model(arch, seed=seed, device=device)  # labkit's code, the same parameter names
            weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            del model
        else:
            weights = _source_weights(source, vocab, arch)
        save_file({k: v.to(torch.bfloat16).contiguous() for k, v in weights.items()},
                  str(tmp / "model.safetensors"), metadata={"format": "pt"})

        config = copy.deepcopy(arch)
        config.update(architectures=["InternVLChatModel"], auto_map=dict(CHAT_AUTO_MAP), template=TEMPLATE,
                      torch_dtype="bfloat16")
        config["llm_config"].update(auto_map=dict(LLM_AUTO_MAP), vocab_size=len(vocab), torch_dtype="bfloat16")
        config["vision_config"]["torch_dtype"] = "bfloat16"
        _write_json(tmp / "config.json", config)
        _write_json(tmp / "generation_config.json", {
            "_from_model_config": True, "eos_token_id": [vocab["<|im_end|>"], vocab["<|im_start|>"]],
            "transformers_version": "4.37.2",  # as the real file says
        })
        fileio.publish_folder(tmp, out_dir)  # the old folder goes only once the new one is complete
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
