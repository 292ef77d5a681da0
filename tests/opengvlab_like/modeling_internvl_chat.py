"""InternVLChatModel of the OpenGVLab-like test folder: ViT -> pixel shuffle -> mlp1 -> InternLM2.

A stand-in for the remote code OpenGVLab ships beside the real InternVL2-2B weights, at the size of
labkit's tiny course model, so labkit can be tested against "a folder that is not labkit's" on a CPU.
It keeps the real public interface (``chat``, ``batch_chat``, ``generate``, ``extract_feature``,
``pixel_shuffle`` as a method, ``template``/``system_message``/``conv_template``, ``num_image_token``,
``img_context_token_id``) and, on purpose, the real behaviour that differs from labkit's code:

* ``generate`` ends in ``self.language_model.generate(...)``; the language model has no
  ``GenerationMixin``, so under transformers >= 4.50 (here 4.57) ``chat``/``batch_chat``/``generate``
  raise ``AttributeError: 'InternLM2ForCausalLM' object has no attribute 'generate'``. A tool that
  wants to answer questions with this folder must decode by itself (the legacy tuple cache works).
* the prompt comes from the folder's own ``conversation.py`` (``get_conv_template(self.template)``,
  KeyError for an unknown name); there is no ``build_prompt`` and no ``splice_image_tokens``.
* ``forward`` requires ``image_flags`` (it calls ``image_flags.squeeze(-1)``), ``generate`` requires
  ``img_context_token_id`` to be set, and the class does not call ``post_init()``.
"""
import warnings

import torch
from torch import nn
from torch.nn import CrossEntropyLoss
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.modeling_utils import PreTrainedModel

from .configuration_internvl_chat import InternVLChatConfig
from .conversation import get_conv_template
from .modeling_intern_vit import InternVisionModel, has_flash_attn
from .modeling_internlm2 import InternLM2ForCausalLM


