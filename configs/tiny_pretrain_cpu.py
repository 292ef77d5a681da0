# XTuner config: InternVL2 full fine-tune on the CPU.
# Generated from labkit.train.settings' preset tiny_pretrain_cpu() by `labkit configs render`.
# An example, not a source: edit the preset (or your own Settings) and render again, not this
# file; nothing reads it back, and tests/train/test_settings.py fails when it differs from a render.
# What a student runs on it (XTuner's own trainer, from the repository root):
#     python -m labkit.train.launch configs/tiny_pretrain_cpu.py --work-dir work_dirs/tiny_pretrain_cpu
# Plain `xtuner train` opens no process group for a single process, and XTuner's InternVL model
# asks for one on every step (labkit/train/launch.py explains).
from mmengine.hooks import (CheckpointHook, DistSamplerSeedHook, IterTimerHook, LoggerHook,
                            ParamSchedulerHook)
from mmengine.optim import OptimWrapper, CosineAnnealingLR, LinearLR
from torch.optim import AdamW
from transformers import AutoTokenizer

from xtuner.dataset.collate_fns import default_collate_fn
from xtuner.dataset.samplers import LengthGroupedSampler
from xtuner.engine.hooks import DatasetInfoHook
from xtuner.engine.runner import TrainLoop
from labkit.train.lean import LeanInternVL
from xtuner.utils import PROMPT_TEMPLATE

from labkit.train.dataset import FolderPromptDataset

#######################################################################
#                           PART 1  Settings                          #
#######################################################################
# Model
model_path = "runs/cache/tiny-random"  # model folder in the official InternVL2 format
method = "full"  # lora | qlora (GPU only, 4-bit LLM) | full (train every unfrozen weight)
freeze_llm = False  # keep the language model's own weights fixed (LoRA trains adapters beside them)
freeze_visual_encoder = False  # keep the vision tower (InternViT) fixed
lora_r = 128  # LoRA rank: width of the low-rank update
lora_alpha = 256  # LoRA scale: the update is multiplied by lora_alpha / lora_r
lora_dropout = 0.05  # dropout on the LoRA input
lora_target_modules = None  # None = every Linear of the LLM (XTuner's choice, output head included)
lean_logits = True  # labkit.train.lean: logits and loss only where an answer token is supervised
weights_dtype = "float32"  # bfloat16 (how XTuner loads) | float32 (needs labkit.train.lean; steadier on CPU)
gradient_checkpointing = True  # recompute activations in the backward pass: far less memory, about a third more compute

# Data
data_paths = ("data/general/train.json",)  # annotation file(s): JSON list or JSONL
image_folder = "data/images"  # folder the annotations' image paths are relative to
prompt_template = PROMPT_TEMPLATE.internlm2_chat  # prompt template name in xtuner.utils.PROMPT_TEMPLATE
system_prompt = "auto"  # auto = the model folder's own template's system prompt (labkit's folders: XTuner's); None = XTuner's
max_length = 2048  # longest token sequence; longer samples are cut
replay = 0  # replay: this many known-dish samples of replay_data mixed into the training set, against forgetting (0 = off)
replay_data = "auto"  # what replay draws from; auto = general/train.json of the data folder holding data_paths[0]: the base model's own training pictures

# Scheduler & Optimizer
batch_size = 8  # samples per device per step
accumulative_counts = 1  # steps whose gradients add up before one optimizer update
dataloader_num_workers = 0  # background processes that prepare batches (0 = main process)
max_epochs = 14  # passes over the training data
lr = 0.001  # peak learning rate
betas = (0.9, 0.999)  # AdamW moment decay rates
weight_decay = 0.0  # AdamW weight decay
max_norm = 1.0  # gradient clipping: largest allowed gradient norm
warmup_ratio = 0.03  # share of all iterations spent warming the learning rate up (then cosine decay)

# Save & log
save_steps = 100000  # save a checkpoint every this many iterations (and at the end)
save_total_limit = 1  # checkpoints kept on disk (-1 = all)
log_interval = 1  # log the (averaged) loss every this many iterations

# Hardware & randomness
device = "cpu"  # cpu | cuda
amp = "off"  # mixed precision on GPU: off | float16 | bfloat16 (CPU: off)
gpus = 1  # GPUs on this machine to train on (more than 1 needs zero_stage)
zero_stage = 0  # DeepSpeed ZeRO stage 1-3 through torchrun (0 = no DeepSpeed)
cpu_threads = 0  # CPU threads for torch (0 = torch's default, all cores; read by labkit.train.finetune)
seed = 0  # random seed: weights of the adapters, data order, dropout

