"""InternVLChatModel: ViT -> pixel shuffle -> MLP projector -> LLM.

1. ``vision_model`` (InternViT) turns each image tile into (S/p)^2 patch tokens.
2. ``pixel_shuffle`` folds every 2x2 neighbourhood of patch tokens into one token with 4x the
   channels: 1024 tokens per 448 px tile become 256.
3. ``mlp1`` projects those tokens to the LLM's hidden size.
4. The prompt holds one ``<IMG_CONTEXT>`` placeholder per image token; their input embeddings are
   replaced by the projected image tokens before the LLM (InternLM2) runs.
"""
import warnings

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_internvl_chat import InternVLChatConfig
from .conversation import get_conv_template
from .modeling_intern_vit import InternVisionModel, init_vision_weights
from .modeling_internlm2 import InternLM2ForCausalLM, InternLM2RMSNorm, shifted_cross_entropy

IMG_START_TOKEN = "<img>"
IMG_END_TOKEN = "</img>"
IMG_CONTEXT_TOKEN = "<IMG_CONTEXT>"


def pixel_shuffle(x, scale_factor=0.5, ps_version="v2"):
    """Fold each (1/scale)^2 block of neighbouring tokens into the channel axis.

    x: (tiles, H, W, C) -> (tiles, H*s, W*s, C/s^2). With s = 0.5 a 32x32 grid of 1024-dim tokens
    becomes a 16x16 grid of 4096-dim tokens. Within the new channel axis the block is laid out
    row offset first, then column offset. Version v1 left the grid transposed; v2 does not.
    """
    tiles, height, width, channels = x.shape
    step = int(round(1 / scale_factor))
    if height % step or width % step:
        raise ValueError(f"pixel_shuffle needs a grid divisible by {step}, got {height}x{width}.")
    blocks = x.reshape(tiles, height // step, step, width // step, step, channels)
    blocks = blocks.permute(0, 1, 3, 2, 4, 5)  # (tiles, H/step, W/step, row off, col off, C)
    out = blocks.reshape(tiles, height // step, width // step, channels * step * step)
    if ps_version == "v1":
        warnings.warn("ps_version 'v1' leaves the token grid transposed; InternVL2 uses 'v2'.")
        out = out.transpose(1, 2)
    return out.contiguous()


class InternVLChatModel(PreTrainedModel):
    config_class = InternVLChatConfig
    main_input_name = "pixel_values"
    base_model_prefix = "language_model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["InternVisionEncoderLayer", "InternLM2DecoderLayer"]
    _supports_cache_class = True

    def __init__(self, config, vision_model=None, language_model=None, use_flash_attn=True):
        super().__init__(config)
        image_size = config.force_image_size or config.vision_config.image_size
        patch_size = config.vision_config.patch_size
        self.patch_size = patch_size
        self.select_layer = config.select_layer
        self.template = config.template
        self.downsample_ratio = config.downsample_ratio
        self.ps_version = config.ps_version
        # tokens per tile after pixel shuffle: (448/14)^2 * 0.5^2 = 256 for InternVL2-2B
        self.num_image_token = int((image_size // patch_size) ** 2 * (config.downsample_ratio**2))
        self.vision_model = vision_model or InternVisionModel(config.vision_config)
        self.language_model = language_model or InternLM2ForCausalLM(config.llm_config)
        vit_hidden = config.vision_config.hidden_size
        llm_hidden = config.llm_config.hidden_size
        folded = vit_hidden * int(1 / config.downsample_ratio) ** 2
        self.mlp1 = nn.Sequential(
            nn.LayerNorm(folded),
            nn.Linear(folded, llm_hidden),
            nn.GELU(),
            nn.Linear(llm_hidden, llm_hidden),
        )
        self.img_context_token_id = None  # set from the tokenizer by chat() or by a trainer
        self.conv_template = get_conv_template(self.template or "internlm2-chat")
        self.system_message = self.conv_template.system_message
        self.post_init()

    def _init_weights(self, module):
        std = self.config.llm_config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, InternLM2RMSNorm):
            nn.init.ones_(module.weight)
        else:
            init_vision_weights(module, self.config.vision_config)

    # -- the image path -------------------------------------------------------------------
    def extract_feature(self, pixel_values):
        """(tiles, 3, S, S) pixels -> (tiles, num_image_token, llm_hidden) image tokens."""
        if self.select_layer == -1:
            vit = self.vision_model(pixel_values=pixel_values, output_hidden_states=False, return_dict=True)
            vit_embeds = vit.last_hidden_state
        else:
            vit = self.vision_model(pixel_values=pixel_values, output_hidden_states=True, return_dict=True)
            vit_embeds = vit.hidden_states[self.select_layer]
        vit_embeds = vit_embeds[:, 1:, :]  # drop the class token: (tiles, (S/p)^2, D)
        side = int(vit_embeds.shape[1] ** 0.5)
        vit_embeds = vit_embeds.reshape(vit_embeds.shape[0], side, side, -1)
        vit_embeds = pixel_shuffle(vit_embeds, self.downsample_ratio, self.ps_version)
        vit_embeds = vit_embeds.reshape(vit_embeds.shape[0], -1, vit_embeds.shape[-1])  # (tiles, 256, 4D)
        return self.mlp1(vit_embeds)  # (tiles, 256, H)

    def splice_image_tokens(self, input_ids, input_embeds, vit_embeds):
        """Put the image tokens where the prompt has <IMG_CONTEXT> placeholders."""
        if self.img_context_token_id is None:
            raise ValueError(
                "img_context_token_id is not set: set model.img_context_token_id = "
                "tokenizer.convert_tokens_to_ids('<IMG_CONTEXT>') before passing images."
            )
        selected = input_ids == self.img_context_token_id
        image_tokens = vit_embeds.reshape(-1, input_embeds.shape[-1]).to(input_embeds.dtype)
        if int(selected.sum()) != image_tokens.shape[0]:
            raise ValueError(
                f"The prompt has {int(selected.sum())} <IMG_CONTEXT> tokens but the images gave "
                f"{image_tokens.shape[0]} ({self.num_image_token} per tile): build the prompt with "
                "num_image_token * tiles placeholders per image."
            )
        return input_embeds.masked_scatter(selected[..., None], image_tokens)

    # -- training forward -----------------------------------------------------------------
    def forward(
        self,
        pixel_values,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        image_flags=None,
        past_key_values=None,
        labels=None,
        use_cache=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        **kwargs,
    ):
        input_embeds = self.language_model.get_input_embeddings()(input_ids)
        vit_embeds = self.extract_feature(pixel_values)
        if image_flags is not None:
            vit_embeds = vit_embeds[image_flags.reshape(-1) == 1]  # drop padding tiles of text-only samples
        input_embeds = self.splice_image_tokens(input_ids, input_embeds, vit_embeds)
        outputs = self.language_model(
            inputs_embeds=input_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        loss = shifted_cross_entropy(outputs.logits, labels) if labels is not None else None
        result = CausalLMOutputWithPast(
            loss=loss,
            logits=outputs.logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
        return result if return_dict is not False else result.to_tuple()

    # -- prompting ------------------------------------------------------------------------
    def build_prompt(self, question, history=None, num_patches_list=(), image_tokens=None):
        """The exact string the model reads for ``question`` after ``history`` turns."""
        template = get_conv_template(self.template or "internlm2-chat")
        template.system_message = self.system_message
        for old_question, old_answer in history or []:
            template.append_message(template.roles[0], old_question)
            template.append_message(template.roles[1], old_answer)
        template.append_message(template.roles[0], question)
        template.append_message(template.roles[1], None)
        query = template.get_prompt()
        for num_patches in num_patches_list:
            tokens = image_tokens or IMG_CONTEXT_TOKEN
            placeholder = IMG_START_TOKEN + tokens * (self.num_image_token * num_patches) + IMG_END_TOKEN
            query = query.replace("<image>", placeholder, 1)
        return query, template

    def chat(
        self,
        tokenizer,
        pixel_values,
        question,
        generation_config,
        history=None,
        return_history=False,
        num_patches_list=None,
        IMG_START_TOKEN=IMG_START_TOKEN,
        IMG_END_TOKEN=IMG_END_TOKEN,
        IMG_CONTEXT_TOKEN=IMG_CONTEXT_TOKEN,
        verbose=False,
    ):
        """Answer one question about an image (or none); returns the answer (and history)."""
        if history is None and pixel_values is not None and "<image>" not in question:
            question = "<image>\n" + question
        if num_patches_list is None:
            num_patches_list = [pixel_values.shape[0]] if pixel_values is not None else []
        if pixel_values is not None and len(pixel_values) != sum(num_patches_list):
            raise ValueError(
                f"pixel_values has {len(pixel_values)} tiles but num_patches_list sums to {sum(num_patches_list)}."
            )
        self.img_context_token_id = tokenizer.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)
        query, template = self.build_prompt(question, history, num_patches_list, IMG_CONTEXT_TOKEN)
        if verbose:
            print(query.replace(IMG_CONTEXT_TOKEN * self.num_image_token, f"<IMG_CONTEXT x{self.num_image_token}>"))
        inputs = tokenizer(query, return_tensors="pt")
        generation_config = dict(generation_config)
        generation_config["eos_token_id"] = tokenizer.convert_tokens_to_ids(template.sep.strip())
        output = self.generate(
            pixel_values=pixel_values,
            input_ids=inputs["input_ids"].to(self.device),
            attention_mask=inputs["attention_mask"].to(self.device),
            **generation_config,
        )
        response = tokenizer.batch_decode(output, skip_special_tokens=True)[0]
        response = response.split(template.sep.strip())[0].strip()
        history = list(history or []) + [(question, response)]
        return (response, history) if return_history else response

    def batch_chat(
        self,
        tokenizer,
        pixel_values,
        questions,
        generation_config,
        num_patches_list=None,
        history=None,
        return_history=False,
        IMG_START_TOKEN=IMG_START_TOKEN,
        IMG_END_TOKEN=IMG_END_TOKEN,
        IMG_CONTEXT_TOKEN=IMG_CONTEXT_TOKEN,
        verbose=False,
        image_counts=None,
    ):
        """Answer several single-image questions at once (left-padded batch)."""
        if history is not None or return_history:
            raise NotImplementedError("batch_chat answers fresh questions; use chat() for multi-turn.")
        if num_patches_list is None:
            raise ValueError("batch_chat needs num_patches_list: the tile count of each question's image.")
        self.img_context_token_id = tokenizer.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)
        queries = []
        for question, num_patches in zip(questions, num_patches_list):
            if pixel_values is not None and "<image>" not in question:
                question = "<image>\n" + question
            query, template = self.build_prompt(question, None, [num_patches], IMG_CONTEXT_TOKEN)
            queries.append(query)
        side = tokenizer.padding_side
        tokenizer.padding_side = "left"
        try:
            inputs = tokenizer(queries, return_tensors="pt", padding=True)
        finally:
            tokenizer.padding_side = side
        generation_config = dict(generation_config)
        generation_config["eos_token_id"] = tokenizer.convert_tokens_to_ids(template.sep.strip())
        output = self.generate(
            pixel_values=pixel_values,
            input_ids=inputs["input_ids"].to(self.device),
            attention_mask=inputs["attention_mask"].to(self.device),
            **generation_config,
        )
        responses = tokenizer.batch_decode(output, skip_special_tokens=True)
        return [r.split(template.sep.strip())[0].strip() for r in responses]

    @torch.no_grad()
    def generate(
        self,
        pixel_values=None,
        input_ids=None,
        attention_mask=None,
        visual_features=None,
        generation_config=None,
        output_hidden_states=None,
        **generate_kwargs,
    ):
        """Embed the prompt, splice in the image tokens, and let the LLM generate."""
        input_embeds = self.language_model.get_input_embeddings()(input_ids)
        if pixel_values is not None or visual_features is not None:
            vit_embeds = visual_features if visual_features is not None else self.extract_feature(pixel_values)
            input_embeds = self.splice_image_tokens(input_ids, input_embeds, vit_embeds)
        if isinstance(generation_config, dict):
            generate_kwargs = {**generation_config, **generate_kwargs}
            generation_config = None
        return self.language_model.generate(
            inputs_embeds=input_embeds,
            attention_mask=attention_mask,
            generation_config=generation_config,
            output_hidden_states=output_hidden_states,
            use_cache=generate_kwargs.pop("use_cache", True),
            **generate_kwargs,
        )
