"""InternLM2Tokenizer of the OpenGVLab-like test folder: a slow tokenizer over sentencepiece.

As in the real folder, ``tokenizer.model`` is a sentencepiece BPE model (byte fallback, no dummy
prefix, spaces kept as ``▁``) and there is no fast variant. The chat specials (``<|im_start|>``,
``<|im_end|>``, ...) have ids INSIDE the sentencepiece range; ``<img>``, ``</img>``, ``<IMG_CONTEXT>``
and the grounding tokens are added tokens ABOVE it (``added_tokens.json``), so ``len(tokenizer)`` is
larger than ``vocab_size``. (In the real ``tokenizer.model`` the pieces at the chat-special ids are
named ``[UNUSED_TOKEN_...]`` and the names live only in ``tokenizer_config.json``; here the
sentencepiece pieces carry the names themselves.)
"""
import os
import shutil

import sentencepiece as spm
from transformers.tokenization_utils import PreTrainedTokenizer

VOCAB_FILES_NAMES = {"vocab_file": "./tokenizer.model"}


class InternLM2Tokenizer(PreTrainedTokenizer):
    vocab_files_names = VOCAB_FILES_NAMES
    model_input_names = ["input_ids", "attention_mask"]
    _auto_class = "AutoTokenizer"

    def __init__(self, vocab_file, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="</s>",
                 sp_model_kwargs=None, add_bos_token=True, add_eos_token=False, decode_with_prefix_space=False,
                 clean_up_tokenization_spaces=False, **kwargs):
        self.sp_model_kwargs = sp_model_kwargs or {}
        self.vocab_file = vocab_file
        self.add_bos_token, self.add_eos_token = add_bos_token, add_eos_token
        self.decode_with_prefix_space = decode_with_prefix_space
        self.sp_model = spm.SentencePieceProcessor(**self.sp_model_kwargs)
        self.sp_model.Load(vocab_file)  # before super().__init__, which already asks for the vocabulary
        super().__init__(bos_token=bos_token, eos_token=eos_token, unk_token=unk_token, pad_token=pad_token,
                         clean_up_tokenization_spaces=clean_up_tokenization_spaces, **kwargs)

    @property
    def vocab_size(self):
        """Pieces of the sentencepiece model only (the added tokens above it are not counted)."""
        return self.sp_model.get_piece_size()

    @property
    def bos_token_id(self):
        return self.sp_model.bos_id()

    @property
    def eos_token_id(self):
        return self.sp_model.eos_id()

    def get_vocab(self):
        vocab = {self.sp_model.id_to_piece(i): i for i in range(self.vocab_size)}
        vocab.update(self.added_tokens_encoder)
        return vocab

    def _tokenize(self, text, **kwargs):
        return self.sp_model.encode(text, out_type=str)

    def _convert_token_to_id(self, token):
        return self.sp_model.piece_to_id(token)

    def _convert_id_to_token(self, index):
        return self.sp_model.id_to_piece(index)

    def convert_tokens_to_string(self, tokens):
        """Pieces -> text: sentencepiece turns ``▁`` back into spaces and byte pieces into characters;
        special tokens are written as they are (sentencepiece would drop ``<s>``/``</s>``)."""
        text, run = "", []
        for token in tokens:
            if token in self.all_special_tokens:
                text += self.sp_model.decode_pieces(run) + token
                run = []
            else:
                run.append(token)
        text += self.sp_model.decode_pieces(run)
        if self.decode_with_prefix_space and tokens and tokens[0].startswith("▁") and not text.startswith(" "):
            text = " " + text
        return text

    def build_inputs_with_special_tokens(self, token_ids_0, token_ids_1=None):
        bos = [self.bos_token_id] if self.add_bos_token else []
        eos = [self.eos_token_id] if self.add_eos_token else []
        return bos + token_ids_0 + (token_ids_1 or []) + eos

    def get_special_tokens_mask(self, token_ids_0, token_ids_1=None, already_has_special_tokens=False):
        if already_has_special_tokens:
            return super().get_special_tokens_mask(token_ids_0, token_ids_1, already_has_special_tokens=True)
        body = [0] * (len(token_ids_0) + len(token_ids_1 or []))  # the same layout as build_inputs_...
        return [1] * self.add_bos_token + body + [1] * self.add_eos_token

    def save_vocabulary(self, save_directory, filename_prefix=None):
        if not os.path.isdir(save_directory):
            raise ValueError(f"Vocabulary path ({save_directory}) should be a directory")
        out = os.path.join(save_directory, (filename_prefix + "-" if filename_prefix else "") + "tokenizer.model")
        if os.path.isfile(self.vocab_file):
            if os.path.abspath(self.vocab_file) != os.path.abspath(out):
                shutil.copyfile(self.vocab_file, out)
        else:
            with open(out, "wb") as handle:
                handle.write(self.sp_model.serialized_model_proto())
        return (out,)