optim_type = AdamW

#######################################################################
#             PART 2  Model & Tokenizer & Image Processor             #
#######################################################################
model = dict(
    type=LeanInternVL,  # XTuner's InternVL_V1_5, with the labkit.train.lean options below
    lean_logits=lean_logits,
    weights_dtype=weights_dtype,
    gradient_checkpointing=gradient_checkpointing,
    model_path=model_path,
    freeze_llm=freeze_llm,
    freeze_visual_encoder=freeze_visual_encoder,
)

#######################################################################
#                     PART 3  Dataset & Dataloader                    #
#######################################################################
train_dataset = dict(
    type=FolderPromptDataset,  # XTuner's InternVL_V1_5_Dataset with the folder's own system prompt
    model_path=model_path,
    system=system_prompt,
    data_paths=list(data_paths),
    image_folders=[image_folder] * len(data_paths),  # XTuner wants one folder and one repeat
    repeat_times=[1] * len(data_paths),  # count per annotation file
    template=prompt_template,
    max_length=max_length,
    replay=replay,  # known-dish samples of replay_data added to data_paths (labkit.data.build.replay_indices)
    replay_data=replay_data,
    replay_seed=seed,
)

train_dataloader = dict(
    batch_size=batch_size,
    num_workers=dataloader_num_workers,
    dataset=train_dataset,
    sampler=dict(
        type=LengthGroupedSampler,
        length_property="modality_length",
        per_device_batch_size=batch_size * accumulative_counts,
        seed=seed,  # a fixed data order (XTuner's default draws a random one)
    ),
    collate_fn=dict(type=default_collate_fn),
)

#######################################################################
#                    PART 4  Scheduler & Optimizer                    #
#######################################################################
optim_wrapper = dict(
    type=OptimWrapper,  # full precision (AmpOptimWrapper refuses the CPU)
    optimizer=dict(type=optim_type, lr=lr, betas=betas, weight_decay=weight_decay),
    clip_grad=dict(max_norm=max_norm, error_if_nonfinite=False),
    accumulative_counts=accumulative_counts,
)

# Warm-up for warmup_ratio of the run, then cosine decay to 0, counted in epochs and
# converted to iterations by the runner (XTuner's way). On a small data set that conversion
# rounds the warm-up down to 0 iterations (mmengine refuses) or 1 (the rate then never
# leaves start_factor): labkit.train.finetune renders this part in iterations from the real
# sample count instead, with a warm-up of at least 2 iterations.
param_scheduler = [
    dict(type=LinearLR, start_factor=1e-5, by_epoch=True, begin=0,
         end=warmup_ratio * max_epochs, convert_to_iter_based=True),
    dict(type=CosineAnnealingLR, eta_min=0.0, by_epoch=True, begin=warmup_ratio * max_epochs,
         end=max_epochs, convert_to_iter_based=True),
]

train_cfg = dict(type=TrainLoop, max_epochs=max_epochs)

#######################################################################
#                           PART 5  Runtime                           #
#######################################################################
# Log one decoded training sample at the start (XTuner's DatasetInfoHook)
tokenizer = dict(type=AutoTokenizer.from_pretrained, pretrained_model_name_or_path=model_path,
                 trust_remote_code=True)
custom_hooks = [dict(type=DatasetInfoHook, tokenizer=tokenizer)]

default_hooks = dict(
    timer=dict(type=IterTimerHook),
    logger=dict(type=LoggerHook, log_metric_by_epoch=False, interval=log_interval),
    param_scheduler=dict(type=ParamSchedulerHook),
    checkpoint=dict(type=CheckpointHook, save_optimizer=False, by_epoch=False, interval=save_steps,
                    max_keep_ckpts=save_total_limit),
    sampler_seed=dict(type=DistSamplerSeedHook),
)

env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
    dist_cfg=dict(backend="gloo"),  # gloo: a one-process group on the CPU
)

visualizer = None  # mmengine's default, which logs every loss to <work dir>/<time>/vis_data/scalars.json
log_level = "INFO"
load_from = None
resume = False
randomness = dict(seed=seed, deterministic=False)
log_processor = dict(by_epoch=False)