class InternVLChatModel(PreTrainedModel):
    config_class = InternVLChatConfig
    main_input_name = "pixel_values"
    base_model_prefix = "language_model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["InternVisionModel", "InternLM2DecoderLayer"]

    def __init__(self, config, vision_model=None, language_model=None, use_flash_attn=True):
        super().__init__(config)
        image_size = config.force_image_size or config.vision_config.image_size
        self.patch_size = config.vision_config.patch_size
        self.select_layer, self.template = config.select_layer, config.template
        self.downsample_ratio, self.ps_version = config.downsample_ratio, config.ps_version
        self.num_image_token = int((image_size // self.patch_size) ** 2 * config.downsample_ratio**2)
        use_flash_attn = use_flash_attn and has_flash_attn
        config.vision_config.use_flash_attn = use_flash_attn
        config.llm_config.attn_implementation = "flash_attention_2" if use_flash_attn else "eager"
        self.vision_model = vision_model or InternVisionModel(config.vision_config)
        self.language_model = language_model or InternLM2ForCausalLM(config.llm_config)
        folded = config.vision_config.hidden_size * int(1 / self.downsample_ratio) ** 2
        llm_hidden = config.llm_config.hidden_size
        self.mlp1 = nn.Sequential(nn.LayerNorm(folded), nn.Linear(folded, llm_hidden), nn.GELU(),
                                  nn.Linear(llm_hidden, llm_hidden))
        self.img_context_token_id = None
        self.conv_template = get_conv_template(self.template)  # KeyError for a template this folder lacks
        self.system_message = self.conv_template.system_message

    # -- images -> tokens -------------------------------------------------------------------
    def pixel_shuffle(self, x, scale_factor=0.5):
        """(n, w, h, c) -> (n, w*s, h*s, c/s^2): fold each 2x2 block of tokens into the channels."""
        n, w, h, c = x.shape
        x = x.reshape(n, w, int(h * scale_factor), int(c / scale_factor))  # pair neighbours along h
        x = x.transpose(1, 2).reshape(n, int(h * scale_factor), int(w * scale_factor),
                                      int(c / scale_factor**2))  # then along w
        if self.ps_version == "v1":
            warnings.warn("In ps_version 'v1', the height and width have not been swapped back, "
                          "which results in a transposed image.")
            return x.contiguous()
        return x.transpose(1, 2).contiguous()

    def extract_feature(self, pixel_values):
        if self.select_layer == -1:
            vit_embeds = self.vision_model(pixel_values=pixel_values, output_hidden_states=False,
                                           return_dict=True).last_hidden_state
        else:
            vit_embeds = self.vision_model(pixel_values=pixel_values, output_hidden_states=True,
                                           return_dict=True).hidden_states[self.select_layer]
        vit_embeds = vit_embeds[:, 1:, :]  # drop the class token
        side = int(vit_embeds.shape[1] ** 0.5)
        vit_embeds = self.pixel_shuffle(vit_embeds.reshape(vit_embeds.shape[0], side, side, -1),
                                        scale_factor=self.downsample_ratio)
        return self.mlp1(vit_embeds.reshape(vit_embeds.shape[0], -1, vit_embeds.shape[-1]))

    def _splice(self, input_ids, input_embeds, vit_embeds):
        """Image tokens into the <IMG_CONTEXT> positions (in order); surplus image tokens are dropped."""
        b, n, c = input_embeds.shape
        embeds = input_embeds.reshape(b * n, c)
        selected = input_ids.reshape(b * n) == self.img_context_token_id
        image_tokens = vit_embeds.reshape(-1, c).to(embeds.device, embeds.dtype)
        if image_tokens.shape[0] != int(selected.sum()):
            warnings.warn(f"{int(selected.sum())} <IMG_CONTEXT> tokens but {image_tokens.shape[0]} image tokens")
            image_tokens = image_tokens[: int(selected.sum())]
        embeds[selected] = embeds[selected] * 0.0 + image_tokens
        return embeds.reshape(b, n, c)

    # -- training forward -------------------------------------------------------------------
    def forward(self, pixel_values, input_ids=None, attention_mask=None, position_ids=None, image_flags=None,
                past_key_values=None, labels=None, use_cache=None, output_attentions=None,
                output_hidden_states=None, return_dict=None):
        return_dict = self.config.use_return_dict if return_dict is None else return_dict
        image_flags = image_flags.squeeze(-1)  # required, as in the real code: 1 = a real tile, 0 = padding
        input_embeds = self.language_model.get_input_embeddings()(input_ids).clone()
        vit_embeds = self.extract_feature(pixel_values)[image_flags == 1]
        input_embeds = self._splice(input_ids, input_embeds, vit_embeds)
        outputs = self.language_model(inputs_embeds=input_embeds, attention_mask=attention_mask,
                                      position_ids=position_ids, past_key_values=past_key_values, use_cache=use_cache,
                                      output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                                      return_dict=return_dict)
        logits = outputs[0] if not return_dict else outputs.logits
        loss = None
        if labels is not None:
            shift_logits = logits[..., :-1, :].reshape(-1, self.language_model.config.vocab_size)
            loss = CrossEntropyLoss()(shift_logits, labels[..., 1:].reshape(-1).to(logits.device))
        if not return_dict:
            output = (logits,) + tuple(outputs[1:])
            return ((loss,) + output) if loss is not None else output
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=outputs.past_key_values,
                                      hidden_states=outputs.hidden_states, attentions=outputs.attentions)

    # -- chat -------------------------------------------------------------------------------
    def _query(self, question, history, num_patches_list, img_start, img_end, img_context):
        template = get_conv_template(self.template)
        template.system_message = self.system_message
        for old_question, old_answer in history:
            template.append_message(template.roles[0], old_question)
            template.append_message(template.roles[1], old_answer)
        template.append_message(template.roles[0], question)
        template.append_message(template.roles[1], None)
        query = template.get_prompt()
        for num_patches in num_patches_list:
            query = query.replace("<image>", img_start + img_context * self.num_image_token * num_patches + img_end, 1)
        return query, template

    def chat(self, tokenizer, pixel_values, question, generation_config, history=None, return_history=False,
             num_patches_list=None, IMG_START_TOKEN="<img>", IMG_END_TOKEN="</img>",
             IMG_CONTEXT_TOKEN="<IMG_CONTEXT>", verbose=False):
        if history is None and pixel_values is not None and "<image>" not in question:
            question = "<image>\n" + question
        if num_patches_list is None:
            num_patches_list = [pixel_values.shape[0]] if pixel_values is not None else []
        assert pixel_values is None or len(pixel_values) == sum(num_patches_list)
        self.img_context_token_id = tokenizer.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)
        history = [] if history is None else history
        query, template = self._query(question, history, num_patches_list, IMG_START_TOKEN, IMG_END_TOKEN,
                                      IMG_CONTEXT_TOKEN)
        if verbose and pixel_values is not None:
            print(f"dynamic ViT batch size: {pixel_values.shape[0]}")
        inputs = tokenizer(query, return_tensors="pt")
        generation_config["eos_token_id"] = tokenizer.convert_tokens_to_ids(template.sep.strip())
        output = self.generate(pixel_values=pixel_values, input_ids=inputs["input_ids"].to(self.device),
                               attention_mask=inputs["attention_mask"].to(self.device), **generation_config)
        response = tokenizer.batch_decode(output, skip_special_tokens=True)[0].split(template.sep.strip())[0].strip()
        history.append((question, response))
        if verbose:
            print(query.replace(IMG_CONTEXT_TOKEN, "").replace(IMG_START_TOKEN + IMG_END_TOKEN, "<image>"), response)
        return (response, history) if return_history else response

    def batch_chat(self, tokenizer, pixel_values, questions, generation_config, num_patches_list=None, history=None,
                   return_history=False, IMG_START_TOKEN="<img>", IMG_END_TOKEN="</img>",
                   IMG_CONTEXT_TOKEN="<IMG_CONTEXT>", verbose=False, image_counts=None):
        if history is not None or return_history:
            raise NotImplementedError("multi-turn chat is not supported in batch_chat")
        num_patches_list = image_counts if image_counts is not None else num_patches_list
        self.img_context_token_id = tokenizer.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)
        queries = []
        for question, num_patches in zip(questions, num_patches_list):
            if pixel_values is not None and "<image>" not in question:
                question = "<image>\n" + question
            query, template = self._query(question, [], [num_patches], IMG_START_TOKEN, IMG_END_TOKEN,
                                          IMG_CONTEXT_TOKEN)
            queries.append(query)
        tokenizer.padding_side = "left"  # left as it is afterwards, like the real code
        inputs = tokenizer(queries, return_tensors="pt", padding=True)
        generation_config["eos_token_id"] = tokenizer.convert_tokens_to_ids(template.sep.strip())
        output = self.generate(pixel_values=pixel_values, input_ids=inputs["input_ids"].to(self.device),
                               attention_mask=inputs["attention_mask"].to(self.device), **generation_config)
        responses = tokenizer.batch_decode(output, skip_special_tokens=True)
        return [response.split(template.sep.strip())[0].strip() for response in responses]

    @torch.no_grad()
    def generate(self, pixel_values=None, input_ids=None, attention_mask=None, visual_features=None,
                 generation_config=None, output_hidden_states=None, **generate_kwargs):
        assert self.img_context_token_id is not None
        input_embeds = self.language_model.get_input_embeddings()(input_ids)
        if pixel_values is not None:
            vit_embeds = visual_features if visual_features is not None else self.extract_feature(pixel_values)
            input_embeds = self._splice(input_ids, input_embeds, vit_embeds)
        return self.language_model.generate(  # fails: InternLM2ForCausalLM has no generate (see the docstring)
            inputs_embeds=input_embeds,
            attention_mask=attention_mask,
            generation_config=generation_config,
            output_hidden_states=output_hidden_states,
            use_cache=True,
            **generate_kwargs,
        )

    @property
    def lm_head(self):
        return self.language_model.get_output_embeddings()

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def get_output_embeddings(self):
        return self.language_model.get_output_embeddings()
